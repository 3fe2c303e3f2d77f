// Package testenv starts the real components chainwarden works with (Consul, Nomad, geth, CometBFT, ...) for
// integration tests. A missing component skips the test on a developer's machine and fails it in CI (CI=true),
// where `make deps` must have installed it.
package testenv

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// CacheBin is where `make deps` puts the components it builds.
func CacheBin() string { return devnet.CacheBin() }

// Bin returns the path of a real component: from the deps cache, else from PATH. Under -short (make test-unit) it
// skips the test: the unit tier starts no real component.
func Bin(t testing.TB, name string) string {
	t.Helper()
	Integration(t)
	p, err := devnet.Bin(name)
	if err != nil {
		Missing(t, "%v", err)
	}
	return p
}

// Integration skips a test that starts real components, or needs root, under -short.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration: starts real components (not under -short)")
	}
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
	Integration(t)
	if os.Geteuid() != 0 {
		Missing(t, "root is needed")
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := devnet.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Process is a real component running for one test.
type Process = devnet.Process

// Start runs bin with args, logging to a file in the test's temp dir, and kills it when the test ends.
func Start(t testing.TB, name, bin string, args ...string) *Process {
	t.Helper()
	return StartIn(t, "", nil, name, bin, args...)
}

// StartIn is Start with a working directory and extra environment.
func StartIn(t testing.TB, dir string, env []string, name, bin string, args ...string) *Process {
	t.Helper()
	Integration(t)
	p, err := devnet.Start(t.TempDir(), dir, env, name, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	track(t, p)
	return p
}

// track kills p when the test ends and shows its log tail if the test failed.
func track(t testing.TB, p *Process) {
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- %s log (last 40 lines) ---\n%s", p.Name, p.Tail(40))
		}
	})
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

// WaitHTTP waits until url answers with any HTTP status, failing early if p (may be nil) exits.
func WaitHTTP(t testing.TB, p *Process, url string, timeout time.Duration) {
	t.Helper()
	if err := devnet.Poll(context.Background(), timeout, url, p, func() error { return devnet.HTTPUp(url) }); err != nil {
		t.Fatal(err)
	}
}

// Run runs a command to completion and returns its combined output, failing the test on error.
func Run(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, err := devnet.Output(bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
