package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// ConsulTemplate is a real consul-template daemon.
type ConsulTemplate struct {
	Bin  string
	Dir  string
	Proc *Process
}

// RunConsulTemplateOnce runs `consul-template -once -config CONFIG -consul-addr ADDR` in dir (the config's paths are
// relative to it) with env added to the environment: one render and its exec commands, then exit.
func RunConsulTemplateOnce(t testing.TB, dir, config, consulAddr string, env []string) string {
	t.Helper()
	bin := Bin(t, "consul-template")
	var out bytes.Buffer
	cmd := exec.Command(bin, "-once", "-config", config, "-consul-addr", consulAddr, "-log-level", "warn")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatalf("consul-template -once: %v", err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("consul-template -once: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("consul-template -once did not finish in 60s:\n%s", out.String())
	}
	return out.String()
}

// StartConsulTemplate runs the consul-template daemon in dir with the config and env; it is stopped when the test
// ends. Its log (stdout and stderr, the exec commands' output included) is Proc.Log.
func StartConsulTemplate(t testing.TB, dir, config, consulAddr string, env []string) *ConsulTemplate {
	t.Helper()
	bin := Bin(t, "consul-template")
	p := StartIn(t, dir, env, "consul-template", bin, "-config", config, "-consul-addr", consulAddr,
		"-log-level", "info")
	return &ConsulTemplate{Bin: bin, Dir: dir, Proc: p}
}

// Count returns how many lines of the log contain s.
func (c *ConsulTemplate) Count(s string) int {
	b, _ := os.ReadFile(c.Proc.Log)
	return strings.Count(string(b), s)
}

func output(bin string, args ...string) (string, error) { return outputIn("", bin, args...) }

func outputIn(dir, bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Busy reports whether one of consul-template's exec commands (e.g. a validate-and-reload script) is running.
func (c *ConsulTemplate) Busy() bool { return len(Children(c.Proc.Cmd.Process.Pid)) > 0 }
