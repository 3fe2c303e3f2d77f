package devnet

import (
	"context"
	"fmt"
	"strconv"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// Consul is a real `consul agent -dev` on loopback. Dev mode keeps its state in memory: a Restart loses every
// registration, as a Consul that lost its data would.
type Consul struct {
	Addr   string // host:port of the HTTP API
	Client *consulapi.Client
	Proc   *Process

	logDir string
	args   []string
}

// StartConsul starts a Consul dev agent (HTTP on httpPort, 0 for a free one), with extra agent flags, and waits for a
// leader. Dev mode syncs every check output change to the servers at once (check_update_interval 0); pass
// `-hcl check_update_interval="5m"` for production's behaviour.
func StartConsul(ctx context.Context, logDir string, httpPort int, extra ...string) (*Consul, error) {
	bin, err := Bin("consul")
	if err != nil {
		return nil, err
	}
	ports := make([]int, 4)
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	if httpPort == 0 {
		httpPort = ports[3]
	}
	args := []string{"agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(httpPort), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-serf-lan-port", strconv.Itoa(ports[0]), "-serf-wan-port", strconv.Itoa(ports[1]),
		"-server-port", strconv.Itoa(ports[2]), "-node", "chainwarden-dev", "-log-level", "warn"}
	args = append(args, extra...)
	cfg := consulapi.DefaultConfig()
	cfg.Address = fmt.Sprintf("127.0.0.1:%d", httpPort)
	cfg.Token = ""
	client, err := consulapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c := &Consul{Addr: cfg.Address, Client: client, logDir: logDir, args: append([]string{bin}, args...)}
	return c, c.start(ctx)
}

func (c *Consul) start(ctx context.Context) error {
	p, err := Start(c.logDir, "", nil, "consul", c.args[0], c.args[1:]...)
	if err != nil {
		return err
	}
	c.Proc = p
	return Poll(ctx, 60*time.Second, "consul leader", p, func() error {
		leader, err := c.Client.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return fmt.Errorf("no leader yet")
		}
		return nil
	})
}

// Stop kills the agent; its state is gone.
func (c *Consul) Stop() { c.Proc.Kill() }

// Restart kills the agent and starts a fresh one on the same ports, with no state.
func (c *Consul) Restart(ctx context.Context) error {
	c.Proc.Kill()
	return c.start(ctx)
}

// CheckStatus returns the status and output of a service's chainwarden check on the local agent ("" when not
// registered).
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
