// Package agent is chainwarden's host agent: every interval it probes the chain nodes of this host, judges each
// against its network's head, publishes heads to Consul KV and the verdicts as Consul TTL checks, and serves them
// on HTTP with Prometheus metrics. Run loops; Step does one pass, and tests call it directly.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/networkhead"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/push"
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/restart"
	"github.com/chainwarden/chainwarden/internal/restored"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// Consul is what the agent needs of Consul: the local agent's service and check calls (for the registry) and the
// KV store (for heads). ConsulAPI gives them from a real client; tests give internal/fakes.Consul for all three.
type Consul struct {
	Agent registry.AgentAPI
	KV    heads.KV
	Txn   heads.Txn
	// Sessions hold this agent's publisher slots (bounded head publishers, internal/heads).
	Sessions heads.Sessions
	Catalog  registry.CatalogAPI // nil: outputs reach the servers only as the local agent sends them
	// Restart is the sessions, locks and health reads of the restarter (needed only with a restart block).
	Restart restart.Consul
}

// ConsulAPI is Consul from a real API client.
func ConsulAPI(c *consulapi.Client) Consul {
	return Consul{Agent: c.Agent(), KV: c.KV(), Txn: c.Txn(), Sessions: c.Session(), Catalog: registry.Catalog(c), Restart: restart.ConsulAPI(c)}
}

// Options are the parts of an agent that the command, tests and the benchmark choose.
type Options struct {
	ID string // agent identity in Consul meta and KV (`chainwarden agent`: the Consul node name); default: the hostname
	// FormerIDs are identities this agent had before (`chainwarden agent`: the hostname, when the ID is now the
	// Consul node name): its registrations and heads under them are its own.
	FormerIDs  []string
	Clock      clock.Clock  // default: the wall clock
	HTTPClient *http.Client // for probes; default probe.NewHTTPClient()
	Consul     Consul       // required
	// Nomad restarts allocations for the restart block: (*nomadapi.Client).Allocations(). Needed only with one.
	Nomad restart.Nomad
	// HeadClaimWindow spreads the claims of a free head publisher slot (internal/heads); 0: heads.DefaultClaimWindow,
	// negative: claim at once (tests that drive passes).
	HeadClaimWindow time.Duration
	// Subscribers replaces the push subscribers by kind (tests); nil: push.Subscribers.
	Subscribers map[probe.Kind]push.Subscriber
}

// Agent watches this host's chain nodes.
type Agent struct {
	cfg    *config.Config
	log    hclog.Logger
	id     string
	clock  clock.Clock
	client *http.Client

	reg       *registry.Registry
	heads     *heads.Store
	metrics   *metrics
	restarter *restart.Restarter // nil: restarts are off
	push      *push.Manager
	// kick wakes the loop when a head arrived by push (capacity 1: a burst of heads is one wake-up).
	kick chan struct{}

	// mu guards what SetNodes, SetReferences and the HTTP handlers share with Step: the node set, each node's
	// spec, verdict and damper. Step probes without it and takes it to record what it found.
	mu      sync.Mutex
	sources map[string][]nodespec.Node // "config", "nomad", ... -> nodes
	nodes   map[string]*nodeState      // by node name
	refs    []nodespec.Reference
	gone    []string // service/node heads to delete from KV
	// transitions are the latest changes of the nodes' damped verdicts, oldest first (at most maxTransitions).
	transitions []Transition
	// pushState is where each node's push subscription stands, by node name (kept by name: a node whose state is
	// replaced keeps its subscription). seq orders probes and pushed heads: each probe start and each head takes
	// the next number, so the newer of the two is known without comparing clocks.
	pushState map[string]pushState
	seq       uint64

	// The passes' own (Step and pushPass run one at a time, from the loop or a test).
	slow     bool                            // the last pass took longer than the interval (logged once, and again when it ends)
	trackers map[string]*networkhead.Tracker // by service: what the network head rule keeps between passes
	refSeen  map[string]sourceSeen           // by reference: when its height was first seen
	flagged  map[string]heads.Flag           // service/source -> this agent's sources flagged in the last pass
	// resumed: the first pass read the statuses an earlier run left in Consul; standing keeps those of nodes not
	// known yet (discovered later), for newNodeState.
	resumed  bool
	standing map[string]registry.Standing
	refLast  []probe.Result // the references' last results, for passes that don't probe
	refsLast []nodespec.Reference
	wakeAt   time.Time // when the first node crosses a time threshold with no news (nextCrossing): the loop judges then
	// markErr: the last error reading the restore marks (logged when it changes); marks: the marks a pass that
	// probes read, for the push passes until the next.
	markErr string
	marks   map[string]restored.Mark
	scratch passScratch
}

// passScratch is what a pass needs for each node, kept from one pass to the next: a pass over a thousand nodes
// would otherwise allocate a few megabytes each time, and the collector's work with it.
type passScratch struct {
	nodes           []work
	results, latest []probe.Result
	pub             []heads.Head
	pubAt           map[string]int
	services        []registry.Service
	judged          []*nodeState
	obs             map[string][]networkhead.Observation // by service: the network head rule's input
}

