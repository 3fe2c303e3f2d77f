package testenv

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// Consul is a real `consul agent -dev` on loopback ports of its own. Dev mode keeps its state in memory, so a
// Restart loses every registration, as a Consul that lost its data would.
type Consul struct {
	Addr   string // host:port of the HTTP API
	Client *consulapi.Client
	Proc   *Process

	t    testing.TB
	args []string
}

// StartConsul starts a Consul dev agent and waits for it to have a leader.
func StartConsul(t testing.TB) *Consul {
	t.Helper()
	bin := Bin(t, "consul")
	http := FreePort(t)
	args := []string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(http), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-serf-lan-port", strconv.Itoa(FreePort(t)), "-serf-wan-port", strconv.Itoa(FreePort(t)),
		"-server-port", strconv.Itoa(FreePort(t)), "-node", "chainwarden-test", "-log-level", "warn"}
	c := &Consul{Addr: fmt.Sprintf("127.0.0.1:%d", http), t: t, args: append([]string{bin}, args...)}
	cfg := consulapi.DefaultConfig()
	cfg.Address = c.Addr
	cfg.Token = ""
	client, err := consulapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Client = client
	c.start()
	return c
}

func (c *Consul) start() {
	c.t.Helper()
	c.Proc = Start(c.t, "consul", c.args[0], c.args[1:]...)
	Eventually(c.t, 60*time.Second, "consul leader", func() error {
		if c.Proc.Exited() {
			c.t.Fatalf("consul exited: %s", c.Proc.Tail(30))
		}
		leader, err := c.Client.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return errorf("no leader yet")
		}
		return nil
	})
}

// Stop kills the agent; its state is gone.
func (c *Consul) Stop() { c.Proc.Kill() }

// Restart kills the agent and starts a fresh one on the same ports, with no state.
func (c *Consul) Restart() {
	c.t.Helper()
	c.Proc.Kill()
	c.start()
}

// CheckStatus returns the status and output of a service's check on the local agent ("" when not registered).
func (c *Consul) CheckStatus(serviceID string) (status, output string, err error) {
	checks, err := c.Client.Agent().Checks()
	if err != nil {
		return "", "", err
	}
	for _, ch := range checks {
		if ch.ServiceID == serviceID {
			return ch.Status, ch.Output, nil
		}
	}
	return "", "", nil
}
