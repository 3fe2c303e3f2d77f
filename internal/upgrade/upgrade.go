// Package upgrade makes `chainwarden job run` of a new version of a stateful chain node take a restore point first
// — an EBS snapshot of each volume the upgrade will restart a node on, taken by the agent holding it, only of a
// passing node, drained and with its writer frozen — and `chainwarden job revert` go back to a version, on request
// with the volumes restored from the snapshots taken before that version was upgraded. It talks to Nomad for the
// job and to the agents through Consul KV (internal/volops).
package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/discovery"
	"github.com/chainwarden/chainwarden/internal/volops"
)

// Nomad is what the upgrade needs of Nomad's API; NomadAPI adapts the real client.
type Nomad interface {
	Job(ctx context.Context, id string) (*nomadapi.Job, error) // nil, nil: no such job
	Versions(ctx context.Context, id string) ([]*nomadapi.Job, error)
	Allocations(ctx context.Context, id string, index uint64) ([]*nomadapi.AllocationListStub, uint64, error) // blocking past index
	Stop(ctx context.Context, id string) (evalID string, err error)
	Revert(ctx context.Context, id string, version uint64, enforcePrior *uint64) (evalID string, err error)
}

// VolumeOps asks the agents for operations on volumes; *volops.Client satisfies it.
type VolumeOps interface {
	Holder(ctx context.Context, node string) (volops.Holder, bool, error)
	Do(ctx context.Context, op volops.Op) (volops.Op, error)
}

// Upgrader does the volume side of upgrades and reverts.
type Upgrader struct {
	Nomad Nomad
	Ops   VolumeOps
	Out   io.Writer // progress lines, as the nomad CLI prints them
	// StopTimeout bounds waiting for a stopped job's allocations to end (default 10m: chain nodes have long
	// kill_timeouts).
	StopTimeout time.Duration
}

// ErrNoRestorePoint is an upgrade refused because no volume could be snapshotted before it.
var ErrNoRestorePoint = errors.New("no restore point")

// ErrCannotRestore is a revert with restored volumes refused before anything was changed.
var ErrCannotRestore = errors.New("cannot restore the volumes")

// Writer is a chain node of a job that writes a host volume: the node the agents know it by, and the volume.
type Writer struct {
	Node   string // the chain node's name (discovery.NodeName): the Consul service ID whose check gates snapshots
	Group  string
	Source string // the host volume's name (its source in the group's volume block)
	Holder *volops.Holder
}

func (u *Upgrader) printf(format string, args ...any) {
	if u.Out != nil {
		fmt.Fprintf(u.Out, format, args...)
	}
}