// zeroed returns s resized to n elements, all zero.
func zeroed[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// pushState is a node's push subscription as the agent last heard of it.
type pushState struct {
	url string // the WebSocket URL it is about
	up  bool
	err string // why it is not up ("" while connecting)
}

// nodeState is what the agent keeps of one node. The fields under "guarded" are read and written with Agent.mu
// held; the others belong to Step, which runs one pass at a time.
type nodeState struct {
	// guarded
	cfg     *nodespec.Node // replaced, never changed in place
	damper  *verdict.Damper
	report  verdict.Report
	result  probe.Result
	updated time.Time
	changed time.Time // when the damped status last changed (zero: not since the agent started)
	// client and version as last reported, kept while probes fail so a failure doesn't rewrite the catalog.
	client, version string
	// session keeps a Chainlink node's login and the cadence of its authenticated checks (nil for other kinds).
	session *probe.ChainlinkSession
	// synced is the registration last given to Consul: a push pass passes it again for the nodes whose status it
	// does not change.
	synced *registry.Service
	// The last probe: its result above, when it started (clock and seq); and the newest head that came by push.
	polled   time.Time
	pollSeq  uint64
	pushHead push.Head
	pushSeq  uint64 // seq of pushHead; 0: none yet
	pushN    uint64 // heads that came by push

	// the passes' own
	since      time.Time // when result.Height was first seen
	lastSeen   uint64
	judged     judgedOn  // what the last judgement saw
	judgedPush uint64    // pushN when last judged
	nextPoll   time.Time // while push is up: when the next probe is due (zero: push down, or not placed yet)
	// unsynced: a push pass judged the node after synced was made, and kept synced (its status did not change): the
	// next pass that probes judges it again and syncs the new figures.
	unsynced bool
	judgeAt  time.Time // when the node next crosses a time threshold with no news (nextCrossing; zero: none)
	// catchUp follows a node whose volume was restored from a snapshot (a restore mark), until it has caught up.
	catchUp *verdict.CatchUp
}

// judgedOn is what a node's judgement depends on that a push can change: its height and block, its network's head
// and the flag the head rule gives it.
type judgedOn struct {
	height, head uint64
	hash         probe.Hash
	headNode     string
	flag         string
}

// New builds an agent from a validated configuration.
func New(cfg *config.Config, log hclog.Logger, opts Options) (*Agent, error) {
	if opts.Consul.Agent == nil || opts.Consul.KV == nil || opts.Consul.Txn == nil || opts.Consul.Sessions == nil {
		return nil, fmt.Errorf("agent: no consul given")
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = probe.NewHTTPClient()
	}
	if opts.ID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent id: %w", err)
		}
		opts.ID = h
	}
	clk := clock.OrReal(opts.Clock)
	a := &Agent{cfg: cfg, log: log, id: opts.ID, clock: clk, client: opts.HTTPClient,
		sources: map[string][]nodespec.Node{}, nodes: map[string]*nodeState{}, metrics: newMetrics(),
		trackers: map[string]*networkhead.Tracker{}, refSeen: map[string]sourceSeen{}, flagged: map[string]heads.Flag{},
		kick: make(chan struct{}, 1), pushState: map[string]pushState{}}
	a.push = push.New(push.Options{Clock: clk, Timeout: max(cfg.Timeout, 5*time.Second), Subscribers: opts.Subscribers,
		OnHead: a.onPushHead, OnState: a.onPushState}, log.Named("push"))
	a.metrics.watchPush(a.push)
	a.reg = registry.New(opts.Consul.Agent, registry.Options{
		AgentID: opts.ID, FormerAgentIDs: opts.FormerIDs, TTL: cfg.Consul.CheckTTL, DeregisterAfter: cfg.Consul.DeregisterAfter, Clock: clk,
		Catalog: opts.Consul.Catalog,
	}, log.Named("consul"))
	a.heads = heads.New(opts.Consul.KV, opts.Consul.Txn, kvlayout.New(cfg.Consul.KVPrefix), log.Named("heads"), clk)
	a.heads.SetPublishers(heads.Publishers{Max: cfg.Consul.HeadPublishers, Sessions: opts.Consul.Sessions, Agent: opts.ID, FormerAgents: opts.FormerIDs,
		MaxAge: cfg.HeadMaxAge, ClaimWindow: cmp.Or(opts.HeadClaimWindow, heads.DefaultClaimWindow)})
	a.reg.OnStateLost = a.heads.Forget
	if cfg.Restart != nil {
		rc := opts.Consul.Restart
		if opts.Nomad == nil || rc.Sessions == nil || rc.KV == nil || rc.Health == nil {
			return nil, fmt.Errorf("agent: the restart block needs a Nomad client and Consul sessions")
		}
		a.restarter = restart.New(*cfg.Restart, rc, opts.Nomad, kvlayout.New(cfg.Consul.KVPrefix), opts.ID, log.Named("restart"))
	}
	a.SetNodes(nodespec.SourceConfig, cfg.Nodes)
	a.SetReferences(cfg.References)
	return a, nil
}

// ID is the agent's identity in Consul.
func (a *Agent) ID() string { return a.id }

