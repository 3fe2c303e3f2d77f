package consultemplates

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// TestNomadJobRendersTheSameTemplate submits jobs/rpc-proxy.nomad.hcl with the nomad CLI to a real Nomad dev agent
// wired to a real Consul: Nomad's template block renders consul-templates/nginx/rpc-proxy.conf.ctmpl (the same file),
// apply.sh validates and places it, nginx serves, and a node's health change reaches it.
func TestNomadJobRendersTheSameTemplate(t *testing.T) {
	testenv.RequireRoot(t) // nomad -dev's client wants root for its task directories
	nomad := testenv.Bin(t, "nomad")
	consul := testenv.StartConsul(t)
	a, b := newFakeNode(t, "geth-a"), newFakeNode(t, "geth-b")
	register(t, consul, service, "geth-a", "127.0.0.1", a.port(), "passing", nil)
	register(t, consul, service, "geth-b", "127.0.0.1", b.port(), "passing", nil)

	dir := t.TempDir()
	// Nomad's client mounts a tmpfs on each task's secrets/ directory; unmount what is left once Nomad is gone.
	t.Cleanup(func() { killUnder(t, dir); unmountUnder(t, dir) })
	httpPort := testenv.FreePort(t)
	cfg := fmt.Sprintf(`data_dir = %q
bind_addr = "127.0.0.1"
ports {
  http = %d
  rpc  = %d
  serf = %d
}
consul {
  address = %q
}
client {
  options {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }
}
plugin "raw_exec" {
  config {
    enabled = true
  }
}
`, filepath.Join(dir, "data"), httpPort, testenv.FreePort(t), testenv.FreePort(t), consul.Addr)
	cfgPath := filepath.Join(dir, "nomad.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	proc := testenv.Start(t, "nomad", nomad, "agent", "-dev", "-config", cfgPath)
	addr := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	testenv.Eventually(t, 90*time.Second, "nomad client ready", func() error {
		if proc.Exited() {
			t.Fatalf("nomad exited: %s", proc.Tail(30))
		}
		out, err := runIn("", nomad, "node", "status", "-address", addr)
		if err != nil || !strings.Contains(out, "ready") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})

	proxyPort := testenv.FreePort(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := runIn(root, nomad, "job", "run", "-address", addr, "-detach",
		"-var", "driver=raw_exec", "-var", fmt.Sprintf("port=%d", proxyPort), "-var", "nginx="+testenv.Bin(t, "nginx"),
		"jobs/rpc-proxy.nomad.hcl")
	if err != nil {
		t.Fatalf("nomad job run: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_, _ = runIn("", nomad, "job", "stop", "-address", addr, "rpc-proxy")
		// Wait for the task to end: Nomad's executor (a process of its own) exits with it.
		testenv.Eventually(t, 30*time.Second, "rpc-proxy allocations stopped", func() error {
			resp, err := http.Get(addr + "/v1/job/rpc-proxy/allocations")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var allocs []struct{ ClientStatus string }
			if err := json.NewDecoder(resp.Body).Decode(&allocs); err != nil {
				return err
			}
			for _, a := range allocs {
				if a.ClientStatus == "running" || a.ClientStatus == "pending" {
					return fmt.Errorf("allocation %s", a.ClientStatus)
				}
			}
			return nil
		})
	})

	url := fmt.Sprintf("http://127.0.0.1:%d/%s", proxyPort, service)
	testenv.Eventually(t, 120*time.Second, "nginx under nomad routes to both nodes", func() error {
		if proc.Exited() {
			t.Fatalf("nomad exited: %s", proc.Tail(30))
		}
		return only(responders(t, url, 10), "geth-a", "geth-b")
	})
	setStatus(t, consul, "geth-b", "critical")
	testenv.Eventually(t, 30*time.Second, "nginx under nomad drops the critical node", func() error {
		return only(responders(t, url, 10), "geth-a")
	})
	if r, err := call(url, "admin_peers"); err != nil || r.Error == nil {
		t.Errorf("admin_peers passed the filter under nomad: %v %+v", err, r)
	}
}

func runIn(dir, bin string, args ...string) (string, error) {
	return testenvOutput(dir, bin, args...)
}

// unmountUnder unmounts every mount point below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var points []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			points = append(points, f[1])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil {
			t.Logf("unmount %s: %v", points[i], err)
		}
	}
}

// killUnder kills processes this test's Nomad left behind (executors, tasks): those whose command line names dir.
func killUnder(t *testing.T, dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), dir+"/") {
			continue
		}
		t.Logf("killing leftover %d: %s", pid, strings.ReplaceAll(string(b), "\x00", " "))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
