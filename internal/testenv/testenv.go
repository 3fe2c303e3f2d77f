// Package testenv starts the real components chainwarden works with (Consul, Nomad, geth, CometBFT, ...) for
// integration tests. A missing component skips the test on a developer's machine and fails it in CI (CI=true),
// where `make deps` must have installed it.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CacheBin is where `make deps` puts the components it builds.
func CacheBin() string {
	if d := os.Getenv("CHAINWARDEN_CACHE"); d != "" {
		return filepath.Join(d, "bin")
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "chainwarden", "bin")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "chainwarden", "bin")
}

// Bin returns the path of a real component: from the deps cache, else from PATH.
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(CacheBin(), name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	Missing(t, "%s not found in %s or PATH (run `make deps`)", name, CacheBin())
	return ""
}

// Missing skips the test, or fails it in CI, where every component must be installed.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("component missing in CI: "+format, args...)
	}
	t.Skipf("component missing: "+format, args...)
}

// RequireRoot skips (or fails in CI) a test that needs root (loop devices, network namespaces, dockerd).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root is needed")
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Process is a real component running for one test.
type Process struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // path of the combined stdout/stderr

	mu   sync.Mutex
	done chan struct{}
	err  error
}

// Start runs bin with args, logging to a file in the test's temp dir, and kills it when the test ends.
func Start(t testing.TB, name, bin string, args ...string) *Process {
	t.Helper()
	return StartIn(t, "", nil, name, bin, args...)
}

// StartIn is Start with a working directory and extra environment.
func StartIn(t testing.TB, dir string, env []string, name, bin string, args ...string) *Process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- %s log (last 40 lines) ---\n%s", name, p.Tail(40))
		}
	})
	return p
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	return syscall.Kill(-p.Cmd.Process.Pid, sig)
}

// Kill stops the process (SIGKILL after a grace period after SIGTERM) and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Tail returns the last n lines of the process log.
func (p *Process) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Eventually polls cond until it returns nil or the timeout passes, then fails with the last error.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitHTTP waits until url answers with any HTTP status.
func WaitHTTP(t testing.TB, p *Process, url string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, url, func() error {
		if p != nil && p.Exited() {
			t.Fatalf("%s exited: %s", p.Name, p.Tail(30))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

// Run runs a command to completion and returns its combined output, failing the test on error.
func Run(t testing.TB, bin string, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
