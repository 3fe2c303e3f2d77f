package volops

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

// Handler does an operation on a volume this agent holds and returns it with its outcome: State Done, Refused or
// Failed, a Message saying why, and what it made (snapshot, volumes).
type Handler interface {
	Handle(ctx context.Context, op Op) Op
}

// Worker is the agent's side: it says which nodes' volumes it holds and does the operations asked on them.
type Worker struct {
	KV      KV
	Txn     Txn
	Layout  kvlayout.Layout
	AgentID string
	Holders []Holder // the volumes this agent holds, one per node
	Handler Handler
	Log     hclog.Logger
	Clock   clock.Clock // nil: the wall clock
}

func (w *Worker) defaults() {
	if w.Log == nil {
		w.Log = hclog.NewNullLogger()
	}
	w.Clock = clock.OrReal(w.Clock)
}

// Run says which volumes it holds and does the operations asked until ctx ends, retrying Consul with backoff.
func (w *Worker) Run(ctx context.Context) {
	w.defaults()
	b := backoff.New(time.Second, time.Minute)
	registered := false
	var index uint64
	for ctx.Err() == nil {
		var err error
		if !registered {
			err = w.Register(ctx)
			registered = err == nil
		}
		if err == nil {
			index, err = w.Once(ctx, index)
		}
		if err == nil {
			b.Reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		wait := b.Next()
		w.Log.Warn("volume operations: consul failed", "error", err, "retry_in", wait)
		if clock.Sleep(ctx, w.Clock, wait) != nil {
			return
		}
	}
}

// Register writes this agent's holders and fails what it left running when it stopped (it cannot tell how far an
// operation got: the requester reads the message and tries again).
func (w *Worker) Register(ctx context.Context) error {
	w.defaults()
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	now := w.Clock.Now().UTC()
	var ops consulapi.TxnOps
	for _, h := range w.Holders {
		h.Agent, h.Updated = w.AgentID, now
		b, err := json.Marshal(h)
		if err != nil {
			return err
		}
		ops = append(ops, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: w.Layout.VolumeHolder(h.Node), Value: b}})
	}
	if len(ops) > 0 {
		ok, resp, _, err := w.Txn.Txn(ops, q)
		if err != nil {
			return fmt.Errorf("register volume holders: %w", err)
		}
		if !ok {
			return fmt.Errorf("register volume holders: %v", resp.Errors)
		}
	}
	pairs, _, err := w.KV.List(w.Layout.VolumeOps(), q)
	if err != nil {
		return fmt.Errorf("list volume operations: %w", err)
	}
	for _, p := range pairs {
		op, err := decode(p)
		if err != nil || op.State != Running || op.Agent != w.AgentID {
			continue
		}
		op.State, op.Message, op.Updated = Failed, "the agent restarted while it ran; look at the volume and ask again", now
		if _, err := cas(w.Txn, p.Key, op, p.ModifyIndex, q); err != nil {
			return err
		}
		w.Log.Warn("volume operation interrupted by a restart: marked failed", "node", op.Node, "kind", op.Kind, "id", op.ID)
	}
	return nil
}

// Once waits (blocking query) for the operations to change past index, and does those asked of this agent's
// volumes, one after the other. It returns the index to wait on next.
func (w *Worker) Once(ctx context.Context, index uint64) (uint64, error) {
	w.defaults()
	pairs, meta, err := w.KV.List(w.Layout.VolumeOps(), (&consulapi.QueryOptions{WaitIndex: index, WaitTime: 5 * time.Minute}).WithContext(ctx))
	if err != nil {
		return index, fmt.Errorf("list volume operations: %w", err)
	}
	next := meta.LastIndex
	if next < index {
		next = 0 // the index went backwards (a Consul restore): start over
	}
	held := map[string]bool{}
	for _, h := range w.Holders {
		held[h.Node] = true
	}
	for _, p := range pairs {
		op, err := decode(p)
		if err != nil {
			w.Log.Warn("unreadable volume operation", "key", p.Key, "error", err)
			continue
		}
		if op.State != Requested || !held[op.Node] || p.Key != w.Layout.VolumeOp(op.Node) {
			continue
		}
		w.do(ctx, p, op)
	}
	return next, nil
}

func (w *Worker) do(ctx context.Context, p *consulapi.KVPair, op Op) {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	op.State, op.Agent, op.Updated = Running, w.AgentID, w.Clock.Now().UTC()
	ok, err := cas(w.Txn, p.Key, op, p.ModifyIndex, q)
	if err != nil || !ok {
		w.Log.Debug("volume operation taken by someone else or withdrawn", "node", op.Node, "id", op.ID, "error", err)
		return
	}
	got, _, err := w.KV.Get(p.Key, q)
	if err != nil || got == nil {
		w.Log.Warn("volume operation claimed but unreadable", "node", op.Node, "error", err)
		return
	}
	claimed := got.ModifyIndex
	log := w.Log.With("node", op.Node, "kind", op.Kind, "id", op.ID, "job", op.Job, "job_version", op.JobVersion)
	log.Info("volume operation started", "requested_by", op.RequestedBy, "dry_run", op.DryRun)
	started := w.Clock.Now()
	res := w.Handler.Handle(ctx, op)
	res.ID, res.Node, res.Kind, res.Agent, res.Updated = op.ID, op.Node, op.Kind, w.AgentID, w.Clock.Now().UTC()
	if !res.Terminal() {
		res.State = Failed
	}
	// Answer even when ctx ended: the requester is waiting.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if ok, err := cas(w.Txn, p.Key, res, claimed, (&consulapi.QueryOptions{}).WithContext(actx)); err != nil || !ok {
		log.Error("could not write the outcome of a volume operation", "state", res.State, "error", err)
		return
	}
	log.Info("volume operation ended", "state", res.State, "snapshot", res.Snapshot, "volume_id", res.VolumeID,
		"message", res.Message, "took", w.Clock.Now().Sub(started).Round(time.Millisecond))
}
