package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/netnsenter"
)

// Netns is a network namespace of the test's own (`ip netns add`): its interfaces, addresses, routes and ports are
// apart from the machine's and from other tests', so a test may give a virtual machine the addresses a cloud
// instance sees (169.254.169.254, a private subnet) without touching the host. Components run in it through
// `ip netns exec`; the test process itself listens and dials in it from an OS thread that entered it.
type Netns struct {
	Name string
	ip   string
}

// NewNetns makes a namespace with its loopback up, removed when the test ends (after the processes started in it,
// which the test's cleanups registered later stop first).
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	RequireRoot(t)
	n := &Netns{Name: "cw-" + randomName(), ip: Bin(t, "ip")}
	if out, err := output(n.ip, "netns", "add", n.Name); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", n.Name, err, out)
	}
	t.Cleanup(func() {
		if out, err := output(n.ip, "netns", "del", n.Name); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", n.Name, err, out)
		}
	})
	n.Must(t, "ip", "link", "set", "lo", "up")
	return n
}

func randomName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Must runs a command inside the namespace and fails the test when it fails; it returns the combined output.
func (n *Netns) Must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := output(n.ip, append([]string{"netns", "exec", n.Name}, args...)...)
	if err != nil {
		t.Fatalf("in netns %s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Start runs a real component in the namespace, as Start does on the host.
func (n *Netns) Start(t testing.TB, name, bin string, args ...string) *Process {
	t.Helper()
	return Start(t, name, n.ip, append([]string{"netns", "exec", n.Name, bin}, args...)...)
}

// Listen listens on addr inside the namespace.
func (n *Netns) Listen(network, addr string) (net.Listener, error) {
	return netnsenter.Listen(n.Name, network, addr)
}

// MustListen is Listen that fails the test on error.
func (n *Netns) MustListen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	l, err := n.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s in netns %s: %v", addr, n.Name, err)
	}
	return l
}

// DialContext dials addr from inside the namespace.
func (n *Netns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnsenter.Dial(ctx, n.Name, network, addr)
}

// HTTPClient is an HTTP client whose connections are made inside the namespace.
func (n *Netns) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DialContext: n.DialContext, Proxy: nil, MaxIdleConnsPerHost: 4},
	}
}
