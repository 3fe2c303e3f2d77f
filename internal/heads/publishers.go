package heads

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/clock"
)

// Bounded publishers. Per service at most Max nodes publish their head, each under PREFIX/heads/SERVICE/NODE held
// by its agent's Consul session (behavior delete, tied to the node's serfHealth check): when a host dies or is
// partitioned away, Consul invalidates the session and deletes its keys, and the slot is free with no agent acting.
//
//   - A node claims a slot (a KV lock op) only when its own verdict is passing and fewer than Max fresh held keys of
//     the service are passing; a warning node claims only when fewer than Max fresh held keys exist at all (so a
//     network of lagging nodes still shares heads). A node neither passing nor warning (or flagged by the head rule:
//     the agent gives it no status) does not claim, and gives its slot up (deletes its key).
//   - Over-claiming (agents that claimed at the same moment) converges: a holder whose key is not among the first Max
//     of the fresh held keys ordered by (passing before warning, node name) gives its slot up.
//   - Fresh: observed within MaxAge. A key written without a session (an older agent) counts as a head while fresh
//     but holds no slot.
//
// Non-publishers write nothing per block.

// Sessions are the Consul session calls the publishers make: (*consulapi.Client).Session().
type Sessions interface {
	Create(se *consulapi.SessionEntry, q *consulapi.WriteOptions) (string, *consulapi.WriteMeta, error)
	Destroy(id string, q *consulapi.WriteOptions) (*consulapi.WriteMeta, error)
}

// Publishers bounds the nodes publishing heads per service.
type Publishers struct {
	Max      int      // W: publishers per service (>= 2)
	Sessions Sessions // required
	Agent    string   // this agent's ID (the Agent field of its heads)
	// FormerAgents are IDs this agent ran under before (the hostname, before the ID became the Consul node name):
	// heads written under them are its own too, so it lets an earlier run's session go instead of deferring to it.
	FormerAgents []string
	MaxAge       time.Duration // heads older than this hold no slot
	// ClaimWindow spreads the claims of a free slot (0: claim at once). A node that could claim waits a delay drawn
	// from a truncated exponential distribution over the window (most near its end, a few early), and claims at its
	// first pass after it if the slot is still free: the first claims reach every agent's watch before the others
	// are due, so a vacancy draws a few claims (about 3 to 6 for 10 to 3,000 candidates with a 10 s window and a 1 s
	// pass), not one per node of the network. See claimDelay.
	ClaimWindow time.Duration
}

// DefaultClaimWindow is the agent's ClaimWindow.
const DefaultClaimWindow = 10 * time.Second

// claimWindowPerWrite is how many KV write round trips the claim window spans at least: suppression needs a claim
// to reach the other agents well within the window, and an overloaded Consul (writes taking seconds) stretches it.
const claimWindowPerWrite = 20

// wrote records a KV write's round trip.
func (s *Store) wrote(d time.Duration) {
	s.mu.Lock()
	s.writeAvg += (d - s.writeAvg) / 8
	s.mu.Unlock()
}

// claimWindow is ClaimWindow, stretched to claimWindowPerWrite write round trips when Consul is slow; s.mu must be
// held.
func (s *Store) claimWindow() time.Duration {
	return max(s.pub.ClaimWindow, claimWindowPerWrite*s.writeAvg)
}

// claimLambda shapes claimDelay's distribution: the larger, the more delays sit near the window's end.
const claimLambda = 8

// claimDelay draws a claim delay in [0, window) from the truncated exponential distribution of SRM-style feedback
// suppression (density ∝ e^(λt/window)): with N candidates the earliest is due after about window·ln(1+(e^λ−1)/N)/λ,
// and few others fall within the time its claim takes to reach them, whatever N is.
func claimDelay(window time.Duration) time.Duration {
	u := rand.Float64()
	return time.Duration(float64(window) / claimLambda * math.Log(1+u*(math.Exp(claimLambda)-1)))
}

// DefaultPublishers is head_publishers' default.
const DefaultPublishers = 5

// Status values that may claim a slot, best first.
const (
	StatusPassing = "passing"
	StatusWarning = "warning"
)

func rank(status string) int {
	switch status {
	case StatusPassing:
		return 2
	case StatusWarning:
		return 1
	}
	return 0
}

// SetPublishers bounds the publishers per service (call before the first Publish).
func (s *Store) SetPublishers(p Publishers) {
	s.mu.Lock()
	s.pub = p
	s.mu.Unlock()
}

