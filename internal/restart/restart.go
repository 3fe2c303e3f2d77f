// Package restart restarts, through Nomad, the chain nodes that stalled while their network went on: a node critical
// for a while whose height stands still while its network's head moves (hung, or peers lost and not regained).
// It acts within limits: one node per service at a time across all agents (a Consul lock held with a session),
// never when no other node of the service passes, at most MaxPerHour restarts per node, and a backoff that doubles
// with every restart that did not help. The agent calls Pass once per pass with what it judged; Pass decides, asks
// Nomad to restart the task (in the background: Nomad answers only once the old task has exited), and Note says
// what it did in words for the node's check output.
package restart

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// Policy says when a node is restarted and how often. The zero value of a field means its default.
type Policy struct {
	// After is how long a node must be critical, with its height standing still while its network's head moved,
	// before it is restarted.
	After time.Duration
	// MaxPerHour bounds the restarts of one node in any hour.
	MaxPerHour int
	// Backoff is the least time between two restarts of a node; it doubles with every restart after which the
	// node did not pass again, up to MaxBackoff, and starts over once the node passes.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Hold is how long the service's lock is kept after a restart while waiting for the node to pass again; no
	// other node of the service is restarted meanwhile.
	Hold time.Duration
	// LockTTL is the TTL of the Consul session that holds the locks (renewed while held): if the agent dies, the
	// lock goes with it.
	LockTTL time.Duration
	// Recheck paces the Consul reads of a restart that is due but withheld by the lock or the service's health.
	Recheck time.Duration
	// CallTimeout bounds each Consul call; RestartTimeout the Nomad restart call, which returns only once the
	// old task exited (up to its kill_timeout).
	CallTimeout    time.Duration
	RestartTimeout time.Duration
}

// Defaults of Policy.
const (
	DefaultAfter          = 5 * time.Minute
	DefaultMaxPerHour     = 3
	DefaultBackoff        = 10 * time.Minute
	DefaultMaxBackoff     = time.Hour
	DefaultHold           = 15 * time.Minute
	DefaultLockTTL        = 30 * time.Second
	DefaultRecheck        = 10 * time.Second
	DefaultCallTimeout    = 10 * time.Second
	DefaultRestartTimeout = 15 * time.Minute
)

// WithDefaults fills the zero fields with the defaults.
func (p Policy) WithDefaults() Policy {
	set := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	set(&p.After, DefaultAfter)
	set(&p.Backoff, DefaultBackoff)
	set(&p.MaxBackoff, DefaultMaxBackoff)
	set(&p.Hold, DefaultHold)
	set(&p.LockTTL, DefaultLockTTL)
	set(&p.Recheck, DefaultRecheck)
	set(&p.CallTimeout, DefaultCallTimeout)
	set(&p.RestartTimeout, DefaultRestartTimeout)
	if p.MaxPerHour <= 0 {
		p.MaxPerHour = DefaultMaxPerHour
	}
	return p
}

// Nomad is the call the restarter makes of Nomad's API: (*nomadapi.Client).Allocations() has it.
type Nomad interface {
	Restart(alloc *nomadapi.Allocation, taskName string, q *nomadapi.QueryOptions) error
}

// Sessions are the Consul session calls that hold the locks: (*consulapi.Client).Session().
type Sessions interface {
	Create(se *consulapi.SessionEntry, q *consulapi.WriteOptions) (string, *consulapi.WriteMeta, error)
	Renew(id string, q *consulapi.WriteOptions) (*consulapi.SessionEntry, *consulapi.WriteMeta, error)
	Destroy(id string, q *consulapi.WriteOptions) (*consulapi.WriteMeta, error)
}

// KV is the lock on a key: (*consulapi.Client).KV().
type KV interface {
	Get(key string, q *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error)
	Acquire(p *consulapi.KVPair, q *consulapi.WriteOptions) (bool, *consulapi.WriteMeta, error)
	Release(p *consulapi.KVPair, q *consulapi.WriteOptions) (bool, *consulapi.WriteMeta, error)
}

// Health reads the checks of every instance of a service: (*consulapi.Client).Health().
type Health interface {
	Checks(service string, q *consulapi.QueryOptions) (consulapi.HealthChecks, *consulapi.QueryMeta, error)
}

// Consul is what the restarter needs of Consul.
type Consul struct {
	Sessions Sessions
	KV       KV
	Health   Health
}

