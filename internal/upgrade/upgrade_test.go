package upgrade_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/upgrade"
	"github.com/chainwarden/chainwarden/internal/volops"
)

// fakeNomad holds one job's versions and allocations and records what is done to it.
type fakeNomad struct {
	mu       sync.Mutex
	versions []*nomadapi.Job // oldest first; the last is the current one
	allocs   []*nomadapi.AllocationListStub
	calls    []string
}

func (f *fakeNomad) Job(_ context.Context, id string) (*nomadapi.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.versions) == 0 {
		return nil, nil
	}
	return f.versions[len(f.versions)-1], nil
}

func (f *fakeNomad) Versions(context.Context, string) ([]*nomadapi.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.versions), nil
}

func (f *fakeNomad) Allocations(context.Context, string, uint64) ([]*nomadapi.AllocationListStub, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.allocs, 1, nil
}

func (f *fakeNomad) Stop(context.Context, string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "stop")
	for _, a := range f.allocs {
		a.ClientStatus = nomadapi.AllocClientStatusComplete
	}
	return "eval-stop", nil
}

func (f *fakeNomad) Revert(_ context.Context, _ string, version uint64, enforce *uint64) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("revert %d enforce=%v", version, enforce != nil))
	return "eval-revert", nil
}

// fakeOps answers as the agents would: who holds which node's volume, and each operation's outcome.
type fakeOps struct {
	mu      sync.Mutex
	holders map[string]string         // node -> agent
	answer  func(volops.Op) volops.Op // the agents' answers
	asked   []string                  // "kind node version dry"
}

func (f *fakeOps) Holder(_ context.Context, node string) (volops.Holder, bool, error) {
	a, ok := f.holders[node]
	return volops.Holder{Node: node, Volume: node + "-data", Agent: a}, ok, nil
}

func (f *fakeOps) Do(_ context.Context, op volops.Op) (volops.Op, error) {
	f.mu.Lock()
	f.asked = append(f.asked, fmt.Sprintf("%s %s v%d dry=%v", op.Kind, op.Node, op.JobVersion, op.DryRun))
	f.mu.Unlock()
	return f.answer(op), nil
}

func (f *fakeOps) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.asked)
	slices.Sort(out)
	return out
}

func ptr[T any](v T) *T { return &v }

// job is a version of a job with a stateful group "geth" of count nodes and a stateless group "proxy".
func job(version uint64, count int) *nomadapi.Job {
	chain := &nomadapi.Task{Name: "geth", Meta: map[string]string{"chainwarden_kind": "ethereum"}}
	return &nomadapi.Job{ID: ptr("geth"), Namespace: ptr("default"), Version: ptr(version), JobModifyIndex: ptr(100 + version),
		TaskGroups: []*nomadapi.TaskGroup{
			{Name: ptr("geth"), Count: ptr(count), Tasks: []*nomadapi.Task{chain},
				Volumes: map[string]*nomadapi.VolumeRequest{"data": {Type: "host", Source: "geth-data"}}},
			{Name: ptr("proxy"), Count: ptr(1), Tasks: []*nomadapi.Task{{Name: "nginx"}}},
		}}
}

func running(group string, i int) *nomadapi.AllocationListStub {
	return &nomadapi.AllocationListStub{Name: fmt.Sprintf("geth.%s[%d]", group, i), JobID: "geth", TaskGroup: group,
		Namespace: "default", DesiredStatus: nomadapi.AllocDesiredStatusRun, ClientStatus: nomadapi.AllocClientStatusRunning}
}

func destructive(groups ...string) *nomadapi.JobPlanResponse {
	p := &nomadapi.JobPlanResponse{Annotations: &nomadapi.PlanAnnotations{DesiredTGUpdates: map[string]*nomadapi.DesiredUpdates{}}}
	for _, g := range groups {
		p.Annotations.DesiredTGUpdates[g] = &nomadapi.DesiredUpdates{DestructiveUpdate: 1}
	}
	return p
}

