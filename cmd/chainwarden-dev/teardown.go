package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// console is where the demo writes for the person running it. Ctrl-C in `make demo 2>&1 | tee demo.log` stops tee
// as well, so every later write fails with EPIPE: a failed write turns the console off instead of failing the
// caller, and the teardown goes on.
type console struct {
	mu  sync.Mutex
	w   io.Writer
	off bool
}

func newConsole(w io.Writer) *console { return &console{w: w} }

// Write never fails: once the underlying writer failed, output is dropped.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.off {
		if _, err := c.w.Write(p); err != nil {
			c.off = true
		}
	}
	return len(p), nil
}

// teardown stops what the demo started, the last started first. A second signal (hurry) kills every process group
// the demo started at once with SIGKILL instead of waiting for graceful stops; the teardown still runs to its end.
type teardown struct {
	errOut io.Writer

	mu      sync.Mutex
	steps   []func()
	groups  []group
	hurried bool
}

// group is a process group the demo started: the component and everything it forked.
type group struct {
	name    string
	pgid    int
	running func() bool
}

func newTeardown(errOut io.Writer) *teardown { return &teardown{errOut: errOut} }

// add registers a step; steps run in reverse order.
func (t *teardown) add(step func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.steps = append(t.steps, step)
}

// process registers a devnet process's group (nil: not started) for hurry.
func (t *teardown) process(p *devnet.Process) {
	if p == nil {
		return
	}
	t.addGroup(group{name: p.Name, pgid: p.Cmd.Process.Pid, running: func() bool { return !p.Exited() }})
}

func (t *teardown) addGroup(g group) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.groups = append(t.groups, g)
	if t.hurried && g.running() {
		_ = syscall.Kill(-g.pgid, syscall.SIGKILL)
	}
}

// hurry kills every process group still running with SIGKILL, and any started from now on.
func (t *teardown) hurry() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.hurried {
		return
	}
	t.hurried = true
	fmt.Fprintln(t.errOut, "chainwarden-dev: second signal: killing what is still running (stopping Nomad's jobs and dockerd still runs to its end)")
	for _, g := range t.groups {
		if g.running() {
			_ = syscall.Kill(-g.pgid, syscall.SIGKILL)
		}
	}
}

// run runs the steps, the last added first.
func (t *teardown) run() {
	for {
		t.mu.Lock()
		if len(t.steps) == 0 {
			t.mu.Unlock()
			return
		}
		step := t.steps[len(t.steps)-1]
		t.steps = t.steps[:len(t.steps)-1]
		t.mu.Unlock()
		step()
	}
}

// scriptCmd is one of the repository's scripts in a process group of its own: the terminal's Ctrl-C reaches only
// this program, which stops the script's group itself, and the script's output goes through the console, so it
// never writes to a closed pipe either.
func scriptCmd(env []string, stdout, stderr io.Writer, path string, args ...string) (*exec.Cmd, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%s not found: run the demo from the repository root (make demo)", path)
	}
	cmd := exec.Command("bash", append([]string{path}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Background processes a script leaves with its output open must not keep Wait waiting.
	cmd.WaitDelay = 5 * time.Second
	return cmd, nil
}

// runScript runs a script to its end; when ctx is done first, its process group gets SIGTERM. With a teardown
// (t not nil), a hurry kills it too.
func runScript(ctx context.Context, t *teardown, env []string, stdout, stderr io.Writer, path string, args ...string) error {
	cmd, err := scriptCmd(env, stdout, stderr, path, args...)
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", path, err)
	}
	done := make(chan struct{})
	if t != nil {
		t.addGroup(group{name: path, pgid: cmd.Process.Pid, running: func() bool { return !closed(done) }})
	}
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		case <-done:
		}
	}()
	err = cmd.Wait()
	close(done)
	if err != nil {
		return fmt.Errorf("%s %v: %w", path, args, err)
	}
	return nil
}

// startScript starts a script that runs until stopped and returns the teardown step stopping it: SIGTERM to its
// process group, SIGKILL if it is still there after a grace period.
func startScript(t *teardown, env []string, stdout, stderr io.Writer, path string, args ...string) (stop func(), err error) {
	cmd, err := scriptCmd(env, stdout, stderr, path, args...)
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	pgid := cmd.Process.Pid
	t.addGroup(group{name: path, pgid: pgid, running: func() bool { return !closed(done) }})
	return func() {
		if closed(done) {
			return
		}
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
	}, nil
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