// ConsulAPI is Consul from a real API client.
func ConsulAPI(c *consulapi.Client) Consul {
	return Consul{Sessions: c.Session(), KV: c.KV(), Health: c.Health()}
}

// Node is what the agent judged of one node in a pass.
type Node struct {
	Name    string
	Service string
	// AllocID and Task name the Nomad task the node runs as; a node without them (a node block of the config
	// file) is never restarted.
	AllocID string
	Task    string
	// Deploying: a Nomad deployment has not found the allocation healthy (it is judging it, or failed it):
	// healthy_deadline and auto_revert decide, a restart would not.
	Deploying bool
	Status    verdict.Status // the damped status
	// Height is the node's height when this pass's probe answered on the right chain (HasHeight).
	Height    uint64
	HasHeight bool
	// Head is the network head of the node's service as the agent knows it.
	Head uint64
}

// Event is something the restarter did, for the agent's metrics.
type Event struct {
	Node, Service string
	// Kind is "restarted" (Nomad restarted the task), "failed" (Nomad refused or the call failed) or "withheld"
	// (a restart is due but a limit holds it; counted once each time the reason changes).
	Kind string
	// Reason says why a restart is withheld: deploying, backoff, limit, lock, no_passing_node, consul.
	Reason string
}

// Withheld reasons.
const (
	ReasonDeploying     = "deploying"
	ReasonBackoff       = "backoff"
	ReasonLimit         = "limit"
	ReasonLock          = "lock"
	ReasonNoPassingNode = "no_passing_node"
	ReasonConsul        = "consul"
)

// Restarter decides and performs the restarts of one agent's nodes.
type Restarter struct {
	p       Policy
	consul  Consul
	nomad   Nomad
	layout  kvlayout.Layout
	agentID string
	log     hclog.Logger

	// Pass's own (one pass at a time).
	nodes    map[string]*nodeState
	services map[string]*serviceState
	session  string
	renewed  time.Time
	held     map[string]*lock // by service

	mu       sync.Mutex // guards finished and notes
	finished []result
	notes    map[string]note
	wg       sync.WaitGroup
}

type nodeState struct {
	service    string
	critSince  time.Time // zero while not critical
	progressAt time.Time // when its height last grew (or it was last restarted)
	height     uint64
	restarts   []time.Time // within the last hour
	last       time.Time   // the last restart
	unhelped   int         // restarts since it last passed
	inFlight   bool
	withheld   string // why a due restart waits (the reason code), "" when none does
	why        string // the same in words
	recheckAt  time.Time
	failed     string // the last restart's error, until the next restart or the node passes
	seen       time.Time
}

type serviceState struct {
	head       uint64
	progressAt time.Time // when the head last grew; zero until it has been seen to grow
}

type lock struct {
	node  string
	since time.Time
}

type result struct {
	node, service string
	err           error
}

// note is a node's part of the check output: out for people, key without the figures that tick.
type note struct{ out, key string }

// New returns a restarter acting for agentID, its locks under layout.
func New(p Policy, consul Consul, nomad Nomad, layout kvlayout.Layout, agentID string, log hclog.Logger) *Restarter {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Restarter{p: p.WithDefaults(), consul: consul, nomad: nomad, layout: layout, agentID: agentID, log: log,
		nodes: map[string]*nodeState{}, services: map[string]*serviceState{}, held: map[string]*lock{},
		notes: map[string]note{}}
}

// Policy is the policy in force, defaults filled in.
func (r *Restarter) Policy() Policy { return r.p }