// SetNodes replaces the nodes that came from source ("config" for node blocks, "nomad" for discovered tasks).
// A node named in the config wins over a discovered one of the same name.
func (a *Agent) SetNodes(source string, nodes []nodespec.Node) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sources[source] = slices.Clone(nodes)
	want := map[string]nodespec.Node{}
	srcs := make([]string, 0, len(a.sources))
	for s := range a.sources {
		if s != nodespec.SourceConfig {
			srcs = append(srcs, s)
		}
	}
	slices.Sort(srcs)
	srcs = append(srcs, nodespec.SourceConfig) // last, so the config file wins
	for _, s := range srcs {
		for _, n := range a.sources[s] {
			if prev, dup := want[n.Name]; dup && prev.Source != n.Source {
				a.log.Warn("node defined twice, the config file wins", "node", n.Name, "sources", prev.Source+","+n.Source)
			}
			want[n.Name] = n
		}
	}
	for name, st := range a.nodes {
		n, ok := want[name]
		if !ok {
			delete(a.nodes, name)
			a.gone = append(a.gone, st.cfg.Service+"/"+name)
			a.metrics.forget(st.cfg)
			a.log.Info("node removed", "node", name)
			continue
		}
		// Another service or kind, or another Nomad allocation under the same name (a replacement that started while
		// the old one was still stopping): a new node, judged from scratch, never on its predecessor's verdict.
		if n.Service != st.cfg.Service || n.Kind != st.cfg.Kind || n.AllocID != st.cfg.AllocID {
			a.gone = append(a.gone, st.cfg.Service+"/"+name)
			a.metrics.forget(st.cfg)
			a.nodes[name] = a.newNodeState(n)
			continue
		}
		st.cfg = &n // a new value, never changed in place: a pass holds the one it started with
		st.damper.SetLimits(n.Thresholds.FailAfter, n.Thresholds.PassAfter)
	}
	for name, n := range want {
		if _, ok := a.nodes[name]; !ok {
			a.nodes[name] = a.newNodeState(n)
			a.log.Info("node added", "node", name, "kind", n.Kind, "service", n.Service, "source", n.Source)
		}
	}
	// Subscribe to the new heads of the nodes that have a WebSocket URL; forget the state of subscriptions that end.
	var targets []push.Target
	for name, st := range a.nodes {
		if st.cfg.WS != "" && a.push.Supported(st.cfg.Kind) {
			targets = append(targets, push.Target{Name: name, Kind: st.cfg.Kind, URL: st.cfg.WS})
		}
	}
	for name, ps := range a.pushState {
		if st := a.nodes[name]; st == nil || st.cfg.WS != ps.url {
			delete(a.pushState, name)
		}
	}
	a.push.Set(targets)
	a.watchServices()
}

// watchServices makes the heads watch follow the services of this agent's nodes (but Chainlink's: no heights) and
// references; a.mu must be held.
func (a *Agent) watchServices() {
	var svcs []string
	for _, st := range a.nodes {
		if st.cfg.Kind != probe.Chainlink {
			svcs = append(svcs, st.cfg.Service)
		}
	}
	for _, r := range a.refs {
		svcs = append(svcs, r.Service)
	}
	a.heads.SetServices(svcs)
}

// onPushHead records a head that came by push and wakes the loop to judge it.
func (a *Agent) onPushHead(t push.Target, h push.Head) {
	a.mu.Lock()
	st := a.nodes[t.Name]
	if st == nil || st.cfg.WS != t.URL || st.cfg.Kind != t.Kind { // from a subscription that is ending
		a.mu.Unlock()
		return
	}
	a.seq++
	st.pushHead, st.pushSeq = h, a.seq
	st.pushN++
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// onPushState records a subscription coming up or going down. Down, the node is polled every interval again from
// the next pass on.
func (a *Agent) onPushState(t push.Target, s push.State) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.nodes[t.Name]; st == nil || st.cfg.WS != t.URL {
		return
	}
	ps := pushState{url: t.URL, up: s.Up}
	if s.Err != nil {
		ps.err = s.Err.Error()
	}
	a.pushState[t.Name] = ps
}

// pushDetail says how a node's heads arrive, for its health answer; a.mu must be held.
func (a *Agent) pushDetail(st *nodeState) string {
	if st.cfg.WS == "" || !a.push.Supported(st.cfg.Kind) {
		return ""
	}
	ps, ok := a.pushState[st.cfg.Name]
	switch {
	case !ok || ps.url != st.cfg.WS:
		return "connecting to " + nodespec.RedactURL(st.cfg.WS)
	case ps.up:
		return "subscribed to " + nodespec.RedactURL(st.cfg.WS)
	case ps.err == "":
		return "connecting to " + nodespec.RedactURL(st.cfg.WS)
	}
	return fmt.Sprintf("push unavailable: %s; polling every %s", ps.err, a.cfg.Interval)
}

func (a *Agent) newNodeState(n nodespec.Node) *nodeState {
	st := &nodeState{cfg: &n, damper: verdict.NewDamper(n.Thresholds.FailAfter, n.Thresholds.PassAfter)}
	if s, ok := a.standing[n.Name]; ok { // found in Consul at start, added since (discovered through Nomad)
		delete(a.standing, n.Name)
		a.resumeNode(st, s)
	}
	if n.Kind == probe.Chainlink {
		st.session = probe.NewChainlinkSession(a.clock)
	}
	return st
}

// SetReferences replaces the external head references.
func (a *Agent) SetReferences(refs []nodespec.Reference) {
	a.mu.Lock()
	a.refs = slices.Clone(refs)
	a.watchServices()
	a.mu.Unlock()
}

