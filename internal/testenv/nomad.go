package testenv

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// Nomad is a real single-node Nomad agent (server and client, like `nomad agent -dev`) on loopback ports of its
// own, with the docker driver pointed at the project's dockerd and host volumes in temp dirs.
type Nomad struct {
	Addr    string // http://127.0.0.1:port
	Client  *nomadapi.Client
	Proc    *Process
	NodeID  string
	DataDir string
	// HostVolumes maps each host volume name to its directory.
	HostVolumes map[string]string

	t      testing.TB
	bin    string
	args   []string
	docker bool
}

// NomadOptions configure StartNomad.
type NomadOptions struct {
	// HostVolumes are the names of host volumes to declare, each backed by a fresh temp dir.
	HostVolumes []string
	// Docker enables the docker driver against this engine; nil leaves it out.
	Docker *Docker
	// ConsulAddr is the Consul agent (host:port) Nomad registers services with and templates read; "" = none.
	ConsulAddr string
	// RawExec enables the raw_exec driver (tasks run as plain processes of the host).
	RawExec bool
	// ConfigDir is a directory of more agent configuration files merged into this one, as /etc/nomad.d on a host
	// (`nomad agent -config DIR`); "" = none.
	ConfigDir string
}

// StartNomad starts the agent and waits until its client node is ready (and, with Docker, the docker driver
// healthy). At test end it stops every job, lets the client destroy the allocations (unmounting their secrets
// dirs), kills the agent and removes any container it left.
func StartNomad(t testing.TB, opts NomadOptions) *Nomad {
	t.Helper()
	bin := Bin(t, "nomad")
	RequireRoot(t) // the client mounts the tasks' secrets dirs, docker needs root
	dir, err := os.MkdirTemp("", "cw-nomad-")
	if err != nil {
		t.Fatal(err)
	}
	http, rpc, serf := FreePort(t), FreePort(t), FreePort(t)
	n := &Nomad{Addr: fmt.Sprintf("http://127.0.0.1:%d", http), DataDir: filepath.Join(dir, "data"), HostVolumes: map[string]string{}}

	var vols strings.Builder
	for _, v := range opts.HostVolumes {
		p := filepath.Join(dir, "volumes", v)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		n.HostVolumes[v] = p
		fmt.Fprintf(&vols, "  host_volume %q {\n    path = %q\n    read_only = false\n  }\n", v, p)
	}
	// Each agent gets its own dynamic port window, so agents of tests running at the same time don't collide on
	// host-network ports.
	minPort := 20000 + (http%100)*100
	consul := `consul {
  address = "127.0.0.1:1"
  auto_advertise = false
  server_auto_join = false
  client_auto_join = false
}`
	if opts.ConsulAddr != "" {
		consul = fmt.Sprintf("consul {\n  address = %q\n  server_auto_join = false\n  client_auto_join = false\n}", opts.ConsulAddr)
	}
	plugins := ""
	if opts.RawExec {
		plugins = "plugin \"raw_exec\" {\n  config {\n    enabled = true\n  }\n}\n"
	}
	if opts.Docker != nil {
		plugins += fmt.Sprintf(`plugin "docker" {
  config {
    endpoint = %q
    volumes {
      enabled = true
    }
    # The local images can't be pulled again: never garbage-collect them.
    gc {
      image = false
      # Other Nomad agents (tests, the demo) share this engine: never reap their containers as dangling.
      dangling_containers {
        enabled = false
      }
    }
  }
}`, opts.Docker.Host)
	}
	cfg := fmt.Sprintf(`data_dir = %q
bind_addr = "127.0.0.1"
log_level = "INFO"
disable_update_check = true
ports {
  http = %d
  rpc  = %d
  serf = %d
}
advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}
server {
  enabled = true
  bootstrap_expect = 1
}
client {
  enabled = true
  servers = ["127.0.0.1:%d"]
  network_interface = "lo"
  min_dynamic_port = %d
  max_dynamic_port = %d
  max_kill_timeout = "2m"
  options {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }
%s}
%s
%s
`, n.DataDir, http, rpc, serf, rpc, minPort, minPort+99, vols.String(), consul, plugins)
	cfgPath := filepath.Join(dir, "nomad.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	apiCfg := nomadapi.DefaultConfig()
	apiCfg.Address = n.Addr
	apiCfg.SecretID = ""
	apiCfg.Namespace = ""
	apiCfg.Region = ""
	client, err := nomadapi.NewClient(apiCfg)
	if err != nil {
		t.Fatal(err)
	}
	n.Client = client

	// Registered before the agent starts, so it runs after the agent's own kill (cleanups run last-in first-out).
	t.Cleanup(func() {
		unmountUnder(dir)
		os.RemoveAll(dir)
	})
	n.t, n.bin, n.docker = t, bin, opts.Docker != nil
	n.args = []string{"agent", "-config", cfgPath}
	if opts.ConfigDir != "" {
		n.args = append(n.args, "-config", opts.ConfigDir)
	}
	n.start()
	t.Cleanup(func() { n.shutdown(t, opts.Docker) })
	return n
}

func (n *Nomad) start() {
	n.t.Helper()
	n.Proc = Start(n.t, "nomad", n.bin, n.args...)
	Eventually(n.t, 90*time.Second, "nomad client node ready", func() error {
		if n.Proc.Exited() {
			n.t.Fatalf("nomad exited: %s", n.Proc.Tail(30))
		}
		nodes, _, err := n.Client.Nodes().List(nil)
		if err != nil {
			return err
		}
		if len(nodes) == 0 || nodes[0].Status != "ready" {
			return fmt.Errorf("no ready node yet")
		}
		if n.docker {
			d := nodes[0].Drivers["docker"]
			if d == nil || !d.Healthy {
				return fmt.Errorf("docker driver not healthy yet")
			}
		}
		n.NodeID = nodes[0].ID
		return nil
	})
}

// Stop kills the agent (SIGTERM) without stopping its jobs: their containers keep running, as on a host whose
// Nomad agent is restarted for an upgrade.
func (n *Nomad) Stop() { n.Proc.Kill() }

// Restart starts the agent again (after Stop, or killing it now) on the same data dir and ports; it picks its
// running tasks back up.
func (n *Nomad) Restart() {
	n.t.Helper()
	n.Proc.Kill()
	n.start()
}

// shutdown stops the jobs, garbage-collects their allocations, then kills the agent and removes leftovers.
func (n *Nomad) shutdown(t testing.TB, d *Docker) {
	if n.Proc.Exited() {
		n.start() // a test stopped it: bring it back to stop the jobs cleanly
	}
	var allocIDs []string
	if allocs, _, err := n.Client.Allocations().List(nil); err == nil {
		for _, a := range allocs {
			allocIDs = append(allocIDs, a.ID)
		}
	}
	if !n.Proc.Exited() {
		if jobs, _, err := n.Client.Jobs().List(nil); err == nil {
			for _, j := range jobs {
				n.Client.Jobs().Deregister(j.ID, true, nil)
			}
		}
		ctx := context.Background()
		if err := devnet.Poll(ctx, 60*time.Second, "nomad allocations stopped", n.Proc, func() error {
			allocs, _, err := n.Client.Allocations().List(nil)
			if err != nil {
				return err
			}
			for _, a := range allocs {
				if a.ClientStatus == "running" || a.ClientStatus == "pending" {
					return fmt.Errorf("allocation %s is %s", a.ID, a.ClientStatus)
				}
			}
			return nil
		}); err != nil {
			t.Logf("nomad shutdown: %v", err)
		}
		// The client destroys terminal allocations' dirs (and unmounts their secrets) on GC; whatever is left once
		// the agent is gone is unmounted by the cleanup of StartNomad.
		n.Client.Nodes().GC(n.NodeID, nil)
		n.Client.System().GarbageCollect()
		if err := devnet.Poll(ctx, 10*time.Second, "nomad allocation dirs removed", n.Proc, func() error {
			for _, id := range allocIDs {
				if _, err := os.Stat(filepath.Join(n.DataDir, "alloc", id)); err == nil {
					return fmt.Errorf("allocation dir %s still there", id)
				}
			}
			return nil
		}); err != nil {
			t.Logf("nomad shutdown: %v", err)
		}
	}
	n.Proc.Kill()
	if d != nil {
		d.RemoveContainersOf(t, allocIDs)
	}
}

// unmountUnder lazily unmounts whatever is still mounted below dir (deepest first).
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 {
			p := unescapeMount(fields[1])
			if strings.HasPrefix(p, dir+"/") {
				mounts = append(mounts, p)
			}
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// AllocDir is the directory of an allocation's task on the client (holding local/, secrets/, ...).
func (n *Nomad) AllocDir(allocID, task string) string {
	return filepath.Join(n.DataDir, "alloc", allocID, task)
}
