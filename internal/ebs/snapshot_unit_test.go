package ebs_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
)

// unitSnapshotEnv is an env whose Consul is the fake one, whose clock is fake, with geth-data attached and
// geth-a registered passing.
func unitSnapshotEnv(t *testing.T) (*env, fakeConsul, ebs.Volume) {
	t.Helper()
	e := newEnv(t)
	e.withFakeClock()
	fc := newFakeConsul()
	e.m.Consul, e.m.KV = fc, fc
	e.m.Freezer = func(ebs.Volume) ebs.Freezer { return ebs.NoFreeze{} }
	vol := e.volume("geth-data", func(v *ebs.Volume) { v.DrainWait = 10 * time.Second })
	if _, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), vol); err != nil {
		t.Fatal(err)
	}
	fc.register("eth-mainnet", "geth-a", consulapi.HealthPassing, "height 1, 0 behind head 1 (geth-b), 47 peers")
	return e, fc, vol
}

type snapshotResult struct {
	res *ebs.SnapshotResult
	err error
}

// snapshotAsync starts a snapshot without waiting for completion, returning where its result arrives.
func snapshotAsync(t *testing.T, e *env, vol ebs.Volume) <-chan snapshotResult {
	done := make(chan snapshotResult, 1)
	go func() {
		res, err := e.m.Snapshot(ctxT(t, 30*time.Second), vol, false)
		done <- snapshotResult{res, err}
	}()
	return done
}

// The height tag is the node's head as the agent published it in KV, not a number read from the check's text;
// the node is in maintenance for the drain wait (on the Manager's clock) and out of it after.
func TestSnapshotTagsTheHeadFromKV(t *testing.T) {
	e, fc, vol := unitSnapshotEnv(t)
	fc.publish(t, "eth-mainnet", "geth-a", 19234567)
	done := snapshotAsync(t, e, vol)
	e.clk.BlockUntil(1) // the drain wait
	if log := fc.log(); len(log) != 1 || !strings.HasPrefix(log[0], "maintenance on geth-a: chainwarden: snapshot of volume geth-data") {
		t.Fatalf("during the drain wait: %v", log)
	}
	if n := e.ec2.Calls("CreateSnapshot"); n != 0 {
		t.Fatalf("CreateSnapshot before the drain wait ended (%d calls)", n)
	}
	e.clk.Advance(10 * time.Second)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.Height != "19234567" || r.res.ClientVersion != "Geth/v1.16.7-stable" {
		t.Fatalf("result %+v", r.res)
	}
	if log := fc.log(); len(log) != 2 || log[1] != "maintenance off geth-a" {
		t.Fatalf("maintenance: %v", log)
	}
	snaps := e.ec2.Snapshots()
	if len(snaps) != 1 || tagMap(snaps[0].Tags)[ebs.TagHeight] != "19234567" ||
		tagMap(snaps[0].Tags)["Name"] != "chainwarden-geth-data-19234567" {
		t.Fatalf("snapshots %+v", snaps)
	}

	// A volume naming its service reads that service's head; with no head at all the height is unknown.
	vol.Service = "eth-other"
	fc.publish(t, "eth-other", "geth-a", 42)
	done = snapshotAsync(t, e, vol)
	e.clk.BlockUntil(1)
	e.clk.Advance(10 * time.Second)
	if r := <-done; r.err != nil || r.res.Height != "42" {
		t.Fatalf("service eth-other: %+v %v", r.res, r.err)
	}
	vol.Service = "eth-none"
	done = snapshotAsync(t, e, vol)
	e.clk.BlockUntil(1)
	e.clk.Advance(10 * time.Second)
	if r := <-done; r.err != nil || r.res.Height != "unknown" || !strings.Contains(e.logs.String(), "no height of the node from its agent nor in Consul KV") {
		t.Fatalf("no head: %+v %v", r.res, r.err)
	}

	// The agent of this process knows the node's height (it need not be a head publisher): that one is the tag.
	e.m.Height = func(node string) (uint64, bool) { return 777000, node == "geth-a" }
	done = snapshotAsync(t, e, vol)
	e.clk.BlockUntil(1)
	e.clk.Advance(10 * time.Second)
	if r := <-done; r.err != nil || r.res.Height != "777000" {
		t.Fatalf("height from the agent: %+v %v", r.res, r.err)
	}
}

