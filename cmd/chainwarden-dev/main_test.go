package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// TestCtrlCWithClosedStdoutStopsEverything runs the demo as `make demo 2>&1 | tee demo.log` does and stops it as
// Ctrl-C in that terminal does: SIGINT to the whole foreground process group, which ends tee too, so the demo's
// output goes to a pipe nobody reads any more. The demo must still stop every process it started (the chain
// nodes, Consul, Prometheus, and the proxy script's consul-template and nginx) and exit cleanly, also when a second Ctrl-C
// comes while it is stopping.
func TestCtrlCWithClosedStdoutStopsEverything(t *testing.T) {
	for _, name := range []string{"consul", "geth-clique", "cometbft", "consul-template", "nginx", "prometheus"} {
		testenv.Bin(t, name)
	}
	bin := testenv.GoBuild(t, "./cmd/chainwarden-dev")
	for _, signals := range []int{1, 2} {
		t.Run(strconv.Itoa(signals)+" signals", func(t *testing.T) {
			ctrlC(t, bin, signals)
		})
	}
}

func ctrlC(t *testing.T, bin string, signals int) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(bin, "-dir", t.TempDir(), "-geth", "1", "-cometbft", "1",
		"-consul-port", strconv.Itoa(testenv.FreePort(t)), "-listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"-proxy-port", strconv.Itoa(testenv.FreePort(t)), "-prometheus-port", strconv.Itoa(testenv.FreePort(t)))
	cmd.Dir = filepath.Join("..", "..") // the repository root, as make runs it
	cmd.Stdout, cmd.Stderr = w, w
	// A process group of its own, standing for the terminal's foreground group; killed if this test dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	})

	// Read its output until the demo is up.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var out strings.Builder
	timeout := time.After(3 * time.Minute)
	for up := false; !up; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended before it was up: %v\n%s", <-exited, out.String())
			}
			out.WriteString(l + "\n")
			up = strings.HasPrefix(l, "Press Ctrl-C")
		case <-timeout:
			t.Fatalf("the demo was not up after 3 minutes:\n%s", out.String())
		}
	}
	started := testenv.Tree(cmd.Process.Pid)
	for _, want := range []string{"consul agent", "geth", "cometbft start", "demo-proxy.sh", "consul-template", "nginx: master", "prometheus --config.file"} {
		if !hasProc(started, want) {
			t.Fatalf("no %q among the demo's processes %v", want, started)
		}
	}

	// Ctrl-C: tee's end of the pipe is gone, the whole group gets SIGINT.
	r.Close()
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if signals == 2 {
		// The second Ctrl-C once the teardown is under way: the proxy, stopped first, is gone.
		testenv.Eventually(t, 30*time.Second, "the proxy stopped", func() error {
			for _, p := range started {
				if strings.Contains(p.Cmd, "demo-proxy.sh") && p.Alive() {
					return fmt.Errorf("%v still running", p)
				}
			}
			return nil
		})
		// The teardown may already have finished (the group is gone): then there is nothing left to interrupt.
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Fatal(err)
		}
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the demo did not exit cleanly after Ctrl-C: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the demo did not exit within 2 minutes of Ctrl-C")
	}
	testenv.Eventually(t, 30*time.Second, "every process the demo started gone", func() error {
		var left []string
		for _, p := range started {
			if p.Alive() {
				left = append(left, p.String())
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("still running: %s", strings.Join(left, ", "))
		}
		return nil
	})
}

func hasProc(procs []testenv.Proc, cmd string) bool {
	for _, p := range procs {
		if strings.Contains(p.Cmd, cmd) {
			return true
		}
	}
	return false
}