// Pass takes what the agent judged this pass, restarts the nodes that are due and allowed, and returns what happened.
// Nodes missing from a pass (a task being restarted leaves the agent's set for a moment) keep their state.
func (r *Restarter) Pass(ctx context.Context, now time.Time, nodes []Node) []Event {
	var events []Event
	r.mu.Lock()
	done := r.finished
	r.finished = nil
	r.mu.Unlock()
	for _, res := range done {
		st := r.nodes[res.node]
		if st != nil {
			st.inFlight = false
		}
		if res.err != nil {
			events = append(events, Event{Node: res.node, Service: res.service, Kind: "failed"})
			r.log.Error("restart failed", "node", res.node, "service", res.service, "error", res.err)
			if st != nil {
				st.failed = res.err.Error()
			}
			if l := r.held[res.service]; l != nil && l.node == res.node {
				r.release(ctx, res.service)
			}
			continue
		}
		events = append(events, Event{Node: res.node, Service: res.service, Kind: "restarted"})
		r.log.Info("node restarted by nomad", "node", res.node, "service", res.service)
	}

	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	for _, n := range nodes {
		svc := r.services[n.Service]
		if svc == nil {
			svc = &serviceState{head: n.Head}
			r.services[n.Service] = svc
		} else if n.Head > svc.head {
			svc.head, svc.progressAt = n.Head, now
		}
	}
	for _, n := range nodes {
		st := r.nodes[n.Name]
		if st == nil || st.service != n.Service {
			st = &nodeState{service: n.Service, progressAt: now, height: n.Height}
			r.nodes[n.Name] = st
		}
		st.seen = now
		st.restarts = slices.DeleteFunc(st.restarts, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
		if n.HasHeight && n.Height > st.height {
			st.height, st.progressAt = n.Height, now
		}
		switch n.Status {
		case verdict.Critical:
			if st.critSince.IsZero() {
				st.critSince = now
			}
		case verdict.Passing:
			if st.unhelped > 0 {
				r.log.Info("restarted node passes again", "node", n.Name, "service", n.Service)
			}
			st.unhelped, st.failed = 0, ""
			fallthrough
		default:
			st.critSince = time.Time{}
			st.withheld, st.why = "", ""
		}
	}

	// Locks: let go once the restarted node passes again, or after Hold; keep the session alive meanwhile.
	passing := map[string]bool{}
	for _, n := range nodes {
		passing[n.Name] = n.Status == verdict.Passing
	}
	for _, svc := range sortedKeys(r.held) {
		l := r.held[svc]
		st := r.nodes[l.node]
		switch {
		case st != nil && st.inFlight:
		case passing[l.node]:
			r.log.Info("restart lock released: the node passes again", "service", svc, "node", l.node, "took", now.Sub(l.since))
			r.release(ctx, svc)
		case now.Sub(l.since) >= r.p.Hold:
			r.log.Warn("restart lock released: the node did not pass again within hold", "service", svc, "node", l.node, "hold", r.p.Hold)
			r.release(ctx, svc)
		}
	}
	r.renew(ctx, now)

	for _, n := range nodes {
		st := r.nodes[n.Name]
		if !r.due(n, st, now) {
			st.withheld, st.why = "", ""
			continue
		}
		reason, why := r.decide(ctx, n, st, now)
		if reason == "" {
			r.start(ctx, n, st, now)
			continue
		}
		if reason != st.withheld {
			events = append(events, Event{Node: n.Name, Service: n.Service, Kind: "withheld", Reason: reason})
			r.log.Info("restart due but withheld", "node", n.Name, "service", n.Service, "why", why)
		}
		st.withheld, st.why = reason, why
	}

	for name, st := range r.nodes {
		if now.Sub(st.seen) >= time.Hour && len(st.restarts) == 0 && !st.inFlight {
			delete(r.nodes, name)
		}
	}
	r.setNotes(now)
	return events
}

// due says whether n is a node the restarter would restart now, limits aside: a Nomad task, critical for After,
// its height standing still for After while its network's head moved within After and is above it.
func (r *Restarter) due(n Node, st *nodeState, now time.Time) bool {
	if n.AllocID == "" || st.inFlight || st.critSince.IsZero() {
		return false
	}
	svc := r.services[n.Service]
	return now.Sub(st.critSince) >= r.p.After && now.Sub(st.progressAt) >= r.p.After &&
		!svc.progressAt.IsZero() && now.Sub(svc.progressAt) < r.p.After && svc.head > st.height
}

// decide checks the limits of a due restart, cheapest first, and takes the service's lock when they allow it.
// It returns "" when the restart may go ahead, else the reason it is withheld and the same in words.
func (r *Restarter) decide(ctx context.Context, n Node, st *nodeState, now time.Time) (string, string) {
	if n.Deploying {
		return ReasonDeploying, "its Nomad deployment has not found it healthy (healthy_deadline and auto_revert decide)"
	}
	if st.unhelped > 0 {
		gap := r.p.Backoff << min(st.unhelped-1, 20)
		if gap > r.p.MaxBackoff || gap <= 0 {
			gap = r.p.MaxBackoff
		}
		if now.Sub(st.last) < gap {
			return ReasonBackoff, fmt.Sprintf("backoff %s after %d %s that did not help", roundDuration(gap), st.unhelped, plural(st.unhelped, "restart"))
		}
	}
	if len(st.restarts) >= r.p.MaxPerHour {
		return ReasonLimit, fmt.Sprintf("%d restarts in the last hour (max_per_hour %d)", len(st.restarts), r.p.MaxPerHour)
	}
	l := r.held[n.Service]
	if l != nil && l.node != n.Name {
		return ReasonLock, fmt.Sprintf("%s of %s is being restarted first", l.node, n.Service)
	}
	if st.withheld != "" && now.Before(st.recheckAt) {
		return st.withheld, st.why
	}
	st.recheckAt = now.Add(r.p.Recheck)

	cctx, cancel := context.WithTimeout(ctx, r.p.CallTimeout)
	defer cancel()
	q, w := (&consulapi.QueryOptions{}).WithContext(cctx), (&consulapi.WriteOptions{}).WithContext(cctx)
	key := r.layout.RestartLock(n.Service)
	cur, _, err := r.consul.KV.Get(key, q)
	if err != nil {
		return ReasonConsul, "cannot read the restart lock from Consul: " + err.Error()
	}
	if cur != nil && cur.Session != "" && cur.Session != r.session {
		return ReasonLock, fmt.Sprintf("%s of %s is being restarted first", holder(cur), n.Service)
	}
	checks, _, err := r.consul.Health.Checks(n.Service, q)
	if err != nil {
		return ReasonConsul, "cannot read the health of " + n.Service + " from Consul: " + err.Error()
	}
	others := 0
	for _, c := range checks {
		if c.ServiceID != n.Name && c.Status == consulapi.HealthPassing {
			others++
		}
	}
	if others == 0 {
		return ReasonNoPassingNode, "no other node of " + n.Service + " passes"
	}
	if l != nil { // this node's own lock, still held since its last restart: keep it
		l.since = now
		return "", ""
	}
	if r.session == "" {
		id, _, err := r.consul.Sessions.Create(&consulapi.SessionEntry{
			Name: "chainwarden restart lock (" + r.agentID + ")", TTL: r.p.LockTTL.String(),
			Behavior: consulapi.SessionBehaviorDelete,
		}, w)
		if err != nil {
			return ReasonConsul, "cannot make a Consul session for the restart lock: " + err.Error()
		}
		r.session, r.renewed = id, now
	}
	val, _ := json.Marshal(lockValue{Agent: r.agentID, Node: n.Name, Since: now.UTC()})
	ok, _, err := r.consul.KV.Acquire(&consulapi.KVPair{Key: key, Value: val, Session: r.session}, w)
	if err != nil || !ok {
		r.dropSessionIfIdle(ctx)
		if err != nil {
			return ReasonConsul, "cannot take the restart lock of " + n.Service + ": " + err.Error()
		}
		return ReasonLock, "another node of " + n.Service + " is being restarted first"
	}
	r.held[n.Service] = &lock{node: n.Name, since: now}
	return "", ""
}

// start asks Nomad to restart n's task, in the background.
func (r *Restarter) start(ctx context.Context, n Node, st *nodeState, now time.Time) {
	st.restarts, st.last = append(st.restarts, now), now
	st.recheckAt = time.Time{}
	st.unhelped++
	st.inFlight = true
	st.critSince, st.progressAt = now, now // the restarted node gets After again before it is judged stalled
	st.withheld, st.why, st.failed = "", "", ""
	r.log.Warn("restarting stalled node through nomad", "node", n.Name, "service", n.Service, "alloc", n.AllocID,
		"task", n.Task, "height", st.height, "head", r.services[n.Service].head,
		"restarts_this_hour", len(st.restarts), "max_per_hour", r.p.MaxPerHour)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		cctx, cancel := context.WithTimeout(ctx, r.p.RestartTimeout)
		defer cancel()
		err := r.nomad.Restart(&nomadapi.Allocation{ID: n.AllocID}, n.Task, (&nomadapi.QueryOptions{}).WithContext(cctx))
		if err != nil {
			err = fmt.Errorf("nomad restart of allocation %s task %s: %w", short(n.AllocID), n.Task, err)
		}
		r.mu.Lock()
		r.finished = append(r.finished, result{node: n.Name, service: n.Service, err: err})
		r.mu.Unlock()
	}()
}

