package ebs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// startNomad runs a real Nomad dev agent (server + client) with configDir's files merged into its configuration,
// as on a host (`nomad agent -config /etc/nomad.d`).
func startNomad(t *testing.T, configDir string) *nomadapi.Client {
	t.Helper()
	return testenv.StartNomad(t, testenv.NomadOptions{ConfigDir: configDir}).Client
}

// The host_volume file ensure writes is a valid Nomad client configuration: a real Nomad, started with the
// config directory, offers the volume at the mount path.
func TestNomadOffersEnsuredHostVolume(t *testing.T) {
	integration(t)
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

// `nomad volume create` through chainwarden as a dynamic host volume plugin: a real Nomad 1.10 client runs the
// plugin (with only DHV_* in its environment), which ensures an EBS volume (here: the EC2 test server and a loop
// device), formats the blank disk, mounts it under Nomad's volumes dir; delete unmounts and keeps the EBS volume.
func TestNomadDynamicHostVolumePlugin(t *testing.T) {
	integration(t)
	e := newEnv(t)
	dev := loopDevice(t, 512)
	e.addDisk(dev)
	bin := testenv.GoBuild(t, "./cmd/chainwarden")
	pluginDir := t.TempDir()
	script := fmt.Sprintf(`#!/bin/sh
export PATH=%q
export AWS_ACCESS_KEY_ID=AKIDTEST AWS_SECRET_ACCESS_KEY=not-a-secret
export AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
exec %s volume plugin -ec2-endpoint %s -imds-endpoint %s -by-id-dir %s -lock-dir %s -fstab %s "$@"
`, os.Getenv("PATH"), bin, e.ec2.URL, e.imds.URL, e.byID, e.m.Paths.LockDir, e.m.Paths.Fstab)
	if err := os.WriteFile(filepath.Join(pluginDir, "chainwarden-ebs"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	confDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "10-plugins.hcl"),
		[]byte(fmt.Sprintf("client {\n  host_volume_plugin_dir = %q\n}\n", pluginDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	client := startNomad(t, confDir)

	resp, _, err := client.HostVolumes().Create(&nomadapi.HostVolumeCreateRequest{Volume: &nomadapi.HostVolume{
		Name: "geth-dyn", PluginID: "chainwarden-ebs", RequestedCapacityMinBytes: 1 << 30, RequestedCapacityMaxBytes: 2 << 30,
		RequestedCapabilities: []*nomadapi.HostVolumeCapability{{
			AccessMode: "single-node-single-writer", AttachmentMode: "file-system"}},
		Parameters: map[string]string{"chain": "ethereum", "network": "mainnet", "client": "geth", "type": "gp3"},
	}}, nil)
	if err != nil {
		t.Fatalf("nomad volume create: %v", err)
	}
	hv := resp.Volume
	cleanupMount(t, hv.HostPath)
	testenv.Eventually(t, 60*time.Second, "host volume ready", func() error {
		v, _, err := client.HostVolumes().Get(hv.ID, nil)
		if err != nil {
			return err
		}
		if v.State != nomadapi.HostVolumeStateReady {
			return fmt.Errorf("state %s", v.State)
		}
		hv = v
		return nil
	})
	if fs := mountFSType(hv.HostPath); fs != "xfs" {
		t.Fatalf("%s mounted as %q, want the blank disk formatted xfs", hv.HostPath, fs)
	}
	if hv.CapacityBytes != 1<<30 || filepath.Base(hv.HostPath) != hv.ID {
		t.Fatalf("volume %+v", hv)
	}
	vols := e.ec2.Volumes()
	if len(vols) != 1 || tagMap(vols[0].Tags)[ebs.TagFamily] != "ethereum/mainnet/geth" || vols[0].Size != 1 {
		t.Fatalf("EBS volumes %v", vols)
	}
	if _, err := os.Stat(filepath.Join(e.m.Paths.NomadConfigDir, "chainwarden-volume-geth-dyn.hcl")); !os.IsNotExist(err) {
		t.Fatal("the plugin wrote a static host_volume file")
	}

	if _, _, err := client.HostVolumes().Delete(&nomadapi.HostVolumeDeleteRequest{ID: hv.ID}, nil); err != nil {
		t.Fatalf("nomad volume delete: %v", err)
	}
	if isMounted(hv.HostPath) {
		t.Fatal("still mounted after delete")
	}
	if fstab, _ := os.ReadFile(e.m.Paths.Fstab); strings.Contains(string(fstab), hv.HostPath) {
		t.Fatalf("fstab still has the entry:\n%s", fstab)
	}
	if len(e.ec2.Volumes()) != 1 {
		t.Fatal("the EBS volume was deleted")
	}
}
