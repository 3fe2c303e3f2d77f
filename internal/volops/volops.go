// Package volops carries operations on a chain node's EBS volume — a snapshot before an upgrade, a restore on a
// revert — from `chainwarden job` (which may run anywhere Nomad and Consul are reachable) to the agent on the host
// that holds the volume, which alone can drain, freeze, unmount and attach it. Both sides only talk to Consul KV:
// each agent says which nodes' volumes it holds (PREFIX/volumes/NODE); an operation is one key per node
// (PREFIX/volume-ops/NODE) written with check-and-set by the requester, claimed and answered, again with
// check-and-set, by the holding agent, and followed with blocking queries.
package volops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

// Kinds of operations.
const (
	Snapshot = "snapshot" // snapshot the node's volume (Consul-gated, drained, frozen), tagged with the job version
	Restore  = "restore"  // replace the node's volume by one restored from the pre-upgrade snapshot of a job version
)

// States of an operation.
const (
	Requested = "requested" // written by the requester, not yet taken
	Running   = "running"   // claimed by the holding agent
	Done      = "done"
	Refused   = "refused" // not done, on purpose (the node is not passing, no such snapshot); nothing changed
	Failed    = "failed"
)

// Op is one operation on a node's volume, as it sits in KV.
type Op struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	Node string `json:"node"`
	// The job version the snapshot is the pre-upgrade point of (snapshot), or whose pre-upgrade snapshot to
	// restore (restore).
	Job            string `json:"job"`
	JobVersion     uint64 `json:"job_version"`
	JobModifyIndex uint64 `json:"job_modify_index,omitempty"`
	// DryRun: a restore only says which snapshot it would restore from.
	DryRun      bool      `json:"dry_run,omitempty"`
	RequestedBy string    `json:"requested_by,omitempty"`
	Requested   time.Time `json:"requested_at"`

	State string `json:"state"`
	// Set by the agent that does it.
	Agent       string    `json:"agent,omitempty"`
	Volume      string    `json:"volume,omitempty"`
	VolumeID    string    `json:"volume_id,omitempty"`     // the volume snapshotted, or the restored one
	OldVolumeID string    `json:"old_volume_id,omitempty"` // restore: the volume replaced (detached, kept)
	Snapshot    string    `json:"snapshot,omitempty"`
	Height      string    `json:"height,omitempty"`
	Message     string    `json:"message,omitempty"`
	Updated     time.Time `json:"updated_at"`
}

// Terminal reports whether the operation has ended.
func (o Op) Terminal() bool { return o.State == Done || o.State == Refused || o.State == Failed }

// Holder says which agent holds a node's volume.
type Holder struct {
	Node       string    `json:"node"`
	Volume     string    `json:"volume"`
	Agent      string    `json:"agent"`
	InstanceID string    `json:"instance_id,omitempty"`
	AZ         string    `json:"availability_zone,omitempty"`
	Updated    time.Time `json:"updated_at"`
}

// KV is the part of Consul's KV API used; *consulapi.KV satisfies it.
type KV interface {
	Get(key string, q *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error)
	List(prefix string, q *consulapi.QueryOptions) (consulapi.KVPairs, *consulapi.QueryMeta, error)
}

// Txn is Consul's transaction API, for check-and-set writes; *consulapi.Txn satisfies it.
type Txn interface {
	Txn(ops consulapi.TxnOps, q *consulapi.QueryOptions) (bool, *consulapi.TxnResponse, *consulapi.QueryMeta, error)
}

// Errors of a requester.
var (
	ErrBusy    = errors.New("another operation on the volume is in progress")
	ErrNoAgent = errors.New("no agent took the operation")
	ErrLost    = errors.New("the operation was replaced or removed before it ended")
)

// cas writes v at key if its modify index is still index (0: the key must not exist); ok is false when it was not.
func cas(txn Txn, key string, v any, index uint64, q *consulapi.QueryOptions) (bool, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	ok, resp, _, err := txn.Txn(consulapi.TxnOps{{KV: &consulapi.KVTxnOp{Verb: consulapi.KVCAS, Key: key, Value: b, Index: index}}}, q)
	if err != nil {
		return false, fmt.Errorf("consul kv %s: %w", key, err)
	}
	if !ok && resp != nil && len(resp.Errors) > 0 && !isStale(resp) {
		return false, fmt.Errorf("consul kv %s: %s", key, resp.Errors[0].What)
	}
	return ok, nil
}

func isStale(resp *consulapi.TxnResponse) bool {
	for _, e := range resp.Errors {
		if e != nil && strings.Contains(e.What, "index is stale") {
			return true
		}
	}
	return false
}

