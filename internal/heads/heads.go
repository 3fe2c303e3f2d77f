// Package heads shares chain heads between agents through Consul KV, at a cost per host that stays flat as the fleet
// grows: per service (network), at most W nodes publish their head (bounded publishers, see publishers.go), each
// key held by the publishing agent's Consul session so that it disappears with the host, and each agent watches
// only the service prefixes of its own networks (WatchServices), one blocking query each. Writes carry many keys in
// one transaction and happen only when a height changes.
//
// Watch and WatchOnce read the whole prefix and SetPublishers left unset lets every node publish: the design before
// bounded publishers, kept for readers of every head and as the benchmark's baseline.
package heads

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/probe"
)

// Head is one node's head as stored in KV at PREFIX/heads/SERVICE/NODE. The value is JSON; fields were only ever
// added (hash, parent_hash, finalized), so values of older agents still read, with the new fields zero, and older
// agents ignore the new fields.
type Head struct {
	Service   string    `json:"-"`
	Node      string    `json:"-"`
	Height    uint64    `json:"height"`
	Peers     uint64    `json:"peers"`
	BlockTime time.Time `json:"block_time,omitzero"`
	Observed  time.Time `json:"observed"` // when this height was first seen
	Agent     string    `json:"agent"`
	// Hash is the hash of the block at Height and ParentHash its parent's (zero: unknown): how agents compare the
	// branches their nodes are on.
	Hash       probe.Hash `json:"hash,omitzero"`
	ParentHash probe.Hash `json:"parent_hash,omitzero"`
	Finalized  uint64     `json:"finalized,omitempty"` // the node's finalized block; 0: none
	// Status is the node's own damped verdict (passing, warning). With bounded publishers it decides whether the
	// node may hold a publisher slot: "" or any other status and it does not publish.
	Status string `json:"status,omitempty"`
	// Session is the Consul session holding the key ("" for a key written without one, by an older agent).
	Session string `json:"-"`
}

// KV is the part of Consul's API the store uses.
type KV interface {
	List(prefix string, q *consulapi.QueryOptions) (consulapi.KVPairs, *consulapi.QueryMeta, error)
}

// Txn is Consul's transaction endpoint.
type Txn interface {
	Txn(txn consulapi.TxnOps, q *consulapi.QueryOptions) (bool, *consulapi.TxnResponse, *consulapi.QueryMeta, error)
}

// maxTxnOps is Consul's limit of operations in one transaction.
const maxTxnOps = 64

// Store publishes this agent's heads and keeps the latest view of everyone's.
type Store struct {
	kv     KV
	txn    Txn
	layout kvlayout.Layout
	prefix string // layout.Heads(), e.g. "chainwarden/heads/"
	log    hclog.Logger
	clock  clock.Clock

	mu        sync.Mutex
	all       map[string]map[string]Head // service -> node -> head, from the watch
	published map[string]Head            // service/node -> last written
	flagged   map[string]Flag            // KV key -> flag last written by this agent
	flagsRead bool                       // this agent's flags left in KV by an earlier run were cleared
	index     uint64

	// Bounded publishers (publishers.go); pub.Max == 0: every node publishes, without a session.
	pub      Publishers
	session  string               // this agent's session ("" : none yet)
	holding  map[string]bool      // keys this agent holds with session
	claimAt  map[string]time.Time // key -> when its node claims a free slot (ClaimWindow)
	reclaim  map[string]bool      // keys held until the session was lost: claimed again without waiting
	writeAvg time.Duration        // moving average of a KV write's round trip (claimWindow)
	// Per-service watches (WatchServices).
	want     map[string]bool   // services to watch
	indexes  map[string]uint64 // service -> blocking query index
	wantKick chan struct{}
	listed   map[string]bool // services read at least once since watched
}

// New returns a store of the heads in layout; a nil clock is the wall clock.
func New(kv KV, txn Txn, layout kvlayout.Layout, log hclog.Logger, clk clock.Clock) *Store {
	return &Store{kv: kv, txn: txn, layout: layout, prefix: layout.Heads(), log: log, clock: clock.OrReal(clk),
		all: map[string]map[string]Head{}, published: map[string]Head{}, flagged: map[string]Flag{},
		holding: map[string]bool{}, claimAt: map[string]time.Time{}, reclaim: map[string]bool{}, want: map[string]bool{}, indexes: map[string]uint64{}, wantKick: make(chan struct{}, 1),
		listed: map[string]bool{}}
}

