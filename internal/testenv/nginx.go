package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Nginx is a real nginx (Debian's) master running in the foreground with a prefix of its own: logs, pid and temp
// files live under Prefix, never in /var or /run, and no system service is involved.
type Nginx struct {
	Bin    string
	Prefix string // the -p directory, with a trailing slash
	Conf   string // the -c file
	Proc   *Process
}

// NginxPrefix makes a fresh prefix directory with the logs/ and tmp/ subdirectories nginx needs.
func NginxPrefix(t testing.TB) string {
	t.Helper()
	p := t.TempDir()
	for _, d := range []string{"logs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(p, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return p + "/"
}

// StartNginx runs `nginx -p prefix -c conf -g 'daemon off;'` and waits until the master has written its pid file
// (the config must say `pid nginx.pid;`, relative to the prefix). The process is stopped when the test ends.
func StartNginx(t testing.TB, prefix, conf string) *Nginx {
	t.Helper()
	n := &Nginx{Bin: Bin(t, "nginx"), Prefix: prefix, Conf: conf}
	if out, err := n.Test(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	n.Proc = Start(t, "nginx", n.Bin, "-p", prefix, "-c", conf, "-g", "daemon off;")
	Eventually(t, 20*time.Second, "nginx pid file", func() error {
		if n.Proc.Exited() {
			t.Fatalf("nginx exited: %s\n%s", n.Proc.Tail(20), n.ErrorLog(20))
		}
		_, err := n.Pid()
		return err
	})
	return n
}

// Test runs `nginx -t` on the config.
func (n *Nginx) Test() (string, error) {
	return output(n.Bin, "-t", "-p", n.Prefix, "-c", n.Conf)
}

// Pid returns the master's pid from its pid file.
func (n *Nginx) Pid() (int, error) { return readPidFile(filepath.Join(n.Prefix, "nginx.pid")) }

// readPidFile reads the first pid in a pid file.
func readPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("pid file %s is empty", path)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// Reload asks the master to re-read its config (SIGHUP).
func (n *Nginx) Reload() error {
	pid, err := n.Pid()
	if err != nil {
		return err
	}
	return syscall.Kill(pid, syscall.SIGHUP)
}

// ErrorLog returns the last lines of logs/error.log.
func (n *Nginx) ErrorLog(lines int) string {
	return tailFile(filepath.Join(n.Prefix, "logs", "error.log"), lines)
}

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// Reloads returns how many reloads (SIGHUP, e.g. `nginx -s reload`) the master has carried out: it re-read the
// configuration, started new workers, and every worker of the configuration before was told to stop accepting.
// It reads logs/error.log, which must be at level notice (`error_log logs/error.log notice;`).
func (n *Nginx) Reloads() (int, error) {
	b, err := os.ReadFile(filepath.Join(n.Prefix, "logs", "error.log"))
	if err != nil {
		return 0, err
	}
	// Lines are "2006/01/02 15:04:05 [notice] PID#TID: message".
	var generations [][]string // worker pids by configuration, the first at start
	stopping := map[string]bool{}
	reconfigured := 0
	for _, l := range strings.Split(string(b), "\n") {
		_, msg, ok := strings.Cut(l, "]")
		if !ok {
			continue
		}
		pid, msg, ok := strings.Cut(strings.TrimSpace(msg), "#")
		if !ok {
			continue
		}
		_, msg, _ = strings.Cut(msg, ": ")
		switch {
		case msg == "reconfiguring":
			reconfigured++
		case msg == "start worker processes":
			generations = append(generations, nil)
		case strings.HasPrefix(msg, "start worker process ") && len(generations) > 0:
			generations[len(generations)-1] = append(generations[len(generations)-1], strings.TrimPrefix(msg, "start worker process "))
		case msg == "gracefully shutting down":
			stopping[pid] = true
		}
	}
	done := 0
	for i := 1; i < len(generations) && i <= reconfigured; i++ {
		for _, w := range generations[i-1] {
			if !stopping[w] {
				return done, nil
			}
		}
		done = i
	}
	return done, nil
}