func decode(p *consulapi.KVPair) (Op, error) {
	var o Op
	if err := json.Unmarshal(p.Value, &o); err != nil {
		return o, fmt.Errorf("volume operation %s: %w", p.Key, err)
	}
	return o, nil
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Client asks for operations and waits for their outcome.
type Client struct {
	KV     KV
	Txn    Txn
	Layout kvlayout.Layout
	Clock  clock.Clock // stamps; nil is the wall clock
	// Accept is how long an agent has to take an operation (default 30s); Timeout bounds the whole of it
	// (default 1h: a restore waits for a snapshot to complete and a volume to be created).
	Accept, Timeout time.Duration
	// Who is the requester, written into the operation for people reading KV (e.g. "chainwarden job run on host-x").
	Who string
	// Progress, when set, is told of every state the operation goes through.
	Progress func(Op)
}

// Holder reads which agent holds the node's volume; ok is false when no agent does.
func (c *Client) Holder(ctx context.Context, node string) (Holder, bool, error) {
	p, _, err := c.KV.Get(c.Layout.VolumeHolder(node), (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Holder{}, false, fmt.Errorf("read the holder of %s's volume from Consul: %w", node, err)
	}
	if p == nil {
		return Holder{}, false, nil
	}
	var h Holder
	if err := json.Unmarshal(p.Value, &h); err != nil {
		return Holder{}, false, fmt.Errorf("holder of %s's volume: %w", node, err)
	}
	return h, true, nil
}

// Do asks for op on its node's volume and waits until it has ended, returning it as the agent left it. It fails with
// ErrBusy while another operation on the volume runs, and with ErrNoAgent (withdrawing the request) when no agent
// takes it within Accept.
func (c *Client) Do(ctx context.Context, op Op) (Op, error) {
	clk := clock.OrReal(c.Clock)
	accept, timeout := c.Accept, c.Timeout
	if accept <= 0 {
		accept = 30 * time.Second
	}
	if timeout <= 0 {
		timeout = time.Hour
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	key := c.Layout.VolumeOp(op.Node)
	op.ID, op.State, op.RequestedBy, op.Requested = newID(), Requested, c.Who, clk.Now().UTC()
	op.Updated = op.Requested
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	prev, _, err := c.KV.Get(key, q)
	if err != nil {
		return op, fmt.Errorf("read %s from Consul: %w", key, err)
	}
	var index uint64
	if prev != nil {
		index = prev.ModifyIndex
		if old, err := decode(prev); err == nil && !old.Terminal() && !c.stale(old, clk.Now(), accept, timeout) {
			return op, fmt.Errorf("%w: %s %s on %s's volume is %s since %s (by %s)", ErrBusy, old.Kind, old.ID,
				old.Node, old.State, old.Updated.Format(time.RFC3339), orUnknown(old.Agent, old.RequestedBy))
		}
	}
	ok, err := cas(c.Txn, key, op, index, q)
	if err != nil {
		return op, err
	}
	if !ok {
		return op, fmt.Errorf("%w: %s changed while asking", ErrBusy, key)
	}
	c.progress(op)
	acceptBy := time.Now().Add(accept)
	var wait uint64
	for {
		wctx, wcancel := context.WithDeadline(ctx, acceptBy)
		if op.State != Requested {
			wctx, wcancel = context.WithCancel(ctx)
		}
		pairs, meta, err := c.KV.List(key, (&consulapi.QueryOptions{WaitIndex: wait, WaitTime: 10 * time.Second}).WithContext(wctx))
		wcancel()
		switch {
		case ctx.Err() != nil:
			return op, fmt.Errorf("waiting for the %s of %s's volume: %w", op.Kind, op.Node, ctx.Err())
		case err != nil && wctx.Err() == nil:
			return op, fmt.Errorf("read %s from Consul: %w", key, err)
		case err == nil:
			wait = meta.LastIndex
			var cur *consulapi.KVPair
			for _, p := range pairs {
				if p.Key == key {
					cur = p
				}
			}
			if cur == nil {
				return op, fmt.Errorf("%w (%s is gone)", ErrLost, key)
			}
			got, err := decode(cur)
			if err != nil {
				return op, err
			}
			if got.ID != op.ID {
				return op, fmt.Errorf("%w (%s is now operation %s)", ErrLost, key, got.ID)
			}
			if got.State != op.State {
				c.progress(got)
			}
			op, index = got, cur.ModifyIndex
			if op.Terminal() {
				return op, nil
			}
		}
		if op.State == Requested && !time.Now().Before(acceptBy) {
			// Withdraw it, unless an agent took it in the meantime.
			withdrawn := op
			withdrawn.State, withdrawn.Message, withdrawn.Updated = Failed, "no agent took it within "+accept.String(), clk.Now().UTC()
			if ok, err := cas(c.Txn, key, withdrawn, index, q); err == nil && ok {
				return withdrawn, fmt.Errorf("%w: nobody took the %s of %s's volume within %s (is the chainwarden agent on its host running, with the volume in its configuration and AWS reachable?)",
					ErrNoAgent, op.Kind, op.Node, accept)
			}
			acceptBy = time.Now().Add(timeout) // taken meanwhile: wait for it
		}
	}
}

// stale says an unfinished operation was abandoned: never taken within accept, or not ended within timeout.
func (c *Client) stale(o Op, now time.Time, accept, timeout time.Duration) bool {
	if o.State == Requested {
		return now.Sub(o.Updated) > accept
	}
	return now.Sub(o.Updated) > timeout
}

func (c *Client) progress(o Op) {
	if c.Progress != nil {
		c.Progress(o)
	}
}

func orUnknown(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return "unknown"
}