// sessionInvalid says whether a transaction failed because its session is gone (destroyed, invalidated, or the
// Consul agent lost its state).
func sessionInvalid(err string) bool {
	return strings.Contains(err, "invalid session") || strings.Contains(err, "missing session")
}

// ensureSession makes this agent's session when it has none.
func (s *Store) ensureSession(ctx context.Context) (string, error) {
	s.mu.Lock()
	id := s.session
	s.mu.Unlock()
	if id != "" {
		return id, nil
	}
	// No TTL: the session lives as long as the node's serfHealth check passes (Consul's default checks).
	id, _, err := s.pub.Sessions.Create(&consulapi.SessionEntry{Name: "chainwarden heads " + s.pub.Agent,
		Behavior: consulapi.SessionBehaviorDelete, LockDelay: time.Millisecond}, (&consulapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("create consul session: %w", err)
	}
	s.mu.Lock()
	s.session = id
	s.holding = map[string]bool{}
	s.mu.Unlock()
	s.log.Debug("session created", "session", id)
	return id, nil
}

// Close destroys this agent's session: Consul deletes the keys it held at once, freeing their slots.
func (s *Store) Close(ctx context.Context) error {
	s.mu.Lock()
	id := s.session
	s.session, s.holding, s.published = "", map[string]bool{}, map[string]Head{}
	s.mu.Unlock()
	if id == "" || s.pub.Sessions == nil {
		return nil
	}
	if _, err := s.pub.Sessions.Destroy(id, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("destroy consul session: %w", err)
	}
	return nil
}

// Holding lists the keys this agent holds a publisher slot with, sorted.
func (s *Store) Holding() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.holding))
	for k, ok := range s.holding {
		if ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

type slot struct {
	node string
	rank int
}

// mine says whether heads written by agent are this agent's: its ID, or one it ran under before.
func (s *Store) mine(agent string) bool {
	return agent == s.pub.Agent || slices.Contains(s.pub.FormerAgents, agent)
}

// publishBounded is Publish with bounded publishers: see the comment at the top of this file.
func (s *Store) publishBounded(ctx context.Context, heads []Head, gone []string) (int, error) {
	session, err := s.ensureSession(ctx)
	if err != nil {
		return 0, fmt.Errorf("heads: %w", err)
	}
	// A service this agent has not read yet (its watch just started) is read once first: a node never claims
	// blind, which at a fleet's cold start would be every node at once.
	for _, svc := range s.unread(heads) {
		if err := s.WatchServiceOnce(ctx, svc, 0); err != nil {
			return 0, fmt.Errorf("heads: %w", err)
		}
	}
	now := s.clock.Now()
	heads = slices.Clone(heads)
	slices.SortFunc(heads, func(a, b Head) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Node, b.Node))
	})
	var updates, claims, releases consulapi.TxnOps
	var written []Head
	var released []string
	var destroy []string // sessions of an earlier run of this agent still holding its keys
	s.mu.Lock()
	mine := map[string]bool{} // node keys this call decides about
	for _, h := range heads {
		mine[s.layout.Head(h.Service, h.Node)] = true
	}
	// The fresh held slots of each service as this agent sees them: other agents' from the watch, its own from
	// what it holds and claims in this call.
	slots := map[string][]slot{}
	seen := map[string]bool{}
	for _, h := range heads {
		if seen[h.Service] {
			continue
		}
		seen[h.Service] = true
		for _, v := range s.all[h.Service] {
			key := s.layout.Head(v.Service, v.Node)
			if v.Session == "" || v.Session == session || mine[key] || s.holding[key] || now.Sub(v.Observed) > s.pub.MaxAge {
				continue
			}
			slots[h.Service] = append(slots[h.Service], slot{v.Node, rank(v.Status)})
		}
		for _, o := range heads {
			if o.Service == h.Service && s.holding[s.layout.Head(o.Service, o.Node)] && rank(o.Status) > 0 {
				slots[h.Service] = append(slots[h.Service], slot{o.Node, rank(o.Status)})
			}
		}
	}
	for _, h := range heads {
		key := s.layout.Head(h.Service, h.Node)
		r := rank(h.Status)
		held := s.holding[key]
		keep := false
		switch {
		case r == 0:
		case held:
			sl := slices.Clone(slots[h.Service])
			slices.SortFunc(sl, func(a, b slot) int { return cmp.Or(b.rank-a.rank, strings.Compare(a.node, b.node)) })
			i := slices.IndexFunc(sl, func(x slot) bool { return x.node == h.Node })
			keep = i >= 0 && i < s.pub.Max
		default:
			n := 0
			for _, x := range slots[h.Service] {
				if x.rank >= r { // passing claims against passing slots; warning against all
					n++
				}
			}
			if r == 1 {
				n = len(slots[h.Service])
			}
			switch {
			case n >= s.pub.Max || !s.listed[h.Service]: // full, or this agent has not read the service yet
				delete(s.claimAt, key)
			case s.pub.ClaimWindow > 0 && s.claimAt[key].IsZero():
				s.claimAt[key] = now.Add(claimDelay(s.claimWindow()))
			}
			if at, ok := s.claimAt[key]; n < s.pub.Max && s.listed[h.Service] && (s.pub.ClaimWindow <= 0 || s.reclaim[key] || ok && !now.Before(at)) {
				delete(s.claimAt, key)
				delete(s.reclaim, key)
				if cur, ok := s.all[h.Service][h.Node]; ok && cur.Session != "" && cur.Session != session {
					if !s.mine(cur.Agent) {
						continue // another agent's node of the same name holds it
					}
					// An earlier session of this agent (a run before, or one Consul lost): let it go first.
					destroy = append(destroy, cur.Session)
				}
				keep = true
				slots[h.Service] = append(slots[h.Service], slot{h.Node, r})
			}
		}
		if r == 0 {
			delete(s.claimAt, key)
			delete(s.reclaim, key)
		}
		if !keep {
			cur, inView := s.all[h.Service][h.Node]
			if held || (inView && cur.Session == "" && s.mine(cur.Agent)) { // give the slot up; clear our old unheld key
				releases = append(releases, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: key}})
				released = append(released, key)
			}
			continue
		}
		if last, ok := s.published[h.Service+"/"+h.Node]; ok && held && same(last, h) {
			continue
		}
		b, err := json.Marshal(h)
		if err != nil {
			s.mu.Unlock()
			return 0, fmt.Errorf("encode head: %w", err)
		}
		op := &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVLock, Key: key, Value: b, Session: session}}
		if held {
			updates = append(updates, op)
		} else {
			claims = append(claims, op)
		}
		written = append(written, h)
	}
	for _, k := range gone {
		releases = append(releases, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: s.prefix + k}})
		released = append(released, s.prefix+k)
	}
	for k := range s.claimAt {
		if !mine[k] {
			delete(s.claimAt, k) // a node no longer reported
		}
	}
	for k := range s.reclaim {
		if !mine[k] {
			delete(s.reclaim, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.holding)) { // held, but its node reported nothing: give it up
		if !mine[k] && !slices.Contains(released, k) {
			releases = append(releases, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: k}})
			released = append(released, k)
		}
	}
	s.mu.Unlock()

	for _, id := range destroy {
		if _, err := s.pub.Sessions.Destroy(id, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
			s.log.Debug("destroy an earlier session", "session", id, "error", err)
		}
	}
	// Updates and releases in transactions of many keys; each claim alone, so that a key another session took
	// meanwhile fails only its own claim.
	if err := s.applySession(ctx, append(releases, updates...)); err != nil {
		return 0, fmt.Errorf("heads: %w", err)
	}
	s.mu.Lock()
	for _, k := range released {
		delete(s.holding, k)
		delete(s.published, strings.TrimPrefix(k, s.prefix))
	}
	s.mu.Unlock()
	failed := map[string]bool{}
	for _, op := range claims {
		if err := s.applySession(ctx, consulapi.TxnOps{op}); err != nil {
			if s.sessionGone() {
				return 0, fmt.Errorf("heads: %w", err)
			}
			s.log.Debug("claim a publisher slot", "key", op.KV.Key, "error", err)
			failed[op.KV.Key] = true
			continue
		}
		s.mu.Lock()
		s.holding[op.KV.Key] = true
		s.mu.Unlock()
	}
	n := 0
	s.mu.Lock()
	for _, h := range written {
		if failed[s.layout.Head(h.Service, h.Node)] {
			continue
		}
		s.published[h.Service+"/"+h.Node] = h
		n++
	}
	s.mu.Unlock()
	return n, nil
}

