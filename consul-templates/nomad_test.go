package consultemplates

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// TestNomadJobRendersTheSameTemplate submits jobs/rpc-proxy.nomad.hcl with the nomad CLI to a real single-node
// Nomad agent (raw_exec driver) wired to a real Consul: Nomad's template block renders
// consul-templates/nginx/rpc-proxy.conf.ctmpl (the same file), apply.sh validates and places it, nginx serves, and
// a node's health change reaches it.
func TestNomadJobRendersTheSameTemplate(t *testing.T) {
	nomad := testenv.Bin(t, "nomad")
	consul := testenv.StartConsul(t)
	a, b := newFakeNode(t, "geth-a"), newFakeNode(t, "geth-b")
	register(t, consul, service, "geth-a", "127.0.0.1", a.port(), "passing", nil)
	register(t, consul, service, "geth-b", "127.0.0.1", b.port(), "passing", nil)

	n := testenv.StartNomad(t, testenv.NomadOptions{ConsulAddr: consul.Addr, RawExec: true})
	proxyPort := testenv.FreePort(t)
	templates, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	// Stopped, with every allocation, by StartNomad's cleanup.
	testenv.Run(t, nomad, "job", "run", "-address", n.Addr, "-detach", "-var", "driver=raw_exec",
		"-var", fmt.Sprintf("port=%d", proxyPort), "-var", "nginx="+testenv.Bin(t, "nginx"),
		"-var", "templates_dir="+templates, filepath.Join(templates, "..", "jobs", "rpc-proxy.nomad.hcl"))

	url := fmt.Sprintf("http://127.0.0.1:%d/%s", proxyPort, service)
	testenv.Eventually(t, 120*time.Second, "nginx under nomad routes to both nodes", func() error {
		if n.Proc.Exited() {
			t.Fatalf("nomad exited: %s", n.Proc.Tail(30))
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