// Run probes every interval until ctx ends, judging the heads that arrive by push as they come, watching heads in
// KV and serving HTTP on the configured address.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{Addr: a.cfg.Listen, Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			errc <- fmt.Errorf("listen on %s: %w", a.cfg.Listen, err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go a.heads.WatchServices(ctx, 5*time.Minute)
	defer func() { // free this agent's publisher slots at once rather than when its host goes
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.heads.Close(cctx); err != nil {
			a.log.Debug("close heads session", "error", err)
		}
	}()
	if a.restarter != nil {
		defer func() { // let go of restart locks at once rather than when their session expires
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			a.restarter.Close(cctx)
		}()
	}
	pushDone := make(chan struct{})
	go func() {
		defer close(pushDone)
		a.push.Run(ctx)
	}()
	defer func() {
		cancel()
		<-pushDone
	}()
	a.log.Info("agent started", "id", a.id, "nodes", a.NodeCount(), "interval", a.cfg.Interval, "listen", a.cfg.Listen)
	return a.loop(ctx, errc)
}

// PushCoalesce is how long the loop waits after a head arrived by push before it judges: the heads of one block
// reach the nodes of a host within milliseconds of each other, and one pass judges them all.
const PushCoalesce = 50 * time.Millisecond

// loop runs a pass every interval, and a push pass when heads arrived by push or a node crosses a time threshold
// (nextCrossing), until ctx ends or errc reports a failure.
func (a *Agent) loop(ctx context.Context, errc <-chan error) error {
	tick := a.clock.NewTicker(a.cfg.Interval)
	defer tick.Stop()
	var wake clock.Timer // when a node crosses a time threshold (a.wakeAt)
	defer func() {
		if wake != nil {
			wake.Stop()
		}
	}()
	arm := func() {
		if wake != nil {
			wake.Stop()
			wake = nil
		}
		if !a.wakeAt.IsZero() {
			wake = a.clock.NewTimer(max(a.wakeAt.Sub(a.clock.Now()), 0))
		}
	}
	a.Step(ctx)
	arm()
	for {
		var wakeC <-chan time.Time
		if wake != nil {
			wakeC = wake.C()
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-tick.C():
			a.Step(ctx)
		case <-wakeC:
			a.pushPass(ctx)
		case <-a.kick:
			if clock.Sleep(ctx, a.clock, PushCoalesce) != nil {
				return nil
			}
			select { // heads that came while waiting are judged in this pass
			case <-a.kick:
			default:
			}
			a.pushPass(ctx)
		}
		arm()
	}
}

// Height is a node's height as its latest successful probe (or pushed head) gave it, for the volume work of this
// process (a snapshot's height tag); false when the node is unknown or has no height yet.
func (a *Agent) Height(node string) (uint64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, ok := a.nodes[node]
	if !ok || st.result.Err != nil || !st.result.HasHeight || st.result.Height == 0 {
		return 0, false
	}
	return st.result.Height, true
}

// NodeCount is how many nodes the agent watches.
func (a *Agent) NodeCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.nodes)
}

// maxParallelProbes bounds the goroutines probing at once.
const maxParallelProbes = 256

// work is one node of a pass: its state and its spec as they were when the pass began, and what the pass found.
type work struct {
	st  *nodeState
	cfg *nodespec.Node // st.cfg when the pass began

	due    bool         // probed in this pass
	void   bool         // removed or replaced while the pass probed
	polled bool         // the node has a probe result (from this pass or an earlier one)
	r      probe.Result // the latest: the probe's result, with the height of a newer head that came by push
	pushN  uint64       // the node's pushN when r took a pushed head; 0: r is the probe's own
}

// Step does one pass: probe the nodes that are due and every reference, judge the nodes that need it (unchanged),
// publish heads and checks.
// A node is due every pass while its heads don't come by push (no ws URL, or the subscription is down), before its
// first probe and after a failed one; while they do, every push_poll_interval: that probe is its liveness check.
func (a *Agent) Step(ctx context.Context) { a.pass(ctx, true) }

// pushPass judges, without probing, every node whose height, block or network head changed since it was last
// judged (with the heads that came by push) or that crossed a time threshold since (nextCrossing), and writes the
// status changes to Consul at once.
func (a *Agent) pushPass(ctx context.Context) { a.pass(ctx, false) }