// lostHolding forgets the slots held under a session that is gone; their nodes claim again without waiting for the
// claim window (the publishers of a network stay the same across a lost session). s.mu must be held.
func (s *Store) lostHolding() {
	for k, ok := range s.holding {
		if ok {
			s.reclaim[k] = true
		}
	}
	s.holding = map[string]bool{}
}

// unread lists the services of heads not read yet.
func (s *Store) unread(heads []Head) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, h := range heads {
		if !s.listed[h.Service] && !slices.Contains(out, h.Service) {
			out = append(out, h.Service)
		}
	}
	return out
}

// sessionGone says whether the last transaction found this agent's session gone (it then has none).
func (s *Store) sessionGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session == ""
}

// applySession applies ops; when Consul says the session is invalid, it forgets the session and what it held (Consul
// deleted those keys): the next Publish makes a new one and claims again.
func (s *Store) applySession(ctx context.Context, ops consulapi.TxnOps) error {
	err := s.apply(ctx, ops)
	if err != nil && sessionInvalid(err.Error()) {
		s.mu.Lock()
		s.log.Info("session gone, making a new one", "session", s.session, "error", err)
		s.session, s.published = "", map[string]Head{}
		s.lostHolding()
		s.mu.Unlock()
	}
	return err
}

// SetServices sets the services whose heads WatchServices keeps current: one blocking query each, on
// PREFIX/heads/SERVICE/ only.
func (s *Store) SetServices(services []string) {
	s.mu.Lock()
	want := map[string]bool{}
	for _, svc := range services {
		want[svc] = true
	}
	same := len(want) == len(s.want)
	for svc := range want {
		same = same && s.want[svc]
	}
	s.want = want
	s.mu.Unlock()
	if !same {
		select {
		case s.wantKick <- struct{}{}:
		default:
		}
	}
}