// hostVolumes are the host volume sources of a group.
func hostVolumes(tg *nomadapi.TaskGroup) []string {
	var out []string
	for _, name := range sortedKeys(tg.Volumes) {
		if v := tg.Volumes[name]; v != nil && v.Type == "host" {
			out = append(out, v.Source)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// nodeNames are the chain node names of allocation index i of a group.
func nodeNames(job *nomadapi.Job, tg *nomadapi.TaskGroup, i int) []string {
	tasks := discovery.ChainTasks(job, tg)
	a := &nomadapi.Allocation{JobID: deref(job.ID), TaskGroup: deref(tg.Name), Namespace: deref(job.Namespace),
		Name: fmt.Sprintf("%s.%s[%d]", deref(job.ID), deref(tg.Name), i)}
	var out []string
	for _, t := range tasks {
		out = append(out, discovery.NodeName(a, t, len(tasks) > 1))
	}
	return out
}

// writers finds the stateful chain nodes of job's groups (those with a host volume and a chain task) at the given
// allocation indexes, and the agent holding each one's volume (nil: none does; not an EBS volume chainwarden
// manages).
func (u *Upgrader) writers(ctx context.Context, job *nomadapi.Job, indexes map[string][]int) ([]Writer, error) {
	var out []Writer
	for _, tg := range job.TaskGroups {
		g := deref(tg.Name)
		sources := hostVolumes(tg)
		if len(sources) == 0 {
			continue
		}
		for _, i := range indexes[g] {
			names := nodeNames(job, tg, i)
			if len(names) == 0 {
				continue
			}
			w := Writer{Node: names[0], Group: g, Source: sources[0]}
			for _, n := range names {
				h, ok, err := u.Ops.Holder(ctx, n)
				if err != nil {
					return nil, err
				}
				if ok {
					w.Node, w.Holder = n, &h
					break
				}
			}
			out = append(out, w)
		}
	}
	return out, nil
}

// BeforeUpgrade takes the pre-upgrade snapshots for registering next, whose plan says what it will change: the
// volume of every running allocation of a group the plan updates destructively (the task is restarted on the new
// version) is snapshotted by the agent holding it, tagged as the pre-upgrade point of the job's current version.
// Nodes that are not passing are refused by their agents; if no volume could be snapshotted it returns
// ErrNoRestorePoint, unless force. A new job, a job with no host volumes, or volumes no agent holds need nothing.
func (u *Upgrader) BeforeUpgrade(ctx context.Context, next *nomadapi.Job, plan *nomadapi.JobPlanResponse, force bool) ([]volops.Op, error) {
	id := deref(next.ID)
	cur, err := u.Nomad.Job(ctx, id)
	if err != nil || cur == nil || (cur.Stop != nil && *cur.Stop) || plan == nil || plan.Annotations == nil {
		return nil, err // a new or stopped job: nothing runs, nothing to keep
	}
	stubs, _, err := u.Nomad.Allocations(ctx, id, 0)
	if err != nil {
		return nil, err
	}
	indexes := map[string][]int{}
	for _, s := range stubs {
		d := plan.Annotations.DesiredTGUpdates[s.TaskGroup]
		if d == nil || d.DestructiveUpdate+d.Canary == 0 || s.DesiredStatus != nomadapi.AllocDesiredStatusRun ||
			s.ClientStatus != nomadapi.AllocClientStatusRunning {
			continue
		}
		indexes[s.TaskGroup] = append(indexes[s.TaskGroup], allocIndex(s.Name))
	}
	ws, err := u.writers(ctx, cur, indexes)
	if err != nil || len(ws) == 0 {
		return nil, err
	}
	version := deref(cur.Version)
	u.printf("==> Pre-upgrade snapshots of job %q version %d (the restore point of `chainwarden job revert %s -version %d -restore-volumes`)\n",
		id, version, id, version)
	var held []Writer
	for _, w := range ws {
		if w.Holder == nil {
			u.printf("    %s: host volume %q is not held by any chainwarden agent: no snapshot\n", w.Node, w.Source)
			continue
		}
		held = append(held, w)
	}
	if len(held) == 0 {
		return nil, nil
	}
	ops := u.each(ctx, held, func(w Writer) volops.Op {
		return volops.Op{Kind: volops.Snapshot, Node: w.Node, Job: id, JobVersion: version, JobModifyIndex: deref(cur.JobModifyIndex)}
	})
	var failed []string
	done := 0
	for i, op := range ops {
		switch op.State {
		case volops.Done:
			done++
			u.printf("    %s: snapshot %s of volume %s (%s) at height %s started on %s\n", op.Node, op.Snapshot, op.Volume, op.VolumeID, op.Height, op.Agent)
		default:
			failed = append(failed, fmt.Sprintf("%s (volume %s on %s): %s: %s", held[i].Node, held[i].Holder.Volume, held[i].Holder.Agent, op.State, op.Message))
			u.printf("    %s: not snapshotted: %s: %s\n", op.Node, op.State, op.Message)
		}
	}
	if done == 0 && !force {
		return ops, fmt.Errorf("%w: no node of job %q could be snapshotted before the upgrade:\n  %s\nNothing was changed. Make a node pass, or upgrade without a restore point with -force",
			ErrNoRestorePoint, id, strings.Join(failed, "\n  "))
	}
	if done == 0 {
		u.printf("==> Upgrading without a restore point (-force)\n")
	}
	return ops, nil
}

// each runs one operation per writer, in parallel (the writers are on different hosts), in the writers' order.
func (u *Upgrader) each(ctx context.Context, ws []Writer, op func(Writer) volops.Op) []volops.Op {
	out := make([]volops.Op, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := op(w)
			res, err := u.Ops.Do(ctx, o)
			if err != nil {
				res = o
				res.State, res.Message = volops.Failed, err.Error()
			}
			out[i] = res
		}()
	}
	wg.Wait()
	return out
}

// RevertOptions are what `chainwarden job revert` was asked.
type RevertOptions struct {
	Version        *uint64 // the version to go back to; nil: the one before the current
	RestoreVolumes bool    // restore each stateful node's volume from its pre-upgrade snapshot of that version
}

// Revert reverts the job to an earlier version and returns the evaluation to watch. With RestoreVolumes, it first
// checks that every stateful node's agent has the pre-upgrade snapshot of that version (refusing with
// ErrCannotRestore otherwise, nothing changed), stops the job and waits for its allocations to end, has each agent
// replace the node's volume by one restored from its snapshot (the old one is detached and kept), and only then
// reverts the job, which starts the old version on the restored data.
func (u *Upgrader) Revert(ctx context.Context, id string, o RevertOptions) (string, error) {
	cur, err := u.Nomad.Job(ctx, id)
	if err != nil {
		return "", err
	}
	if cur == nil {
		return "", fmt.Errorf("job %q not found", id)
	}
	curVersion := deref(cur.Version)
	target := curVersion - 1
	if o.Version != nil {
		target = *o.Version
	} else if curVersion == 0 {
		return "", fmt.Errorf("job %q has only version 0: there is nothing to revert to", id)
	}
	if target >= curVersion {
		return "", fmt.Errorf("job %q is at version %d: revert goes to an earlier version, not %d", id, curVersion, target)
	}
	versions, err := u.Nomad.Versions(ctx, id)
	if err != nil {
		return "", err
	}
	i := slices.IndexFunc(versions, func(j *nomadapi.Job) bool { return deref(j.Version) == target })
	if i < 0 {
		return "", fmt.Errorf("job %q has no version %d (Nomad keeps the last few versions: nomad job history %s)", id, target, id)
	}
	old := versions[i]
	if !o.RestoreVolumes {
		u.printf("==> Reverting job %q from version %d to %d (volumes as they are)\n", id, curVersion, target)
		return u.Nomad.Revert(ctx, id, target, &curVersion)
	}

	// Every stateful node of the old version, by allocation index.
	indexes := map[string][]int{}
	for _, tg := range old.TaskGroups {
		for i := 0; i < derefInt(tg.Count); i++ {
			indexes[deref(tg.Name)] = append(indexes[deref(tg.Name)], i)
		}
	}
	ws, err := u.writers(ctx, old, indexes)
	if err != nil {
		return "", err
	}
	if len(ws) == 0 {
		return "", fmt.Errorf("%w: job %q version %d writes no host volume", ErrCannotRestore, id, target)
	}
	var problems []string
	for _, w := range ws {
		if w.Holder == nil {
			problems = append(problems, fmt.Sprintf("%s: no chainwarden agent holds its host volume %q", w.Node, w.Source))
		}
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("%w of job %q, nothing was changed:\n  %s", ErrCannotRestore, id, strings.Join(problems, "\n  "))
	}
	u.printf("==> Looking for the pre-upgrade snapshots of job %q version %d\n", id, target)
	plans := u.each(ctx, ws, func(w Writer) volops.Op {
		return volops.Op{Kind: volops.Restore, Node: w.Node, Job: id, JobVersion: target, DryRun: true}
	})
	for i, p := range plans {
		if p.State != volops.Done {
			problems = append(problems, fmt.Sprintf("%s (volume %s on %s): %s", ws[i].Node, ws[i].Holder.Volume, ws[i].Holder.Agent, p.Message))
			continue
		}
		u.printf("    %s: snapshot %s (height %s) of volume %s on %s\n", p.Node, p.Snapshot, p.Height, p.Volume, p.Agent)
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("%w of job %q, nothing was changed:\n  %s", ErrCannotRestore, id, strings.Join(problems, "\n  "))
	}

	u.printf("==> Stopping job %q to swap its volumes\n", id)
	if _, err := u.Nomad.Stop(ctx, id); err != nil {
		return "", err
	}
	if err := u.waitStopped(ctx, id); err != nil {
		return "", fmt.Errorf("%w; the job is stopped: `chainwarden job revert %s -version %d -restore-volumes` goes on from here", err, id, target)
	}
	u.printf("==> Restoring the volumes\n")
	results := u.each(ctx, ws, func(w Writer) volops.Op {
		return volops.Op{Kind: volops.Restore, Node: w.Node, Job: id, JobVersion: target}
	})
	for i, r := range results {
		if r.State != volops.Done {
			problems = append(problems, fmt.Sprintf("%s (volume %s on %s): %s: %s", ws[i].Node, ws[i].Holder.Volume, ws[i].Holder.Agent, r.State, r.Message))
			continue
		}
		u.printf("    %s: %s\n", r.Node, r.Message)
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("restoring the volumes of job %q failed; the job is stopped:\n  %s\n"+
			"When it is fixed, `chainwarden job revert %s -version %d -restore-volumes` goes on (volumes already restored are kept), "+
			"or `chainwarden job revert %s -version %d` starts version %d on the volumes as they are",
			id, strings.Join(problems, "\n  "), id, target, id, target, target)
	}
	u.printf("==> Reverting job %q to version %d on the restored volumes\n", id, target)
	return u.Nomad.Revert(ctx, id, target, nil)
}

// waitStopped waits until every allocation of the job has ended.
func (u *Upgrader) waitStopped(ctx context.Context, id string) error {
	timeout := u.StopTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var index uint64
	for {
		stubs, next, err := u.Nomad.Allocations(ctx, id, index)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("the allocations of job %q did not stop within %s", id, timeout)
			}
			return err
		}
		var running []string
		for _, s := range stubs {
			switch s.ClientStatus {
			case nomadapi.AllocClientStatusComplete, nomadapi.AllocClientStatusFailed, nomadapi.AllocClientStatusLost:
			default:
				running = append(running, s.Name+" "+s.ClientStatus)
			}
		}
		if len(running) == 0 {
			return nil
		}
		index = next
	}
}

func allocIndex(name string) int {
	i := strings.LastIndex(name, "[")
	var n int
	if i < 0 || !strings.HasSuffix(name, "]") {
		return 0
	}
	if _, err := fmt.Sscanf(name[i+1:len(name)-1], "%d", &n); err != nil {
		return 0
	}
	return n
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func derefInt(p *int) int { return deref(p) }
