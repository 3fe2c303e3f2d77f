package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/netnsenter"
)

// netns is one network namespace (`ip netns add`). The harness dials into it from an OS thread that entered it
// (internal/netnsenter, as testenv.Netns does for tests), so nothing of the fleet is reachable from, or changes, the machine's own
// namespace.
type netns struct {
	name string
	ip   string // the ip binary
}

func newNetns(ipBin, name string) (*netns, error) {
	n := &netns{name: name, ip: ipBin}
	if out, err := devnet.Output(ipBin, "netns", "add", name); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w\n%s", name, err, out)
	}
	if err := n.run("ip", "link", "set", "lo", "up"); err != nil {
		_ = n.remove()
		return nil, err
	}
	return n, nil
}

// run runs a command inside the namespace.
func (n *netns) run(args ...string) error {
	if args[0] == "ip" { // `ip -n NAME ...` needs no exec
		args = append([]string{"-n", n.name}, args[1:]...)
		_, err := devnet.Output(n.ip, args...)
		return err
	}
	_, err := devnet.Output(n.ip, append([]string{"netns", "exec", n.name}, args...)...)
	return err
}

// pids lists the processes running in the namespace.
func (n *netns) pids() ([]int, error) {
	out, err := devnet.Output(n.ip, "netns", "pids", n.name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killAll sends SIGKILL to every process in the namespace: the host "dies".
func (n *netns) killAll() (int, error) {
	pids, err := n.pids()
	if err != nil {
		return 0, err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(pids), nil
}

// remove kills what still runs in the namespace and deletes it.
func (n *netns) remove() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		k, err := n.killAll()
		if err != nil || k == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // waiting for killed processes to be reaped by their parents
	}
	if out, err := devnet.Output(n.ip, "netns", "del", n.name); err != nil {
		return fmt.Errorf("ip netns del %s: %w\n%s", n.name, err, out)
	}
	return nil
}

// DialContext dials addr from inside the namespace.
func (n *netns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnsenter.Dial(ctx, n.name, network, addr)
}

// httpClient makes its connections inside the namespace.
func (n *netns) httpClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout:   timeout,
		Transport: &http.Transport{DialContext: n.DialContext, Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: 5 * time.Second},
	}
}

// Forward accepts connections on l (a listener of the caller's namespace, e.g. the machine's 127.0.0.1) and
// forwards each to addr as dialled from inside the host, until l is closed: how `make fleet-demo` shows a server's
// Consul UI or a proxy to the machine without changing the machine's network.
func (h *Host) Forward(l net.Listener, addr string) {
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err := h.ns.DialContext(ctx, "tcp", addr)
			cancel()
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
			go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
			<-done
		}()
	}
}
