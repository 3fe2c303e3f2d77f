// Package testenv starts the real components chainwarden works with (Consul, Nomad, geth, CometBFT, ...) for
// integration tests, and holds the helpers those tests share (polling, background runs, building binaries).
// Every helper that needs a real component skips the test under `go test -short`; a missing component skips the
// test on a developer's machine and fails it in CI (CI=true), where `make deps` must have installed it.
package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// CacheBin is where `make deps` puts the components it builds.
func CacheBin() string { return devnet.CacheBin() }

// Integration skips the test under `go test -short`: it needs real components. Every helper here that finds or
// starts one calls it.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs real components (skipped with -short)")
	}
}

// Bin returns the path of a real component: from the deps cache, else from PATH.
func Bin(t testing.TB, name string) string {
	t.Helper()
	Integration(t)
	p, err := devnet.Bin(name)
	if err != nil {
		Missing(t, "%v", err)
	}
	return p
}

// Missing skips the test, or fails it in CI (CI=true or 1), where every component must be installed.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
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

// Eventually polls cond (devnet.Poll: every 100ms) until it returns nil, or fails the test with cond's last error
// once the timeout passed.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := devnet.Poll(context.Background(), timeout, what, nil, cond); err != nil {
		t.Fatal(err)
	}
}

// Background runs fn in a goroutine until the test ends (or stop is called): then fn's context is cancelled and
// stop waits for fn to return. An error fn returns fails the test.
func Background(t testing.TB, what string, fn func(ctx context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fn(ctx); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// repoRoot is the module root, found from this file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// GoBuild builds the module's package pkg (e.g. "./cmd/chainwarden") as a static binary (CGO_ENABLED=0, -trimpath)
// into the test's temp dir, with extra `go build` flags (e.g. "-ldflags", "-X main.version=v1"), and returns its
// path: for tests that run a binary of this repository as another program would.
func GoBuild(t testing.TB, pkg string, flags ...string) string {
	t.Helper()
	Integration(t)
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	args := append(append([]string{"build", "-trimpath"}, flags...), "-o", bin, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
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