// The upgrade snapshots the volumes of the stateful nodes the plan restarts, tagged with the running version; a
// node no agent holds is said and skipped; a refused node is said; with none snapshotted the upgrade is refused
// unless forced.
func TestBeforeUpgrade(t *testing.T) {
	n := &fakeNomad{versions: []*nomadapi.Job{job(0, 3), job(1, 3)},
		allocs: []*nomadapi.AllocationListStub{running("geth", 0), running("geth", 1), running("geth", 2), running("proxy", 0)}}
	ops := &fakeOps{holders: map[string]string{"geth-geth-0": "host-a", "geth-geth-1": "host-b"},
		answer: func(op volops.Op) volops.Op {
			if op.Node == "geth-geth-1" {
				op.State, op.Message = volops.Refused, "node geth-geth-1 is critical (12 blocks behind): node is not passing"
				return op
			}
			op.State, op.Snapshot, op.Height, op.Agent, op.Volume = volops.Done, "snap-"+op.Node, "1200", "host-a", op.Node+"-data"
			return op
		}}
	var out bytes.Buffer
	u := &upgrade.Upgrader{Nomad: n, Ops: ops, Out: &out}
	res, err := u.BeforeUpgrade(context.Background(), job(2, 3), destructive("geth", "proxy"), false)
	if err != nil || len(res) != 2 {
		t.Fatalf("before upgrade: %v %+v\n%s", err, res, out.String())
	}
	if got := ops.log(); !slices.Equal(got, []string{"snapshot geth-geth-0 v1 dry=false", "snapshot geth-geth-1 v1 dry=false"}) {
		t.Fatalf("asked %v", got)
	}
	for _, want := range []string{
		`==> Pre-upgrade snapshots of job "geth" version 1`,
		`geth-geth-0: snapshot snap-geth-geth-0 of volume geth-geth-0-data`,
		`geth-geth-1: not snapshotted: refused: node geth-geth-1 is critical`,
		`geth-geth-2: host volume "geth-data" is not held by any chainwarden agent: no snapshot`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	// Nothing could be snapshotted: refused, unless forced.
	ops.holders = map[string]string{"geth-geth-1": "host-b"}
	_, err = u.BeforeUpgrade(context.Background(), job(2, 3), destructive("geth"), false)
	if !errors.Is(err, upgrade.ErrNoRestorePoint) || !strings.Contains(err.Error(), "geth-geth-1 (volume geth-geth-1-data on host-b): refused: node geth-geth-1 is critical") ||
		!strings.Contains(err.Error(), "Nothing was changed") {
		t.Fatalf("nothing snapshotted: %v", err)
	}
	if _, err := u.BeforeUpgrade(context.Background(), job(2, 3), destructive("geth"), true); err != nil {
		t.Fatalf("forced: %v", err)
	}

	// Nothing to keep: an in-place update, a new job, a stopped one.
	before := len(ops.log())
	inPlace := &nomadapi.JobPlanResponse{Annotations: &nomadapi.PlanAnnotations{DesiredTGUpdates: map[string]*nomadapi.DesiredUpdates{
		"geth": {InPlaceUpdate: 3}}}}
	if res, err := u.BeforeUpgrade(context.Background(), job(2, 3), inPlace, false); err != nil || res != nil {
		t.Fatalf("in-place update: %v %v", res, err)
	}
	stopped := job(1, 3)
	stopped.Stop = ptr(true)
	n.versions = append(n.versions, stopped)
	if res, err := u.BeforeUpgrade(context.Background(), job(3, 3), destructive("geth"), false); err != nil || res != nil {
		t.Fatalf("stopped job: %v %v", res, err)
	}
	if len(ops.log()) != before {
		t.Fatalf("operations asked with nothing to keep: %v", ops.log())
	}
}

// A revert with restored volumes checks every snapshot first (refusing with nothing changed when one is missing),
// then stops the job, restores each volume, and reverts; without it, it only reverts, guarded by the current version.
func TestRevert(t *testing.T) {
	newNomad := func() *fakeNomad {
		return &fakeNomad{versions: []*nomadapi.Job{job(0, 2), job(1, 2)},
			allocs: []*nomadapi.AllocationListStub{running("geth", 0), running("geth", 1)}}
	}
	hold := map[string]string{"geth-geth-0": "host-a", "geth-geth-1": "host-b"}
	answer := func(op volops.Op) volops.Op {
		op.State, op.Snapshot, op.Height, op.Agent, op.Volume = volops.Done, "snap-"+op.Node, "1200", "host-a", op.Node+"-data"
		op.Message = "restored " + op.Snapshot
		return op
	}
	ctx := context.Background()

	n := newNomad()
	ops := &fakeOps{holders: hold, answer: answer}
	var out bytes.Buffer
	u := &upgrade.Upgrader{Nomad: n, Ops: ops, Out: &out}
	eval, err := u.Revert(ctx, "geth", upgrade.RevertOptions{RestoreVolumes: true})
	if err != nil || eval != "eval-revert" {
		t.Fatalf("revert: %v %s\n%s", err, eval, out.String())
	}
	if !slices.Equal(n.calls, []string{"stop", "revert 0 enforce=false"}) {
		t.Fatalf("nomad calls %v", n.calls)
	}
	if got := ops.log(); !slices.Equal(got, []string{"restore geth-geth-0 v0 dry=false", "restore geth-geth-0 v0 dry=true",
		"restore geth-geth-1 v0 dry=false", "restore geth-geth-1 v0 dry=true"}) {
		t.Fatalf("asked %v", got)
	}

	// A snapshot missing: refused before anything changed.
	n = newNomad()
	n.versions = []*nomadapi.Job{job(6, 2), job(7, 2), job(8, 2)}
	ops = &fakeOps{holders: hold, answer: func(op volops.Op) volops.Op {
		if op.Node == "geth-geth-1" {
			op.State, op.Message = volops.Refused, "no pre-upgrade snapshot of volume geth-geth-1-data for job geth version 7"
			return op
		}
		return answer(op)
	}}
	u = &upgrade.Upgrader{Nomad: n, Ops: ops, Out: &out}
	_, err = u.Revert(ctx, "geth", upgrade.RevertOptions{RestoreVolumes: true})
	if !errors.Is(err, upgrade.ErrCannotRestore) || !strings.Contains(err.Error(), "no pre-upgrade snapshot of volume geth-geth-1-data for job geth version 7") ||
		len(n.calls) != 0 {
		t.Fatalf("missing snapshot: %v, nomad calls %v", err, n.calls)
	}
	// A node no agent holds: refused too.
	ops.holders = map[string]string{"geth-geth-0": "host-a"}
	if _, err = u.Revert(ctx, "geth", upgrade.RevertOptions{RestoreVolumes: true}); !errors.Is(err, upgrade.ErrCannotRestore) ||
		!strings.Contains(err.Error(), `geth-geth-1: no chainwarden agent holds its host volume "geth-data"`) {
		t.Fatalf("unheld volume: %v", err)
	}
	// A restore that fails leaves the job stopped and says how to go on.
	n = newNomad()
	ops = &fakeOps{holders: hold, answer: func(op volops.Op) volops.Op {
		if !op.DryRun && op.Node == "geth-geth-1" {
			op.State, op.Message = volops.Refused, "volume geth-geth-1-data (/dev/nvme1n1) is mounted by pid 42 (geth): volume is in use"
			return op
		}
		return answer(op)
	}}
	u = &upgrade.Upgrader{Nomad: n, Ops: ops, Out: &out}
	_, err = u.Revert(ctx, "geth", upgrade.RevertOptions{RestoreVolumes: true})
	if err == nil || !strings.Contains(err.Error(), "the job is stopped") || !strings.Contains(err.Error(), "chainwarden job revert geth -version 0 -restore-volumes") ||
		!slices.Equal(n.calls, []string{"stop"}) {
		t.Fatalf("failed restore: %v, nomad calls %v", err, n.calls)
	}

	// Without restoring: only the revert, enforcing the version it was at.
	n = newNomad()
	u = &upgrade.Upgrader{Nomad: n, Ops: &fakeOps{}, Out: &out}
	if _, err := u.Revert(ctx, "geth", upgrade.RevertOptions{}); err != nil || !slices.Equal(n.calls, []string{"revert 0 enforce=true"}) {
		t.Fatalf("plain revert: %v %v", err, n.calls)
	}
	if _, err := u.Revert(ctx, "geth", upgrade.RevertOptions{Version: ptr(uint64(1))}); err == nil ||
		!strings.Contains(err.Error(), "revert goes to an earlier version") {
		t.Fatalf("revert to the current version: %v", err)
	}
}