// resume reads, before the first pass, the status the local Consul agent holds for each of this agent's nodes and
// starts their dampers there (verdict.Damper.Resume): after a restart of the agent alone, a node that was passing
// stays passing unless its probes say otherwise (fail_after of them), instead of going critical for pass_after
// probes. Only passing and warning are resumed; without Consul, every node starts critical as a new one does.
func (a *Agent) resume(ctx context.Context) {
	a.resumed = true
	rctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	standing, err := a.reg.Standing(rctx)
	if err != nil {
		a.log.Debug("cannot read the checks left by an earlier run; every node starts critical", "error", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.standing = map[string]registry.Standing{}
	for name, s := range standing {
		switch s.Status {
		case consulapi.HealthPassing, consulapi.HealthWarning:
		default:
			continue
		}
		if ns, ok := a.nodes[name]; ok {
			a.resumeNode(ns, s)
		} else {
			a.standing[name] = s
		}
	}
}

// resumeNode starts a node's damper at the status Consul held for it, if that registration was this very node:
// same service and kind, same Nomad allocation (a replacement is judged from scratch); a.mu must be held.
func (a *Agent) resumeNode(st *nodeState, s registry.Standing) {
	n := st.cfg
	if s.Service != n.Service || s.Meta["kind"] != string(n.Kind) || s.Meta["alloc_id"] != n.AllocID {
		return
	}
	status := verdict.Passing
	if s.Status == consulapi.HealthWarning {
		status = verdict.Warning
	}
	st.damper.Resume(status)
	a.log.Info("resuming the status an earlier run left in consul", "node", n.Name, "status", status)
}

// due says whether a pass probes st; a.mu must be held. While a node's push is up, its probes are spread over
// push_poll_interval by a phase from its name (a thousand nodes that subscribed together are not probed in one
// pass): the first probe after the subscription came up waits that phase, the next ones push_poll_interval.
func (a *Agent) due(st *nodeState, now time.Time) bool {
	up := st.pollSeq > 0 && st.result.Err == nil && st.cfg.WS != ""
	if up {
		ps, ok := a.pushState[st.cfg.Name]
		up = ok && ps.up && ps.url == st.cfg.WS
	}
	if !up {
		st.nextPoll = time.Time{}
		return true
	}
	if st.nextPoll.IsZero() {
		st.nextPoll = st.polled.Add(phase(st.cfg.Name, a.cfg.PushPollInterval))
	}
	// Ticks come every interval: half of one is the slack that keeps a probe from slipping to the next tick.
	return !now.Before(st.nextPoll.Add(-a.cfg.Interval / 2))
}

// phase is a node's place in a period, from a hash of its name: the same every time, spread over [0, period).
func phase(name string, period time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(name))
	return time.Duration(h.Sum64() % uint64(max(period, 1)))
}

func (a *Agent) pass(ctx context.Context, poll bool) {
	if poll && !a.resumed {
		a.resume(ctx)
	}
	started := time.Now()
	start := a.clock.Now()
	a.mu.Lock()
	nodes := a.scratch.nodes[:0]
	for _, st := range a.nodes {
		nodes = append(nodes, work{st: st, cfg: st.cfg, due: poll && a.due(st, start)})
	}
	a.scratch.nodes = nodes
	refs, refResults := a.refsLast, a.refLast
	if poll {
		refs = slices.Clone(a.refs)
		refResults = make([]probe.Result, len(refs))
	}
	a.seq++
	seq := a.seq
	gone := a.gone
	a.gone = nil
	a.mu.Unlock()
	slices.SortFunc(nodes, func(x, y work) int { return strings.Compare(x.cfg.Name, y.cfg.Name) })

	// Probe the due nodes and the references in parallel, each under the probe deadline.
	results := zeroed(a.scratch.results, len(nodes))
	a.scratch.results = results
	if poll {
		sem := make(chan struct{}, maxParallelProbes)
		var wg sync.WaitGroup
		run := func(out *probe.Result, t probe.Target) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			pctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
			defer cancel()
			*out = probe.Run(pctx, a.client, t)
		}
		for i := range nodes {
			if !nodes[i].due {
				continue
			}
			wg.Add(1)
			t := nodes[i].cfg.Target()
			t.Session = nodes[i].st.session
			go run(&results[i], t)
		}
		// An Ethereum reference is asked for its finalized block when a node of its service is judged on finality:
		// the network's finalized block may then come from it (a lone node and a provider, say).
		finality := map[string]bool{}
		for i := range nodes {
			if nodes[i].cfg.JudgesFinality() {
				finality[nodes[i].cfg.Service] = true
			}
		}
		for i := range refs {
			wg.Add(1)
			t := refs[i].Target()
			t.Finality = t.Kind == probe.Ethereum && finality[refs[i].Service]
			go run(&refResults[i], t)
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
		a.refsLast, a.refLast = refs, refResults
	}
	probed := time.Now()
	now := a.clock.Now()

	// Each node's latest: this pass's probe, else its last one, with the height of a head that came by push after
	// that probe began. A failed probe stands until a probe succeeds: a node whose RPC fails is not healthy because
	// its WebSocket still announces blocks.
	a.mu.Lock()
	for i := range nodes {
		w := &nodes[i]
		st := w.st
		if a.nodes[w.cfg.Name] != st {
			w.void = true
			continue
		}
		if w.due {
			st.result, st.polled, st.pollSeq = results[i], start, seq
			if !st.nextPoll.IsZero() {
				st.nextPoll = start.Add(a.cfg.PushPollInterval)
			}
		}
		w.r, w.polled = st.result, st.pollSeq > 0
		if st.pushSeq > st.pollSeq && w.r.Err == nil && w.r.HasHeight {
			ph := st.pushHead
			w.r.Height, w.r.Hash, w.r.ParentHash = ph.Height, ph.Hash, ph.ParentHash
			if !ph.Time.IsZero() {
				w.r.BlockTime = ph.Time
			}
			w.pushN = st.pushN
		}
	}
	a.mu.Unlock()

	// Heads to publish, for the other agents: this pass's nodes on the right chain. Whether a node may hold a
	// publisher slot is its verdict, set below once judged.
	pub := a.scratch.pub[:0]
	if a.scratch.pubAt == nil {
		a.scratch.pubAt = map[string]int{}
	}
	pubAt := a.scratch.pubAt // node -> index in pub
	clear(pubAt)
	for i := range nodes {
		w := &nodes[i]
		if w.due {
			a.metrics.observeProbe(w.cfg, results[i])
		}
		r, st := w.r, w.st
		if w.void || !w.polled || r.Err != nil || !r.HasHeight || r.Height == 0 || !chainMatches(w.cfg, r) {
			continue
		}
		if r.Height != st.lastSeen {
			st.lastSeen, st.since = r.Height, now
		}
		h := heads.Head{Service: w.cfg.Service, Node: w.cfg.Name, Height: r.Height, Peers: r.Peers,
			BlockTime: r.BlockTime, Observed: st.since, Agent: a.id, Hash: r.Hash, ParentHash: r.ParentHash}
		if r.HasFinalized {
			h.Finalized = r.Finalized
		}
		pubAt[w.cfg.Name] = len(pub)
		pub = append(pub, h)
	}
	a.scratch.pub = pub
	for i, ref := range refs {
		if i >= len(refResults) {
			break
		}
		r := refResults[i]
		if !poll { // the references' last results: logged and counted when they were probed
			continue
		}
		switch want := serviceChain(nodes, ref.Service); {
		case r.Err != nil:
			a.metrics.referenceUp.WithLabelValues(ref.Name, ref.Service).Set(0)
			a.log.Debug("reference failed, ignored", "reference", ref.Name, "error", r.Err)
		case want != "" && r.ChainID != want:
			a.metrics.referenceUp.WithLabelValues(ref.Name, ref.Service).Set(0)
			a.log.Warn("reference is on another chain, ignored", "reference", ref.Name, "chain", r.ChainID, "want", want)
		default:
			a.metrics.referenceUp.WithLabelValues(ref.Name, ref.Service).Set(1)
		}
	}
	// The network head of each service: corroborated, from this pass's nodes, other agents' heads in KV and the
	// references (see internal/networkhead).
	latest := zeroed(a.scratch.latest, len(nodes)) // each node's latest (zero: void, or not probed yet)
	a.scratch.latest = latest
	for i := range nodes {
		if !nodes[i].void && nodes[i].polled {
			latest[i] = nodes[i].r
		}
	}
	nets := a.networks(ctx, nodes, latest, refs, refResults, now)

	// A push pass writes to Consul only what must go at once: status changes. New heights and figures ride the next
	// pass (every interval), which also publishes the heads to KV: a burst of heads costs one round of writes, as a
	// pass of probes does.
	marks := a.marks
	if poll {
		marks = a.restoreMarks()
		a.marks = marks
	}
	services := a.scratch.services[:0]
	judged := a.scratch.judged[:0] // in a pass that probes, one for each of services
	defer func() { a.scratch.services, a.scratch.judged = services, judged }()
	var seen []restart.Node
	statusChanged := false
	keep := func(st *nodeState) {
		a.mu.Lock()
		svc, ok := st.synced, a.nodes[st.cfg.Name] == st
		a.mu.Unlock()
		if ok && svc != nil {
			services = append(services, *svc)
		}
	}
	for i := range nodes {
		w := &nodes[i]
		r, st := w.r, w.st
		if w.void || !w.polled { // a node not probed yet is judged by its first probe
			continue
		}
		net := nets[w.cfg.Service]
		head, in := net.judgement(w.cfg.Name, r, now)
		on := judgedOn{height: r.Height, head: head.Height, hash: r.Hash, headNode: head.Node, flag: in.FlagKey}
		if a.unchanged(w, on, marks, poll, now) {
			// Nothing its judgement depends on changed, and no time threshold was crossed: its last judgement stands,
			// for Consul and for its head publisher slot.
			keep(st)
			if j, ok := pubAt[w.cfg.Name]; ok && on.flag == "" {
				a.mu.Lock()
				pub[j].Status = st.damper.Current().String()
				a.mu.Unlock()
			}
			continue
		}
		a.followCatchUp(w.cfg, st, marks, r, head, now)
		in.Kind, in.Result, in.Head, in.WantChain = w.cfg.Kind, r, head, w.cfg.WantChain()
		in.Standby, in.Thresholds, in.Now = strings.Contains(w.cfg.Role, "standby"), w.cfg.Thresholds, now
		in.CatchUp = st.catchUp
		rep := verdict.Judge(in)
		if rep.CaughtUp {
			a.caughtUp(w.cfg, st, marks[w.cfg.Name], now)
		}
		a.mu.Lock()
		if a.nodes[w.cfg.Name] != st { // removed or replaced meanwhile: its result is void
			a.mu.Unlock()
			continue
		}
		prev := st.damper.Current()
		status, changed := st.damper.Observe(rep.Status)
		rep.Status, rep.Holding = status, st.damper.Holding()
		if a.restarter != nil && !poll {
			rep.Note, rep.NoteKey = a.restarter.Note(w.cfg.Name)
		}
		st.report, st.result, st.updated = rep, r, now
		if changed {
			st.changed = now
			a.recordTransition(Transition{Time: now, Node: w.cfg.Name, Service: w.cfg.Service, From: prev.String(),
				To: status.String(), Output: rep.Output()})
		}
		if w.due {
			if r.Version != "" {
				st.version = r.Version
			}
			if r.Client != "" {
				st.client = r.Client
			}
		}
		svc := a.service(st, rep)
		if poll || st.synced == nil || st.synced.Status != svc.Status {
			statusChanged = statusChanged || st.synced == nil || st.synced.Status != svc.Status
			st.synced, st.unsynced = &svc, false
		} else {
			svc, st.unsynced = *st.synced, true
		}
		a.metrics.observeVerdict(w.cfg, rep, head, in.Finalized)
		a.mu.Unlock()
		if j, ok := pubAt[w.cfg.Name]; ok && in.FlagKey == "" { // a flagged node (fork, not corroborated) never publishes
			pub[j].Status = status.String()
		}
		st.judged = on
		st.judgeAt = nextCrossing(in, rep, now)
		if w.pushN != 0 && w.pushN != st.judgedPush {
			st.judgedPush = w.pushN
			if !poll {
				a.metrics.pushJudged.Inc()
			}
		}
		if changed {
			a.metrics.transitions.WithLabelValues(w.cfg.Name, w.cfg.Service, status.String()).Inc()
			a.log.Info("node status changed", "node", w.cfg.Name, "from", prev, "to", status, "output", rep.Output())
		}
		services = append(services, svc)
		judged = append(judged, st)
		if a.restarter != nil && poll {
			ok := r.Err == nil && r.HasHeight && r.Height > 0 && chainMatches(w.cfg, r)
			seen = append(seen, restart.Node{Name: w.cfg.Name, Service: w.cfg.Service, AllocID: w.cfg.AllocID,
				Task: w.cfg.Task, Deploying: w.cfg.Deploying, Status: status, Height: r.Height, HasHeight: ok, Head: head.Height})
		}
	}
	if a.restarter != nil && poll { // restarts are decided on probes; a push pass shows their notes (above)
		a.restart(ctx, now, seen, services, judged)
	}

	// The loop judges again when the first node crosses a time threshold, not at the next tick.
	a.wakeAt = time.Time{}
	for i := range nodes {
		if at := nodes[i].st.judgeAt; !nodes[i].void && !at.IsZero() && (a.wakeAt.IsZero() || at.Before(a.wakeAt)) {
			a.wakeAt = at
		}
	}
	a.publishFlags(ctx, nets, now)
	if !poll {
		if statusChanged {
			before := a.reg.Writes()
			if err := a.reg.Sync(ctx, services); err != nil {
				a.log.Debug("consul sync failed", "error", err)
			}
			a.metrics.consulUp.Set(boolGauge(!a.reg.Down()))
			a.metrics.consulWrites.Add(float64(a.reg.Writes() - before))
		}
		a.mu.Lock()
		a.gone = append(gone, a.gone...) // deleted from KV by the next pass that probes
		a.mu.Unlock()
		return
	}
	// Heads go to the servers, which hold a write through a leader election: the checks' TTL updates below must not
	// wait that long (registry.ServerTimeout).
	pctx, cancel := context.WithTimeout(ctx, registry.ServerTimeout(a.cfg.Consul.CheckTTL))
	_, err := a.heads.Publish(pctx, pub, gone)
	cancel()
	if err != nil {
		a.mu.Lock()
		a.gone = append(a.gone, gone...) // try the deletes again next pass
		a.mu.Unlock()
		a.log.Debug("publish heads failed", "error", err)
	}
	published := time.Now()
	before := a.reg.Writes()
	err = a.reg.Sync(ctx, services)
	a.metrics.consulUp.Set(boolGauge(!a.reg.Down()))
	a.metrics.consulWrites.Add(float64(a.reg.Writes() - before))
	if err != nil {
		a.log.Debug("consul sync failed", "error", err)
	}
	took := time.Since(started)
	a.metrics.stepSeconds.Observe(took.Seconds())
	switch slow := took > a.cfg.Interval; {
	case slow && !a.slow:
		a.log.Warn("passes take longer than the interval", "took", took, "interval", a.cfg.Interval,
			"probe", probed.Sub(started), "publish", published.Sub(probed), "consul", time.Since(published),
			"nodes", len(nodes), "slowest", slowest(nodes, results, 5))
	case !slow && a.slow:
		a.log.Info("passes are within the interval again", "took", took, "interval", a.cfg.Interval)
	}
	a.slow = took > a.cfg.Interval
}

// unchanged says whether a pass may keep a node's last judgement instead of judging it again: nothing it depends on
// changed since (height, block, network head, flag), no time threshold was crossed since, and nothing else needs a
// judgement each pass. A pass that probes judges every node it probed, every node while damping holds its status
// (each pass counts toward fail_after and pass_after, as it always did), every node of a restored volume (followed
// until it caught up), and every node when restarts are on (the restarter decides on all of them); so with heads by
// push a node is judged on news, at a threshold, and at least every push_poll_interval, not every interval.
func (a *Agent) unchanged(w *work, on judgedOn, marks map[string]restored.Mark, poll bool, now time.Time) bool {
	st := w.st
	if on != st.judged || (!st.judgeAt.IsZero() && !now.Before(st.judgeAt)) {
		return false
	}
	if !poll {
		return true
	}
	if w.due || st.unsynced || a.restarter != nil || st.catchUp != nil || st.synced == nil {
		return false
	}
	if _, restoring := marks[w.cfg.Name]; restoring {
		return false
	}
	a.mu.Lock()
	held := st.damper.Held()
	a.mu.Unlock()
	return !held
}

// nextCrossing is when a node's judgement next changes with time alone, though nothing new arrives: it crosses
// warn_behind or max_behind (behind the head), max_finalized_behind (its finalized block behind the network's), or
// max_block_age (no new block); zero when none is ahead.
func nextCrossing(in verdict.Input, rep verdict.Report, now time.Time) time.Time {
	t, r := in.Thresholds, in.Result
	var at time.Time
	// Judge counts a node as over a limit when strictly past it: a millisecond later.
	next := func(limit, elapsed time.Duration) {
		if limit <= 0 || elapsed > limit {
			return
		}
		if c := now.Add(limit - elapsed + time.Millisecond); at.IsZero() || c.Before(at) {
			at = c
		}
	}
	if r.Err == nil && r.HasHeight && in.Head.Height > r.Height {
		next(t.WarnBehind, in.BehindFor)
		next(t.MaxBehind, in.BehindFor)
	}
	if in.FinalizedBehindFor > 0 {
		next(t.MaxFinalizedBehind, in.FinalizedBehindFor)
	}
	if r.Err == nil && !r.BlockTime.IsZero() {
		next(t.MaxBlockAge, rep.BlockAge)
	}
	return at
}

// restart hands the pass's verdicts to the restarter, counts what it did, and adds what it says of each node
// ("restarted 2m ago, 1 of 3 this hour") to the node's check output and health.
func (a *Agent) restart(ctx context.Context, now time.Time, seen []restart.Node, services []registry.Service, judged []*nodeState) {
	for _, e := range a.restarter.Pass(ctx, now, seen) {
		a.metrics.observeRestart(e)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, st := range judged {
		st.report.Note, st.report.NoteKey = a.restarter.Note(st.cfg.Name)
		services[i].Output, services[i].Key = st.report.Output(), st.report.Key()
	}
}

// slowest names the n nodes whose probes took longest, with their times, e.g. "geth-a 2s (timeout), geth-b 800ms".
func slowest(nodes []work, results []probe.Result, n int) string {
	idx := make([]int, len(nodes))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(x, y int) int { return cmp.Compare(results[y].Duration, results[x].Duration) })
	var parts []string
	for _, i := range idx[:min(n, len(idx))] {
		p := nodes[i].cfg.Name + " " + results[i].Duration.Round(time.Millisecond).String()
		if errors.Is(results[i].Err, context.DeadlineExceeded) {
			p += " (timed out)"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// serviceChain is the chain a service's nodes must be on, from the first of them; "" when none says.
func serviceChain(nodes []work, service string) string {
	for _, w := range nodes {
		if w.cfg.Service == service {
			return w.cfg.WantChain()
		}
	}
	return ""
}

func chainMatches(n *nodespec.Node, r probe.Result) bool {
	w := n.WantChain()
	return w == "" || r.ChainID == w
}

// service is the Consul registration of a node with its check state; a.mu must be held.
func (a *Agent) service(st *nodeState, rep verdict.Report) registry.Service {
	n := st.cfg
	meta := map[string]string{"kind": string(n.Kind), "chain": string(n.Kind), "node": n.Name, "source": n.Source}
	if n.AllocID != "" {
		meta["alloc_id"] = n.AllocID
	}
	if n.Network != "" {
		meta["network"] = n.Network
	} else {
		meta["network"] = n.Service
	}
	if c := n.WantChain(); c != "" && n.Kind == probe.Ethereum {
		meta["chain_id"] = c
	}
	client := n.Client
	if client == "" {
		client = st.client
	}
	if client != "" {
		meta["client"] = client
	}
	if v := st.version; v != "" {
		if len(v) > 512 {
			v = v[:512]
		}
		meta["client_version"] = v
	}
	if n.Role != "" {
		meta["role"] = n.Role
	}
	return registry.Service{ID: n.Name, Name: n.Service, Address: n.Address, Port: n.Port, Tags: n.Tags, Meta: meta,
		Status: rep.Status.String(), Output: rep.Output(), Key: rep.Key()}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// restoreMarks reads the marks of volumes restored from a snapshot (internal/restored), by node.
func (a *Agent) restoreMarks() map[string]restored.Mark {
	ms, err := restored.List(a.cfg.StateDir)
	if msg := fmt.Sprint(err); err != nil && msg != a.markErr {
		a.log.Warn("cannot read every restore mark", "dir", a.cfg.StateDir, "error", err)
		a.markErr = msg
	} else if err == nil {
		a.markErr = ""
	}
	out := make(map[string]restored.Mark, len(ms))
	for _, m := range ms {
		out[m.Node] = m
	}
	return out
}

// followCatchUp starts following a node once its volume is marked restored, stops when the mark is gone, and
// records this probe.
func (a *Agent) followCatchUp(n *nodespec.Node, st *nodeState, marks map[string]restored.Mark, r probe.Result,
	head verdict.Head, now time.Time) {
	mark, ok := marks[n.Name]
	switch {
	case !ok:
		st.catchUp = nil
		return
	case st.catchUp == nil || st.catchUp.Snapshot != mark.Snapshot:
		st.catchUp = verdict.NewCatchUp(mark.Snapshot)
		a.log.Info("node restored from a snapshot: following it until it has caught up", "node", n.Name,
			"snapshot", mark.Snapshot, "snapshot_height", mark.Height, "volume", mark.Volume)
	}
	if r.Err == nil && r.HasHeight {
		st.catchUp.Observe(now, r.Height, head.Height)
	}
}

// caughtUp ends following a restored node: its mark goes, it is judged as any node from now on.
func (a *Agent) caughtUp(n *nodespec.Node, st *nodeState, mark restored.Mark, now time.Time) {
	st.catchUp = nil
	if err := restored.Remove(a.cfg.StateDir, n.Name); err != nil {
		a.log.Warn("cannot remove the restore mark", "node", n.Name, "error", err)
	}
	a.log.Info("node restored from a snapshot has caught up", "node", n.Name, "snapshot", mark.Snapshot,
		"since_restore", now.Sub(mark.Restored).Round(time.Second))
}