func TestSnapshotRefusedUnlessPassing(t *testing.T) {
	e, fc, vol := unitSnapshotEnv(t)
	fc.publish(t, "eth-mainnet", "geth-a", 100)
	e.m.Freezer = func(ebs.Volume) ebs.Freezer {
		t.Error("froze a node that is not passing")
		return ebs.NoFreeze{}
	}
	for _, status := range []string{consulapi.HealthWarning, consulapi.HealthCritical} {
		fc.setStatus("geth-a", status)
		_, err := e.m.Snapshot(ctxT(t, 10*time.Second), vol, false)
		if !errors.Is(err, ebs.ErrNotPassing) || !strings.Contains(err.Error(), "is "+status) {
			t.Fatalf("%s: %v", status, err)
		}
	}
	vol.Node = "geth-unknown"
	if _, err := e.m.Snapshot(ctxT(t, 10*time.Second), vol, false); !errors.Is(err, ebs.ErrNotPassing) {
		t.Fatalf("unknown node: %v", err)
	}
	if len(fc.log()) != 0 || e.ec2.Calls("CreateSnapshot") != 0 {
		t.Fatalf("maintenance %v, CreateSnapshot %d", fc.log(), e.ec2.Calls("CreateSnapshot"))
	}
}

// Waiting for a snapshot logs its progress every ProgressEvery of the Manager's clock and ends when it completes.
func TestWaitSnapshotLogsProgress(t *testing.T) {
	e := newEnv(t)
	clk := e.withFakeClock()
	id := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, State: "pending"})
	res := &ebs.SnapshotResult{SnapshotID: id}
	done := make(chan error, 1)
	go func() { done <- e.m.WaitSnapshot(ctxT(t, 30*time.Second), res) }()
	eventually(t, "the waiter polling", func() bool { return e.ec2.Calls("DescribeSnapshots") >= 3 })
	clk.Advance(e.m.ProgressEvery)
	eventually(t, "a progress line", func() bool {
		return strings.Contains(e.logs.String(), `waiting: for="snapshot `+id+` to complete" status="pending 0%" elapsed=10s`)
	})
	sn := e.ec2.Snapshots()[0]
	sn.State = "completed"
	e.ec2.PutSnapshot(sn)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if res.State != "completed" || res.Progress != "100%" {
		t.Fatalf("result %+v", res)
	}

	failed := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, State: "error"})
	if err := e.m.WaitSnapshot(ctxT(t, 30*time.Second), &ebs.SnapshotResult{SnapshotID: failed}); err == nil ||
		!strings.Contains(err.Error(), "snapshot "+failed+" failed") {
		t.Fatalf("failed snapshot: %v", err)
	}
}

// The scheduler waits on its clock: a refused snapshot is tried again RetryAfter later, and once one is taken the
// next is due one interval after it.
func TestSchedulerRetriesAndWaitsOnItsClock(t *testing.T) {
	e, fc, vol := unitSnapshotEnv(t)
	fc.publish(t, "eth-mainnet", "geth-a", 777)
	fc.setStatus("geth-a", consulapi.HealthCritical)
	vol.SnapshotInterval = 24 * time.Hour
	s := &ebs.Scheduler{Manager: e.m, Volumes: []ebs.Volume{vol}, Log: e.m.Log, Jitter: -1, RetryAfter: 15 * time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	e.clk.BlockUntil(1) // refused: waiting RetryAfter
	if !strings.Contains(e.logs.String(), "scheduled snapshot failed") || e.ec2.Calls("CreateSnapshot") != 0 {
		t.Fatalf("a critical node was snapshotted, or not said why not:\n%s", e.logs.String())
	}
	fc.setStatus("geth-a", consulapi.HealthPassing)
	e.clk.Advance(15 * time.Minute)
	e.clk.BlockUntil(1) // the drain wait of the retried snapshot
	taken := e.clk.Now()
	e.clk.Advance(vol.DrainWait)
	eventually(t, "the snapshot taken and maintenance off", func() bool {
		log := fc.log()
		return len(log) == 2 && log[1] == "maintenance off geth-a" && len(e.ec2.Snapshots()) == 1
	})
	e.clk.BlockUntil(1) // waiting for the next one
	next, _ := e.clk.NextDeadline()
	if want := taken.Add(vol.DrainWait).Add(24 * time.Hour); !next.Equal(want) {
		t.Fatalf("next snapshot at %v, want %v (one interval after this one)", next, want)
	}
	if got := tagMap(e.ec2.Snapshots()[0].Tags)[ebs.TagHeight]; got != "777" || !slices.Contains(fc.log(), "maintenance off geth-a") {
		t.Fatalf("height tag %q", got)
	}
}
