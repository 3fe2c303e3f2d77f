package devnet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// ConsulServer is one server of a real Consul cluster on loopback.
type ConsulServer struct {
	Name   string
	IP     string // its own loopback address, e.g. 127.0.0.11
	Addr   string // host:port of its HTTP API
	Client *consulapi.Client
	Proc   *Process
}

// ConsulServers is a real Consul cluster of n servers (real raft and serf), each on its own loopback address
// (127.0.0.11, .12, ...) and its own free ports, with its data in dataDir. Extra agent flags go to every server.
type ConsulServers struct {
	Servers []*ConsulServer
}

// StartConsulServers starts n Consul servers that join each other, and waits until every server knows the leader
// and autopilot counts all n as healthy voters.
func StartConsulServers(ctx context.Context, logDir, dataDir string, n int, extra ...string) (*ConsulServers, error) {
	bin, err := Bin("consul")
	if err != nil {
		return nil, err
	}
	type ports struct{ http, serf, wan, server int }
	ps := make([]ports, n)
	for i := range ps {
		for _, p := range []*int{&ps[i].http, &ps[i].serf, &ps[i].wan, &ps[i].server} {
			if *p, err = FreePort(); err != nil {
				return nil, err
			}
		}
	}
	cs := &ConsulServers{}
	for i := range n {
		ip := fmt.Sprintf("127.0.0.%d", 11+i)
		name := fmt.Sprintf("consul-server-%d", i+1)
		dir := filepath.Join(dataDir, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		args := []string{"agent", "-server", "-bootstrap-expect", strconv.Itoa(n), "-node", name,
			"-bind", ip, "-client", ip, "-data-dir", dir, "-http-port", strconv.Itoa(ps[i].http),
			"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-serf-lan-port", strconv.Itoa(ps[i].serf),
			"-serf-wan-port", strconv.Itoa(ps[i].wan), "-server-port", strconv.Itoa(ps[i].server), "-log-level", "warn"}
		for j := range n {
			if j != i {
				args = append(args, "-retry-join", fmt.Sprintf("127.0.0.%d:%d", 11+j, ps[j].serf))
			}
		}
		args = append(args, extra...)
		cfg := consulapi.DefaultConfig()
		cfg.Address, cfg.Token = fmt.Sprintf("%s:%d", ip, ps[i].http), ""
		client, err := consulapi.NewClient(cfg)
		if err != nil {
			cs.Stop()
			return nil, err
		}
		p, err := Start(logDir, "", nil, name, bin, args...)
		if err != nil {
			cs.Stop()
			return nil, err
		}
		cs.Servers = append(cs.Servers, &ConsulServer{Name: name, IP: ip, Addr: cfg.Address, Client: client, Proc: p})
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var exited error
	err = Poll(pctx, 90*time.Second, "consul cluster", nil, func() error {
		for _, s := range cs.Servers {
			if s.Proc.Exited() {
				exited = fmt.Errorf("%s exited:\n%s", s.Name, s.Proc.Tail(10))
				cancel()
				return exited
			}
			leader, err := s.Client.Status().Leader()
			if err != nil {
				return err
			}
			if leader == "" {
				return fmt.Errorf("%s: no leader yet", s.Name)
			}
		}
		h, err := cs.Servers[0].Client.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return err
		}
		if !h.Healthy || len(h.Servers) != n {
			return fmt.Errorf("autopilot: healthy %v, %d servers", h.Healthy, len(h.Servers))
		}
		return nil
	})
	if err != nil {
		cs.Stop()
		if exited != nil {
			return nil, exited
		}
		return nil, err
	}
	return cs, nil
}

// Leader is the server that is the raft leader now (nil when none is).
func (cs *ConsulServers) Leader() *ConsulServer {
	for _, s := range cs.Servers {
		if st, err := s.Client.Agent().Self(); err == nil {
			if raft, ok := st["Stats"]["raft"].(map[string]any); ok && raft["state"] == "Leader" {
				return s
			}
		}
	}
	return nil
}

// Stop kills every server; their data dirs stay for the caller to remove.
func (cs *ConsulServers) Stop() {
	for _, s := range cs.Servers {
		s.Proc.Kill()
	}
}
