package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// nomadPort is the HTTP port of every host's Nomad agent (on 127.0.0.1 inside the host, as the image has it).
const nomadPort = 4646

// nomadTokens makes the Consul token of the fleet's Nomad agents (policy nomad-agent from the shipped
// nomad-agent.hcl) once, and gives it to a host as the image does: CONSUL_HTTP_TOKEN in /etc/nomad.d/nomad.env
// (0600), which nomad.service reads as its environment.
func (f *Fleet) nomadToken(h *Host) error {
	if f.nomadConsulToken == "" {
		if err := f.createPolicy("nomad-agent", "nomad-agent.hcl", nil); err != nil {
			return err
		}
		tok, err := f.createToken(&consulapi.ACLToken{Description: "nomad agents",
			Policies: []*consulapi.ACLTokenPolicyLink{{Name: "nomad-agent"}}})
		if err != nil {
			return err
		}
		f.nomadConsulToken = tok
	}
	return f.writeSecret(filepath.Join(h.Dir, "nomad.env"), "CONSUL_HTTP_TOKEN="+f.nomadConsulToken+"\n")
}

// nomadConfig writes the host's /etc/nomad.d: on chain hosts the image's own nomad.hcl (a client) and the host.hcl
// that chainwarden-bootstrap writes; on control hosts a server's (the node image has none). zz-fleet.hcl holds what
// only this harness changes: the data dir, the alloc mounts dir and the volume plugin dir under the host's own
// directory, and no cloud-metadata fingerprinting (no metadata service on this network). Nomad merges the files of
// a config dir in lexical order, the later winning: the harness's must come after the image's nomad.hcl, or the
// agents would share the image's /opt/nomad on this machine.
func (f *Fleet) nomadConfig(h *Host) (dir string, err error) {
	dir = filepath.Join(h.Dir, "nomad.d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	files := map[string]string{
		"host.hcl": fmt.Sprintf(`datacenter = "dc1"
region     = "global"
name       = %q
bind_addr  = %q

advertise {
  http = %q
  rpc  = %q
  serf = %q
}
`, h.Name, h.IP, h.IP, h.IP, h.IP),
	}
	fleet := fmt.Sprintf("data_dir = %q\n", filepath.Join(h.Dir, "nomad-data"))
	switch h.Role {
	case RoleServer:
		// Servers find each other through Consul (server_auto_join, on by default), as the clients find them.
		files["server.hcl"] = `log_level            = "INFO"
log_json             = true
disable_update_check = true
leave_on_terminate   = false

addresses {
  http = "127.0.0.1"
}

server {
  enabled          = true
  bootstrap_expect = 3
}

client {
  enabled = false
}

consul {
  address = "127.0.0.1:8500"
}
`
	default:
		image, err := os.ReadFile(filepath.Join(f.opts.Root, "packer", "files", "nomad.d", "nomad.hcl"))
		if err != nil {
			return "", fmt.Errorf("the image's nomad.hcl: %w", err)
		}
		files["nomad.hcl"] = string(image)
		files["host.hcl"] += `
client {
  node_class = ""

  meta {
    chainwarden_roles = "node"
  }
}
`
		fleet += fmt.Sprintf(`
client {
  host_volume_plugin_dir = %q
  alloc_mounts_dir       = %q
  network_interface      = "eth0"

  # No jobs run in the fleet: the Docker driver stays off, and its plugin away from this machine's Docker engine
  # (it would reap the containers of other Nomad agents there as dangling).
  options = {
    "driver.denylist"      = "raw_exec,docker"
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }
}

plugin "docker" {
  config {
    endpoint = "unix://%s"

    gc {
      dangling_containers {
        enabled = false
      }
    }
  }
}
`, filepath.Join(h.Dir, "nomad-data", "host_volume_plugins"), filepath.Join(h.Dir, "nomad-alloc-mounts"),
			filepath.Join(h.Dir, "no-docker.sock"))
	}
	files["zz-fleet.hcl"] = fleet
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// addNomad declares the host's Nomad agent; ready when its HTTP API answers (the cluster's state is waited for by
// WaitNomad once every host runs).
func (f *Fleet) addNomad(h *Host) error {
	bin, err := devnet.Bin("nomad")
	if err != nil {
		return err
	}
	if err := f.nomadToken(h); err != nil {
		return err
	}
	dir, err := f.nomadConfig(h)
	if err != nil {
		return err
	}
	client := h.ns.httpClient(3 * time.Second)
	pr := h.add("nomad", bin, []string{"agent", "-config", dir}, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/v1/agent/self", nomadPort), nil)
		resp, err := client.Do(req) // answered locally: a server alone has no leader yet
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var self struct{ Config struct{ DataDir string } }
		if err := json.NewDecoder(resp.Body).Decode(&self); err != nil {
			return fmt.Errorf("nomad's /v1/agent/self: %w", err)
		}
		if !strings.HasPrefix(self.Config.DataDir, h.Dir+string(filepath.Separator)) {
			return fmt.Errorf("nomad runs with data_dir %q, not under %s: the fleet's config files are not merged as meant", self.Config.DataDir, h.Dir)
		}
		return nil
	})
	pr.envFile = filepath.Join(h.Dir, "nomad.env")
	return nil
}

// Nomad is an API client of the host's own Nomad agent (127.0.0.1:4646 inside the host).
func (h *Host) Nomad() *nomadapi.Client {
	h.nomadOnce.Do(func() {
		cfg := nomadapi.DefaultConfig()
		cfg.Address = fmt.Sprintf("http://127.0.0.1:%d", nomadPort)
		cfg.HttpClient = &http.Client{Transport: &http.Transport{DialContext: h.ns.DialContext}, Timeout: 10 * time.Second}
		cfg.SecretID, cfg.Namespace, cfg.Region = "", "", ""
		c, err := nomadapi.NewClient(cfg)
		if err != nil {
			panic(err) // only a malformed address fails here
		}
		h.nomad = c
	})
	return h.nomad
}

// NomadNodeStatus is the status the Nomad servers hold for the client named name (ready, down, initializing;
// "" when they do not know it), as the given server answers.
func (f *Fleet) NomadNodeStatus(from *Host, name string) (string, error) {
	nodes, _, err := from.Nomad().Nodes().List(&nomadapi.QueryOptions{AllowStale: true})
	if err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.Name == name {
			return n.Status, nil
		}
	}
	return "", nil
}

// WaitNomad waits until the Nomad servers have a leader with all three servers in raft, and every running chain
// host's client is ready: the clients found the servers through Consul, with ACLs on.
func (f *Fleet) WaitNomad(ctx context.Context) error {
	return devnet.Poll(ctx, 2*timeoutUnit, "nomad servers with a leader and every client ready", nil, func() error {
		for _, s := range f.Servers {
			leader, err := s.Nomad().Status().Leader()
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			if leader == "" {
				return fmt.Errorf("%s knows no nomad leader", s.Name)
			}
			peers, err := s.Nomad().Status().Peers()
			if err != nil {
				return fmt.Errorf("%s: %w", s.Name, err)
			}
			if len(peers) != len(f.Servers) {
				return fmt.Errorf("%s: nomad raft peers %v", s.Name, peers)
			}
		}
		for _, h := range f.Chains {
			st, err := f.NomadNodeStatus(f.Servers[0], h.Name)
			if err != nil {
				return err
			}
			if st != "ready" {
				return fmt.Errorf("nomad client %s is %q", h.Name, st)
			}
		}
		return nil
	})
}
