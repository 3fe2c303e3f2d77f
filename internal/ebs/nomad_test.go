package ebs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// startNomad runs a real Nomad dev agent (server + client) on ports of its own, with configDir's files merged into
// its configuration as on a host (`nomad agent -config /etc/nomad.d`).
func startNomad(t *testing.T, configDir string) *nomadapi.Client {
	t.Helper()
	bin := testenv.Bin(t, "nomad")
	http, rpc, serf := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	base := fmt.Sprintf(`bind_addr = "127.0.0.1"
data_dir  = %q
ports {
  http = %d
  rpc  = %d
  serf = %d
}
client {
  options {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }
}
`, filepath.Join(t.TempDir(), "data"), http, rpc, serf)
	if err := os.WriteFile(filepath.Join(configDir, "00-base.hcl"), []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testenv.Start(t, "nomad", bin, "agent", "-dev", "-config", configDir, "-log-level", "WARN")
	cfg := nomadapi.DefaultConfig()
	cfg.Address = fmt.Sprintf("http://127.0.0.1:%d", http)
	cfg.SecretID = ""
	client, err := nomadapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 90*time.Second, "nomad client node ready", func() error {
		if p.Exited() {
			t.Fatalf("nomad exited: %s", p.Tail(30))
		}
		nodes, _, err := client.Nodes().List(nil)
		if err != nil {
			return err
		}
		if len(nodes) != 1 || nodes[0].Status != "ready" {
			return fmt.Errorf("nodes %v", nodes)
		}
		return nil
	})
	return client
}

// The host_volume file ensure writes is a valid Nomad client configuration: a real Nomad, started with the
// config directory, offers the volume at the mount path.
func TestNomadOffersEnsuredHostVolume(t *testing.T) {
	e := newEnv(t)
	dev := loopDevice(t, 512)
	e.addDisk(dev)
	vol := e.volume("geth-data")
	cleanupMount(t, vol.MountPath)
	res, err := e.m.Ensure(ctxT(t, 60*time.Second), vol)
	if err != nil {
		t.Fatal(err)
	}
	client := startNomad(t, e.m.Paths.NomadConfigDir)
	nodes, _, err := client.Nodes().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	node, _, err := client.Nodes().Info(nodes[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	hv := node.HostVolumes["geth-data"]
	if hv == nil || hv.Path != res.MountPath || hv.ReadOnly {
		t.Fatalf("nomad host volumes %v, want geth-data at %s", node.HostVolumes, res.MountPath)
	}
}
