package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// HAProxy is a real HAProxy (Debian's) in master-worker mode (-W) in the foreground (-db), started with one or
// more config files (-f); reloading is SIGUSR2 to the master, which re-reads the same files.
type HAProxy struct {
	Bin     string
	Dir     string   // working directory
	Files   []string // the -f files
	PidFile string
	Proc    *Process
}

// StartHAProxy runs `haproxy -W -db -f F1 -f F2 ... -p PIDFILE` in dir, after `haproxy -c` accepted the files,
// and waits for the pid file. It is stopped when the test ends.
func StartHAProxy(t testing.TB, dir, pidFile string, files ...string) *HAProxy {
	t.Helper()
	h := &HAProxy{Bin: Bin(t, "haproxy"), Dir: dir, Files: files, PidFile: pidFile}
	if out, err := h.Check(files...); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	args := []string{"-W", "-db", "-p", pidFile}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	h.Proc = StartIn(t, dir, nil, "haproxy", h.Bin, args...)
	Eventually(t, 20*time.Second, "haproxy pid file", func() error {
		if h.Proc.Exited() {
			t.Fatalf("haproxy exited: %s", h.Proc.Tail(20))
		}
		_, err := h.Pid()
		return err
	})
	return h
}

// Check runs `haproxy -c` on the files.
func (h *HAProxy) Check(files ...string) (string, error) {
	args := []string{"-c"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	return outputIn(h.Dir, h.Bin, args...)
}

// Pid returns the master's pid.
func (h *HAProxy) Pid() (int, error) { return readPidFile(h.PidFile) }

// Reload sends SIGUSR2 to the master.
func (h *HAProxy) Reload() error {
	pid, err := h.Pid()
	if err != nil {
		return err
	}
	return syscall.Kill(pid, syscall.SIGUSR2)
}

// Log returns the last lines of HAProxy's output.
func (h *HAProxy) Log(lines int) string { return tailFile(filepath.Join(h.Proc.Log), lines) }

// Reloads returns how many reloads (SIGUSR2 to the master) HAProxy has carried out: a new worker runs the
// configuration read again ("Loading success." after the first load).
func (h *HAProxy) Reloads() int {
	b, _ := os.ReadFile(h.Proc.Log)
	return max(strings.Count(string(b), "Loading success.")-1, 0)
}