// Wait waits for the restart calls in flight to return (their results are taken by the next Pass).
func (r *Restarter) Wait() { r.wg.Wait() }

// Close lets go of every lock this agent holds and ends its session, for a clean shutdown.
func (r *Restarter) Close(ctx context.Context) {
	for _, svc := range sortedKeys(r.held) {
		r.release(ctx, svc)
	}
	r.dropSessionIfIdle(ctx)
}

// Note is what the node's check output says of its restarts, e.g. "restarted 2m ago, 1 of 3 this hour", and the
// same without the figures that tick (for deciding when the output must reach Consul); "" when there is nothing to
// say. It reads what the last Pass left, so HTTP handlers may call it at any time.
func (r *Restarter) Note(node string) (out, key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.notes[node]
	return n.out, n.key
}

func (r *Restarter) setNotes(now time.Time) {
	notes := make(map[string]note, len(r.nodes))
	for name, st := range r.nodes {
		var out, key []string
		add := func(o, k string) { out, key = append(out, o), append(key, k) }
		count := fmt.Sprintf("%d of %d this hour", len(st.restarts), r.p.MaxPerHour)
		switch {
		case st.inFlight:
			add("restarting through Nomad, "+count, "restarting through Nomad, "+count)
		case st.failed != "":
			add(fmt.Sprintf("restart failed %s ago, %s: %s", roundDuration(now.Sub(st.last)), count, st.failed),
				fmt.Sprintf("restart failed, %s: %s", count, st.failed))
		case len(st.restarts) > 0:
			add(fmt.Sprintf("restarted %s ago, %s", roundDuration(now.Sub(st.last)), count), "restarted, "+count)
		}
		if st.why != "" {
			add("restart withheld: "+st.why, "restart withheld: "+st.why)
		}
		if len(out) > 0 {
			notes[name] = note{out: strings.Join(out, "; "), key: strings.Join(key, "; ")}
		}
	}
	r.mu.Lock()
	r.notes = notes
	r.mu.Unlock()
}

