package ebs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// registerNode registers a chain node the way the agent does: service ID = node name, TTL check
// "chainwarden:<node>".
func registerNode(t *testing.T, c *testenv.Consul, node, status, output string) {
	t.Helper()
	err := c.Client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: node, Name: "eth-mainnet", Tags: []string{"chainwarden"}, Port: 8545, Address: "127.0.0.1",
		Meta: map[string]string{"kind": "ethereum", "chain": "ethereum", "network": "mainnet", "chain_id": "1",
			"client": "geth", "client_version": "Geth/v1.16.7-stable", "node": node, "role": "rpc"},
		Check: &consulapi.AgentServiceCheck{CheckID: registry.CheckID(node), TTL: "10m", Status: status},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Agent().UpdateTTL(registry.CheckID(node), output, status); err != nil {
		t.Fatal(err)
	}
}

// publishHead writes the node's head to Consul KV as the agent does.
func publishHead(t *testing.T, c *testenv.Consul, service, node string, height uint64) {
	t.Helper()
	b, err := json.Marshal(heads.Head{Height: height, Peers: 47, Observed: time.Now(), Agent: "test-host"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.KV().Put(&consulapi.KVPair{Key: kvlayout.New("").Head(service, node), Value: b}, nil); err != nil {
		t.Fatal(err)
	}
}

func passingInstances(t *testing.T, c *testenv.Consul) int {
	t.Helper()
	entries, _, err := c.Client.Health().Service("eth-mainnet", "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func maintenanceOn(t *testing.T, c *testenv.Consul, node string) bool {
	t.Helper()
	checks, err := c.Client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	_, ok := checks["_service_maintenance:"+node]
	return ok
}

// frozen tells whether the filesystem at path is frozen: freezing a frozen filesystem fails with EBUSY.
func frozen(path string) bool {
	if err := exec.Command("fsfreeze", "-f", path).Run(); err != nil {
		return true
	}
	_ = exec.Command("fsfreeze", "-u", path).Run()
	return false
}

// observingFreezer wraps the real freeze and records what the world looked like while the writer was frozen.
type observingFreezer struct {
	inner  ebs.Freezer
	during func()
}

func (o observingFreezer) String() string { return o.inner.String() }

func (o observingFreezer) Freeze(ctx context.Context) (func(context.Context) error, error) {
	thaw, err := o.inner.Freeze(ctx)
	if err == nil {
		o.during()
	}
	return thaw, err
}

// snapshotEnv is an env with a real Consul, node geth-a registered, and its volume ensured on a loop device.
func snapshotEnv(t *testing.T) (*env, *testenv.Consul, ebs.Volume) {
	t.Helper()
	e := newEnv(t)
	dev := loopDevice(t, 512)
	c := testenv.StartConsul(t)
	e.m.Consul, e.m.KV = c.Client.Agent(), c.Client.KV()
	e.addDisk(dev)
	vol := e.volume("geth-data")
	cleanupMount(t, vol.MountPath)
	if _, err := e.m.Ensure(ctxT(t, 60*time.Second), vol); err != nil {
		t.Fatal(err)
	}
	return e, c, vol
}

func TestSnapshotDrainsFreezesTagsAndResumes(t *testing.T) {
	integration(t)
	e, c, vol := snapshotEnv(t)
	// The height comes from the head in KV, not from the check's text.
	registerNode(t, c, "geth-a", consulapi.HealthPassing,
		"height 1, 0 behind head 1 (geth-b), 47 peers, last block 3s ago")
	publishHead(t, c, "eth-mainnet", "geth-a", 19234567)
	testenv.Eventually(t, 10*time.Second, "geth-a passing in the catalog", func() error {
		if n := passingInstances(t, c); n != 1 {
			return fmt.Errorf("%d passing", n)
		}
		return nil
	})
	var sawDrained, sawFrozen, sawMaint bool
	e.m.Freezer = func(v ebs.Volume) ebs.Freezer {
		return observingFreezer{inner: ebs.FSFreeze{Path: v.MountPath}, during: func() {
			sawMaint = maintenanceOn(t, c, "geth-a")
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) && !sawDrained {
				sawDrained = passingInstances(t, c) == 0
				time.Sleep(50 * time.Millisecond)
			}
			sawFrozen = frozen(v.MountPath)
		}}
	}
	res, err := e.m.Snapshot(ctxT(t, 60*time.Second), vol, true)
	if err != nil {
		t.Fatal(err)
	}
	if !sawMaint || !sawDrained || !sawFrozen {
		t.Fatalf("while frozen: maintenance %v, out of the passing set %v, filesystem frozen %v", sawMaint, sawDrained, sawFrozen)
	}
	// Resumed: maintenance off, the node back among the passing ones, the filesystem writable.
	if maintenanceOn(t, c, "geth-a") {
		t.Fatal("maintenance still on")
	}
	testenv.Eventually(t, 10*time.Second, "geth-a passing again", func() error {
		if n := passingInstances(t, c); n != 1 {
			return fmt.Errorf("%d passing", n)
		}
		return nil
	})
	if frozen(vol.MountPath) {
		t.Fatal("filesystem still frozen")
	}
	if err := os.WriteFile(filepath.Join(vol.MountPath, "after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	if res.State != "completed" || res.Height != "19234567" || res.ClientVersion != "Geth/v1.16.7-stable" {
		t.Fatalf("result %+v", res)
	}
	var snap *ec2test.Snapshot
	for _, s := range e.ec2.Snapshots() {
		if s.ID == res.SnapshotID {
			snap = &s
		}
	}
	if snap == nil || snap.VolumeID != res.VolumeID || snap.State != "completed" {
		t.Fatalf("snapshot %+v", snap)
	}
	tags := tagMap(snap.Tags)
	for k, v := range map[string]string{ebs.TagFamily: "ethereum/mainnet/geth", ebs.TagHeight: "19234567",
		ebs.TagClientVersion: "Geth/v1.16.7-stable", ebs.TagNode: "geth-a", ebs.TagVolume: "geth-data"} {
		if tags[k] != v {
			t.Errorf("tag %s = %q, want %q", k, tags[k], v)
		}
	}
	// The next ensure of this family (a new host) restores this snapshot.
	newest, err := e.m.NewestSnapshot(ctxT(t, 10*time.Second), ebs.Family(vol))
	if err != nil || newest == nil || *newest.SnapshotId != res.SnapshotID {
		t.Fatalf("newest snapshot of the family: %v %v", newest, err)
	}
}

func TestSnapshotResumesWhenCreateSnapshotFails(t *testing.T) {
	integration(t)
	e, c, vol := snapshotEnv(t)
	registerNode(t, c, "geth-a", consulapi.HealthPassing, "height 100, 0 behind head 100")
	publishHead(t, c, "eth-mainnet", "geth-a", 100)
	e.ec2.Fail("CreateSnapshot", "UnauthorizedOperation", 1)
	froze := false
	e.m.Freezer = func(v ebs.Volume) ebs.Freezer {
		return observingFreezer{inner: ebs.FSFreeze{Path: v.MountPath}, during: func() { froze = frozen(v.MountPath) }}
	}
	_, err := e.m.Snapshot(ctxT(t, 60*time.Second), vol, true)
	if !errors.Is(err, ebs.ErrDenied) {
		t.Fatalf("error %v, want ErrDenied", err)
	}
	if !froze {
		t.Fatal("the writer was never frozen")
	}
	if frozen(vol.MountPath) || maintenanceOn(t, c, "geth-a") {
		t.Fatal("not resumed after a failed CreateSnapshot")
	}
	if len(e.ec2.Snapshots()) != 0 {
		t.Fatal("a snapshot exists")
	}
}

func TestSnapshotRefusesNodeNotPassing(t *testing.T) {
	integration(t)
	e := newEnv(t)
	c := testenv.StartConsul(t)
	e.m.Consul, e.m.KV = c.Client.Agent(), c.Client.KV()
	vol := e.volume("geth-data")
	e.m.Freezer = func(ebs.Volume) ebs.Freezer {
		t.Fatal("froze a node that is not passing")
		return nil
	}
	// Not registered at all.
	if _, err := e.m.Snapshot(ctxT(t, 30*time.Second), vol, false); !errors.Is(err, ebs.ErrNotPassing) {
		t.Fatalf("unregistered node: %v", err)
	}
	for _, status := range []string{consulapi.HealthWarning, consulapi.HealthCritical} {
		registerNode(t, c, "geth-a", status, "height 5, 4000 behind head 4005 (geth-b): catching up")
		_, err := e.m.Snapshot(ctxT(t, 30*time.Second), vol, false)
		if !errors.Is(err, ebs.ErrNotPassing) || !strings.Contains(err.Error(), "catching up") {
			t.Fatalf("%s node: error %v", status, err)
		}
		t.Logf("reported: %v", err)
		if maintenanceOn(t, c, "geth-a") {
			t.Fatal("maintenance enabled on a refused snapshot")
		}
	}
	if n := e.ec2.Calls("CreateSnapshot"); n != 0 {
		t.Fatalf("CreateSnapshot called %d times", n)
	}
}

// The agent's scheduler: a volume whose family has no snapshot is snapshotted at once (gated, drained), pruned,
// and the next one is due an interval later.
func TestSchedulerSnapshotsAndPrunes(t *testing.T) {
	integration(t)
	e := newEnv(t)
	c := testenv.StartConsul(t)
	e.m.Consul, e.m.KV = c.Client.Agent(), c.Client.KV()
	e.m.Freezer = func(ebs.Volume) ebs.Freezer { return ebs.NoFreeze{} }
	vol := e.volume("geth-data")
	vol.SnapshotInterval = 24 * time.Hour
	vol.Keep = 1
	if _, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), vol); err != nil {
		t.Fatal(err)
	}
	old := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: time.Now().Add(-48 * time.Hour),
		Tags: snapTags(ebs.Family(vol))})
	registerNode(t, c, "geth-a", consulapi.HealthPassing, "height 777, 0 behind head 777")
	publishHead(t, c, "eth-mainnet", "geth-a", 777)
	s := &ebs.Scheduler{Manager: e.m, Volumes: []ebs.Volume{vol, e.volume("no-schedule")}, Log: e.m.Log, Jitter: -1}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	testenv.Eventually(t, 30*time.Second, "a scheduled snapshot, the old one pruned", func() error {
		snaps := e.ec2.Snapshots()
		if len(snaps) != 1 || snaps[0].ID == old || snaps[0].State != "completed" {
			return fmt.Errorf("snapshots %v", snaps)
		}
		return nil
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("scheduler did not stop")
	}
	if tagMap(e.ec2.Snapshots()[0].Tags)[ebs.TagHeight] != "777" {
		t.Fatalf("tags %v", e.ec2.Snapshots()[0].Tags)
	}
	due, err := s.Due(ctxT(t, 10*time.Second), vol)
	if err != nil || due < 23*time.Hour {
		t.Fatalf("next due in %v, %v", due, err)
	}
	if n := e.ec2.Calls("CreateSnapshot"); n != 1 {
		t.Fatalf("CreateSnapshot called %d times", n)
	}
}
