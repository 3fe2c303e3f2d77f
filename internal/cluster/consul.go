package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// gossipKey makes this run's gossip encryption key with `consul keygen`.
func gossipKey() (string, error) {
	bin, err := devnet.Bin("consul")
	if err != nil {
		return "", err
	}
	out, err := devnet.Output(bin, "keygen")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// consulConfig writes the host's /etc/consul.d as the image has it: the image's own consul.hcl, the host.hcl that
// chainwarden-bootstrap writes at boot (here with the servers' addresses to join instead of the EC2 tag), the gossip
// key in secrets.hcl (where the image expects secrets to be delivered), server.hcl on the control hosts, and
// fleet.hcl for what only this harness changes (the data dir under its own directory).
func (f *Fleet) consulConfig(h *Host) (dir string, err error) {
	dir = filepath.Join(h.Dir, "consul.d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	image, err := os.ReadFile(filepath.Join(f.opts.Root, "packer", "files", "consul.d", "consul.hcl"))
	if err != nil {
		return "", fmt.Errorf("the image's consul.hcl: %w", err)
	}
	var join []string
	for _, s := range f.Servers {
		join = append(join, strconv.Quote(s.IP))
	}
	roles := "node"
	switch h.Role {
	case RoleProxy:
		roles = "proxy"
	case RoleServer:
		roles = "server"
	}
	files := map[string]string{
		"consul.hcl": string(image),
		"host.hcl": fmt.Sprintf(`datacenter     = "dc1"
node_name      = %q
bind_addr      = %q
advertise_addr = %q
retry_join     = [%s]

node_meta {
  chainwarden_roles = %q
}
`, h.Name, h.IP, h.IP, strings.Join(join, ", "), roles),
		"secrets.hcl": fmt.Sprintf("encrypt = %q\n", f.key),
		"acl.hcl":     aclHCL,
		"fleet.hcl":   fmt.Sprintf("data_dir = %q\n", h.ConsulDataDir()),
	}
	if h.consulToken != "" {
		// The agent token, delivered with the other secrets (servers get theirs through the API after bootstrap).
		files["secrets.hcl"] += fmt.Sprintf("\nacl {\n  tokens {\n    agent = %q\n  }\n}\n", h.consulToken)
	}
	if h.Role == RoleServer {
		// A server keeps its raft seat across a restart (leave_on_terminate off), and serves the UI.
		files["server.hcl"] = `server             = true
bootstrap_expect   = 3
leave_on_terminate = false

ui_config {
  enabled = true
}
`
	}
	for name, body := range files {
		mode := os.FileMode(0o644)
		if name == "secrets.hcl" {
			mode = 0o600
		}
		if name == "secrets.hcl" {
			if err := f.writeSecret(filepath.Join(dir, name), body); err != nil {
				return "", err
			}
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), mode); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// addConsul declares the host's Consul agent; ready when it knows a leader (servers: when its API answers, since
// a leader needs all three up).
func (f *Fleet) addConsul(h *Host) error {
	bin, err := devnet.Bin("consul")
	if err != nil {
		return err
	}
	dir, err := f.consulConfig(h)
	if err != nil {
		return err
	}
	client := h.Consul()
	pr := h.add("consul", bin, []string{"agent", "-config-dir", dir}, func(ctx context.Context) error {
		if h.Role == RoleServer {
			_, err := client.Status().Leader() // answers without a token, before the ACLs are bootstrapped
			return err
		}
		leader, err := client.Status().Leader()
		if err != nil {
			return err
		}
		if leader == "" {
			return errors.New("no leader known yet")
		}
		return nil
	})
	if h.Role != RoleServer {
		// The image's consul.service ExecStartPre: forget the chainwarden agent's persisted registrations, so that
		// Consul does not restore a "passing" nobody has judged since the host stopped (docs/PRODUCTION.md).
		pr.pre = func() error {
			out, err := devnet.Output(f.opts.AgentBin, "consul-forget", "-data-dir", h.ConsulDataDir())
			if strings.TrimSpace(out) != "" {
				f.log.Info("before consul starts", "host", h.Name, "output", strings.TrimSpace(out))
			}
			return err
		}
	}
	return nil
}

func (f *Fleet) startServers(ctx context.Context) error {
	for _, h := range f.Servers {
		if err := f.addConsul(h); err != nil {
			return err
		}
		if err := h.Start(ctx); err != nil {
			return err
		}
	}
	if _, err := f.WaitLeader(ctx, nil); err != nil {
		return err
	}
	if err := f.bootstrapACL(ctx); err != nil {
		return err
	}
	// The Nomad servers, once Consul's ACLs give them a token: they find each other through Consul.
	for _, h := range f.Servers {
		if err := f.addNomad(h); err != nil {
			return err
		}
		if err := h.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Leader returns the server that leads raft now, as the given server sees it (nil: the first one up).
func (f *Fleet) Leader(from *Host) (*Host, error) {
	if from == nil {
		from = f.Servers[0]
	}
	addr, err := from.Consul().Status().Leader()
	if err != nil {
		return nil, err
	}
	for _, s := range f.Servers {
		if addr == s.IP+":8300" {
			return s, nil
		}
	}
	return nil, fmt.Errorf("no leader (%q)", addr)
}

// WaitLeader waits until every running server agrees on a leader other than not (may be nil), with all three
// servers voters in the raft configuration, and returns it.
func (f *Fleet) WaitLeader(ctx context.Context, not *Host) (*Host, error) {
	var leader *Host
	err := devnet.Poll(ctx, 2*timeoutUnit, "consul leader", nil, func() error {
		var seen *Host
		for _, s := range f.Servers {
			if s == not {
				continue
			}
			l, err := f.Leader(s)
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			if l == not {
				return fmt.Errorf("%s still names %s", s.Name, not.Name)
			}
			if seen != nil && l != seen {
				return fmt.Errorf("servers disagree: %s and %s", seen.Name, l.Name)
			}
			seen = l
		}
		leader = seen
		return nil
	})
	return leader, err
}

// WaitRaftHealthy waits until autopilot calls all three servers healthy (each a voter, in contact with the leader,
// its log caught up): the cluster tolerates one failure again.
func (f *Fleet) WaitRaftHealthy(ctx context.Context) error {
	return devnet.Poll(ctx, 2*timeoutUnit, "raft healthy with 3 voters", nil, func() error {
		for _, s := range f.Servers {
			h, err := s.Consul().Operator().AutopilotServerHealth(nil)
			if err != nil {
				continue // this one may be the one restarting
			}
			voters := 0
			for _, sv := range h.Servers {
				if sv.Voter && sv.Healthy {
					voters++
				}
			}
			if !h.Healthy || voters != 3 || h.FailureTolerance < 1 {
				return fmt.Errorf("autopilot: healthy %v, %d healthy voters, failure tolerance %d", h.Healthy, voters, h.FailureTolerance)
			}
			return nil
		}
		return errors.New("no server answers")
	})
}