// Watched lists the services being watched, sorted.
func (s *Store) Watched() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.want))
	for svc := range s.want {
		out = append(out, svc)
	}
	slices.Sort(out)
	return out
}

// WatchServices keeps the heads of the services SetServices names current until ctx ends: a blocking query per
// service, started and stopped as the services change; each backs off (capped) while Consul fails.
func (s *Store) WatchServices(ctx context.Context, wait time.Duration) {
	running := map[string]context.CancelFunc{}
	defer func() {
		for _, stop := range running {
			stop()
		}
	}()
	for {
		s.mu.Lock()
		want := s.want
		s.mu.Unlock()
		for svc, stop := range running {
			if !want[svc] {
				stop()
				delete(running, svc)
			}
		}
		for svc := range want {
			if running[svc] == nil {
				wctx, stop := context.WithCancel(ctx)
				running[svc] = stop
				go s.watchService(wctx, svc, wait)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wantKick:
		}
	}
}

func (s *Store) watchService(ctx context.Context, svc string, wait time.Duration) {
	defer func() {
		s.mu.Lock()
		if !s.want[svc] {
			delete(s.all, svc)
			delete(s.indexes, svc)
			delete(s.listed, svc)
		}
		s.mu.Unlock()
	}()
	bo := backoff.New(250*time.Millisecond, 10*time.Second)
	for ctx.Err() == nil {
		err := s.WatchServiceOnce(ctx, svc, wait)
		if err == nil {
			bo.Reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		d := bo.Next()
		s.log.Debug("watch heads failed", "service", svc, "error", err, "retry_in", d)
		_ = clock.Sleep(ctx, s.clock, d)
	}
}

// WatchServiceOnce makes one (blocking, when it has an index) read of one service's heads and updates the view.
func (s *Store) WatchServiceOnce(ctx context.Context, svc string, wait time.Duration) error {
	s.mu.Lock()
	idx := s.indexes[svc]
	s.mu.Unlock()
	// Stale: any server answers from its own copy (milliseconds behind the leader at most while it is in contact),
	// so the watchers of a fleet spread over every server instead of all landing on the leader.
	q := (&consulapi.QueryOptions{WaitIndex: idx, WaitTime: wait, AllowStale: true}).WithContext(ctx)
	pairs, meta, err := s.kv.List(s.layout.ServiceHeads(svc), q)
	if err != nil {
		return fmt.Errorf("read heads of %s from consul kv: %w", svc, err)
	}
	all := Decode(s.prefix, pairs, s.log)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil && !s.want[svc] {
		return ctx.Err()
	}
	if meta.LastIndex < idx { // Consul's state was reset: start over
		s.indexes[svc] = 0
	} else {
		s.indexes[svc] = meta.LastIndex
	}
	if all[svc] == nil {
		delete(s.all, svc)
	} else {
		s.all[svc] = all[svc]
	}
	s.listed[svc] = true
	return nil
}