// Publish writes the heads whose height, hash or finalized block changed since they were last written, and deletes the keys of gone, a list
// of "service/node" names no longer watched by this agent. It returns how many keys it wrote.
func (s *Store) Publish(ctx context.Context, heads []Head, gone []string) (int, error) {
	if s.pub.Max > 0 {
		return s.publishBounded(ctx, heads, gone)
	}
	var ops consulapi.TxnOps
	var written []Head
	s.mu.Lock()
	for _, h := range heads {
		k := h.Service + "/" + h.Node
		if last, ok := s.published[k]; ok && same(last, h) {
			continue
		}
		b, err := json.Marshal(h)
		if err != nil {
			s.mu.Unlock()
			return 0, fmt.Errorf("encode head: %w", err)
		}
		ops = append(ops, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: s.layout.Head(h.Service, h.Node), Value: b}})
		written = append(written, h)
	}
	for _, k := range gone {
		ops = append(ops, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: s.prefix + k}})
	}
	s.mu.Unlock()
	if err := s.apply(ctx, ops); err != nil {
		return 0, fmt.Errorf("heads: %w", err)
	}
	s.mu.Lock()
	for _, h := range written {
		s.published[h.Service+"/"+h.Node] = h
	}
	for _, k := range gone {
		delete(s.published, k)
	}
	s.mu.Unlock()
	return len(written), nil
}

// apply runs ops in transactions of at most maxTxnOps.
func (s *Store) apply(ctx context.Context, ops consulapi.TxnOps) error {
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		q := (&consulapi.QueryOptions{}).WithContext(ctx)
		start := s.clock.Now()
		ok, resp, _, err := s.txn.Txn(ops[:n], q)
		s.wrote(s.clock.Now().Sub(start))
		if err != nil {
			return fmt.Errorf("write to consul kv: %w", err)
		}
		if !ok {
			var msgs []string
			for _, e := range resp.Errors {
				msgs = append(msgs, e.What)
			}
			return fmt.Errorf("write to consul kv: transaction rolled back: %s", strings.Join(msgs, "; "))
		}
		ops = ops[n:]
	}
	return nil
}

// same says whether b would write what a wrote.
func same(a, b Head) bool {
	return a.Height == b.Height && a.Hash == b.Hash && a.Finalized == b.Finalized && a.Status == b.Status
}

// Forget makes the next Publish and PublishFlags write everything again (after Consul lost its state); with bounded
// publishers, the next Publish makes a new session and claims slots again.
func (s *Store) Forget() {
	s.mu.Lock()
	s.published = map[string]Head{}
	s.flagged = map[string]Flag{}
	s.session = ""
	s.lostHolding()
	s.mu.Unlock()
}

// All returns every head of service in the latest view.
func (s *Store) All(service string) []Head {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Head, 0, len(s.all[service]))
	for _, h := range s.all[service] {
		out = append(out, h)
	}
	return out
}

// Watch keeps the view current with blocking queries until ctx ends, backing off (capped) while Consul fails.
func (s *Store) Watch(ctx context.Context, wait time.Duration) {
	bo := backoff.New(250*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		err := s.WatchOnce(ctx, wait)
		if err == nil {
			bo.Reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		d := bo.Next()
		s.log.Debug("watch heads failed", "error", err, "retry_in", d)
		_ = clock.Sleep(ctx, s.clock, d)
	}
}

// WatchOnce makes one (blocking, when it has an index) read of the prefix and updates the view.
func (s *Store) WatchOnce(ctx context.Context, wait time.Duration) error {
	s.mu.Lock()
	idx := s.index
	s.mu.Unlock()
	q := (&consulapi.QueryOptions{WaitIndex: idx, WaitTime: wait}).WithContext(ctx)
	pairs, meta, err := s.kv.List(s.prefix, q)
	if err != nil {
		return fmt.Errorf("read heads from consul kv: %w", err)
	}
	all := Decode(s.prefix, pairs, s.log)
	s.mu.Lock()
	// The index going backwards means Consul's state was reset: start over (Consul's blocking-query rules).
	if meta.LastIndex < s.index {
		s.index = 0
	} else {
		s.index = meta.LastIndex
	}
	s.all = all
	s.mu.Unlock()
	return nil
}

// ErrBadKey marks a KV key that is not PREFIX/SERVICE/NODE.
var ErrBadKey = errors.New("unexpected key under the heads prefix")

// Decode turns KV pairs under prefix into service -> node -> head, skipping (and logging) entries it can't read.
func Decode(prefix string, pairs consulapi.KVPairs, log hclog.Logger) map[string]map[string]Head {
	all := map[string]map[string]Head{}
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, prefix)
		service, node, ok := strings.Cut(rest, "/")
		if !ok || service == "" || node == "" || strings.Contains(node, "/") {
			if log != nil {
				log.Warn("skipping head", "key", p.Key, "error", ErrBadKey)
			}
			continue
		}
		var h Head
		if err := json.Unmarshal(p.Value, &h); err != nil {
			if log != nil {
				log.Warn("skipping head", "key", p.Key, "error", err)
			}
			continue
		}
		h.Service, h.Node, h.Session = service, node, p.Session
		if all[service] == nil {
			all[service] = map[string]Head{}
		}
		all[service][node] = h
	}
	return all
}
