package testenv

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// Consul is a real `consul agent -dev` on loopback ports of its own (devnet.Consul), stopped when the test ends.
// Restart loses every registration, as a Consul that lost its data would.
type Consul struct {
	*devnet.Consul
	t testing.TB
	// ManagementToken is the random management token of a Consul started by StartConsulACL ("" without ACLs).
	ManagementToken string
}

// StartConsul starts a Consul dev agent and waits for it to have a leader.
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	return StartConsulWith(t)
}

// ProductionChecks are the agent flags that make a dev agent treat check outputs as a production agent does: an
// output-only change reaches the servers only after check_update_interval (Consul's default, 5m).
var ProductionChecks = []string{"-hcl", `check_update_interval = "5m"`}

// StartConsulWith starts a Consul dev agent with extra agent flags (e.g. ProductionChecks).
func StartConsulWith(t testing.TB, extra ...string) *Consul {
	t.Helper()
	return startConsul(t, 0, extra...)
}

// startConsul starts a Consul dev agent with its HTTP API on httpPort (0: a free port).
func startConsul(t testing.TB, httpPort int, extra ...string) *Consul {
	t.Helper()
	Bin(t, "consul")
	c, err := devnet.StartConsul(context.Background(), t.TempDir(), httpPort, extra...)
	if c != nil && c.Proc != nil {
		track(t, c.Proc)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return &Consul{Consul: c, t: t}
}

// Restart kills the agent and starts a fresh one on the same ports, with no state.
func (c *Consul) Restart() {
	c.t.Helper()
	if err := c.Consul.Restart(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	track(c.t, c.Proc)
}

// WaitCheck waits until the chainwarden check of node (service ID = node name) has one of statuses, and returns
// the check's output; it fails t after timeout.
func (c *Consul) WaitCheck(t testing.TB, node string, timeout time.Duration, statuses ...string) string {
	t.Helper()
	var out string
	Eventually(t, timeout, node+" "+strings.Join(statuses, "/")+" in consul", func() error {
		st, o, err := c.CheckStatus(node)
		if err != nil {
			return err
		}
		out = o
		if !slices.Contains(statuses, st) {
			return fmt.Errorf("%s is %q: %s", node, st, o)
		}
		return nil
	})
	return out
}

// StartConsulServers starts a real n-server Consul cluster on loopback (127.0.0.11, .12, ...; real raft and serf),
// stopped when t ends.
func StartConsulServers(t testing.TB, n int, extra ...string) *devnet.ConsulServers {
	t.Helper()
	Bin(t, "consul")
	dir := t.TempDir()
	cs, err := devnet.StartConsulServers(context.Background(), dir, dir, n, extra...)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range cs.Servers {
		track(t, s.Proc)
	}
	t.Cleanup(cs.Stop)
	return cs
}