// lockValue is what a restart lock's key holds: who restarts which node since when (for the other agents' notes and
// for people reading KV).
type lockValue struct {
	Agent string    `json:"agent"`
	Node  string    `json:"node"`
	Since time.Time `json:"since"`
}

func holder(p *consulapi.KVPair) string {
	var v lockValue
	if json.Unmarshal(p.Value, &v) != nil || v.Node == "" {
		return "another node"
	}
	return fmt.Sprintf("%s (agent %s)", v.Node, v.Agent)
}

func (r *Restarter) release(ctx context.Context, service string) {
	delete(r.held, service)
	if r.session != "" {
		cctx, cancel := context.WithTimeout(ctx, r.p.CallTimeout)
		defer cancel()
		w := (&consulapi.WriteOptions{}).WithContext(cctx)
		if _, _, err := r.consul.KV.Release(&consulapi.KVPair{Key: r.layout.RestartLock(service), Session: r.session}, w); err != nil {
			r.log.Warn("release of the restart lock failed; ending the session instead", "service", service, "error", err)
		}
	}
	r.dropSessionIfIdle(ctx)
}

// dropSessionIfIdle ends the session once no lock is held (its locks go with it).
func (r *Restarter) dropSessionIfIdle(ctx context.Context) {
	if r.session == "" || len(r.held) > 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, r.p.CallTimeout)
	defer cancel()
	if _, err := r.consul.Sessions.Destroy(r.session, (&consulapi.WriteOptions{}).WithContext(cctx)); err != nil {
		r.log.Warn("ending the restart lock session failed; its TTL will", "session", r.session, "error", err)
	}
	r.session = ""
}

// renew keeps the session alive while it holds locks; a session Consul no longer knows lost them.
func (r *Restarter) renew(ctx context.Context, now time.Time) {
	if r.session == "" || now.Sub(r.renewed) < r.p.LockTTL/3 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, r.p.CallTimeout)
	defer cancel()
	e, _, err := r.consul.Sessions.Renew(r.session, (&consulapi.WriteOptions{}).WithContext(cctx))
	switch {
	case err != nil:
		r.log.Debug("renewing the restart lock session failed", "error", err)
	case e == nil:
		r.log.Warn("the restart lock session expired; its locks are gone", "services", sortedKeys(r.held))
		r.session = ""
		clear(r.held)
	default:
		r.renewed = now
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func plural(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

// roundDuration shows a duration the way people say it: 45s, 2m, 1h5m.
func roundDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	default:
		h := int(d / time.Hour)
		if m := int(d%time.Hour) / int(time.Minute); m > 0 {
			return fmt.Sprintf("%dh%dm", h, m)
		}
		return fmt.Sprintf("%dh", h)
	}
}
