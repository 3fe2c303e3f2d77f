// Package agent is chainwarden's host agent: every interval it probes the chain nodes of this host, judges each
// against its network's head, publishes heads to Consul KV and the verdicts as Consul TTL checks, and serves them
// on HTTP with Prometheus metrics. Run loops; Step does one pass, and tests call it directly.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/restart"
	"github.com/chainwarden/chainwarden/internal/restored"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// Consul is what the agent needs of Consul: the local agent's service and check calls (for the registry) and the
// KV store (for heads). ConsulAPI gives them from a real client; tests give internal/fakes.Consul for all three.
type Consul struct {
	Agent   registry.AgentAPI
	KV      heads.KV
	Txn     heads.Txn
	Catalog registry.CatalogAPI // nil: outputs reach the servers only as the local agent sends them
	// Restart is the sessions, locks and health reads of the restarter (needed only with a restart block).
	Restart restart.Consul
}

// ConsulAPI is Consul from a real API client.
func ConsulAPI(c *consulapi.Client) Consul {
	return Consul{Agent: c.Agent(), KV: c.KV(), Txn: c.Txn(), Catalog: registry.Catalog(c), Restart: restart.ConsulAPI(c)}
}

// Options are the parts of an agent that the command, tests and the benchmark choose.
type Options struct {
	ID         string       // agent identity in Consul meta and KV; default: the hostname
	Clock      clock.Clock  // default: the wall clock
	HTTPClient *http.Client // for probes; default probe.NewHTTPClient()
	Consul     Consul       // required
	// Nomad restarts allocations for the restart block: (*nomadapi.Client).Allocations(). Needed only with one.
	Nomad restart.Nomad
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

	// mu guards what SetNodes, SetReferences and the HTTP handlers share with Step: the node set, each node's
	// spec, verdict and damper. Step probes without it and takes it to record what it found.
	mu      sync.Mutex
	sources map[string][]nodespec.Node // "config", "nomad", ... -> nodes
	nodes   map[string]*nodeState      // by node name
	refs    []nodespec.Reference
	gone    []string // service/node heads to delete from KV
	// transitions are the latest changes of the nodes' damped verdicts, oldest first (at most maxTransitions).
	transitions []Transition

	// Step's own, used by one pass at a time.
	slow     bool                            // the last pass took longer than the interval (logged once, and again when it ends)
	trackers map[string]*networkhead.Tracker // by service: what the network head rule keeps between passes
	refSeen  map[string]sourceSeen           // by reference: when its height was first seen
	flagged  map[string]heads.Flag           // service/source -> this agent's sources flagged in the last pass
	// markErr is Step's own: the last error reading the restore marks (logged when it changes).
	markErr string
}

// nodeState is what the agent keeps of one node. The fields under "guarded" are read and written with Agent.mu
// held; the others belong to Step, which runs one pass at a time.
type nodeState struct {
	// guarded
	cfg     nodespec.Node
	damper  *verdict.Damper
	report  verdict.Report
	result  probe.Result
	updated time.Time
	changed time.Time // when the damped status last changed (zero: not since the agent started)
	// client and version as last reported, kept while probes fail so a failure doesn't rewrite the catalog.
	client, version string
	// session keeps a Chainlink node's login and the cadence of its authenticated checks (nil for other kinds).
	session *probe.ChainlinkSession

	// Step's own
	since    time.Time // when result.Height was first seen
	lastSeen uint64
	// catchUp follows a node whose volume was restored from a snapshot (a restore mark), until it has caught up.
	catchUp *verdict.CatchUp
}

// New builds an agent from a validated configuration.
func New(cfg *config.Config, log hclog.Logger, opts Options) (*Agent, error) {
	if opts.Consul.Agent == nil || opts.Consul.KV == nil || opts.Consul.Txn == nil {
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
		trackers: map[string]*networkhead.Tracker{}, refSeen: map[string]sourceSeen{}, flagged: map[string]heads.Flag{}}
	a.reg = registry.New(opts.Consul.Agent, registry.Options{
		AgentID: opts.ID, TTL: cfg.Consul.CheckTTL, DeregisterAfter: cfg.Consul.DeregisterAfter, Clock: clk,
		Catalog: opts.Consul.Catalog,
	}, log.Named("consul"))
	a.heads = heads.New(opts.Consul.KV, opts.Consul.Txn, kvlayout.New(cfg.Consul.KVPrefix), log.Named("heads"), clk)
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
		st.cfg = n
		st.damper.SetLimits(n.Thresholds.FailAfter, n.Thresholds.PassAfter)
	}
	for name, n := range want {
		if _, ok := a.nodes[name]; !ok {
			a.nodes[name] = a.newNodeState(n)
			a.log.Info("node added", "node", name, "kind", n.Kind, "service", n.Service, "source", n.Source)
		}
	}
}

func (a *Agent) newNodeState(n nodespec.Node) *nodeState {
	st := &nodeState{cfg: n, damper: verdict.NewDamper(n.Thresholds.FailAfter, n.Thresholds.PassAfter)}
	if n.Kind == probe.Chainlink {
		st.session = probe.NewChainlinkSession(a.clock)
	}
	return st
}

// SetReferences replaces the external head references.
func (a *Agent) SetReferences(refs []nodespec.Reference) {
	a.mu.Lock()
	a.refs = slices.Clone(refs)
	a.mu.Unlock()
}

// Run probes every interval until ctx ends, watching heads in KV and serving HTTP on the configured address.
func (a *Agent) Run(ctx context.Context) error {
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
	go a.heads.Watch(ctx, 5*time.Minute)
	if a.restarter != nil {
		defer func() { // let go of restart locks at once rather than when their session expires
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			a.restarter.Close(cctx)
		}()
	}
	a.log.Info("agent started", "id", a.id, "nodes", a.NodeCount(), "interval", a.cfg.Interval, "listen", a.cfg.Listen)
	return a.loop(ctx, errc)
}

// loop runs a pass every interval until ctx ends or errc reports a failure.
func (a *Agent) loop(ctx context.Context, errc <-chan error) error {
	tick := a.clock.NewTicker(a.cfg.Interval)
	defer tick.Stop()
	for {
		a.Step(ctx)
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-tick.C():
		}
	}
}

// NodeCount is how many nodes the agent watches.
func (a *Agent) NodeCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.nodes)
}

// maxParallelProbes bounds the goroutines probing at once.
const maxParallelProbes = 256

// work is one node of a pass: its state and its spec as it was when the pass began.
type work struct {
	st  *nodeState
	cfg nodespec.Node
}

// Step does one pass: probe every node and reference, judge, publish heads and checks.
func (a *Agent) Step(ctx context.Context) {
	started := time.Now()
	a.mu.Lock()
	nodes := make([]work, 0, len(a.nodes))
	for _, st := range a.nodes {
		nodes = append(nodes, work{st: st, cfg: st.cfg})
	}
	refs := slices.Clone(a.refs)
	gone := a.gone
	a.gone = nil
	a.mu.Unlock()
	slices.SortFunc(nodes, func(x, y work) int { return strings.Compare(x.cfg.Name, y.cfg.Name) })

	// Probe nodes and references in parallel, each under the probe deadline.
	results := make([]probe.Result, len(nodes))
	refResults := make([]probe.Result, len(refs))
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
		wg.Add(1)
		t := nodes[i].cfg.Target()
		t.Session = nodes[i].st.session
		go run(&results[i], t)
	}
	for i := range refs {
		wg.Add(1)
		go run(&refResults[i], refs[i].Target())
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	probed := time.Now()
	now := a.clock.Now()

	// Heads to publish, for the other agents: this pass's nodes on the right chain.
	var pub []heads.Head
	for i, w := range nodes {
		r, st := results[i], w.st
		a.metrics.observeProbe(w.cfg, r)
		if r.Err != nil || !r.HasHeight || r.Height == 0 || !chainMatches(w.cfg, r) {
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
		pub = append(pub, h)
	}
	for i, ref := range refs {
		r := refResults[i]
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
	nets := a.networks(ctx, nodes, results, refs, refResults, now)

	marks := a.restoreMarks()
	services := make([]registry.Service, 0, len(nodes))
	judged := make([]*nodeState, 0, len(nodes))
	var seen []restart.Node
	for i, w := range nodes {
		r, st := results[i], w.st
		net := nets[w.cfg.Service]
		head, in := net.judgement(w.cfg.Name, r, now)
		a.followCatchUp(w.cfg, st, marks, r, head, now)
		in.Kind, in.Result, in.Head, in.WantChain = w.cfg.Kind, r, head, w.cfg.WantChain()
		in.Standby, in.Thresholds, in.Now = strings.Contains(w.cfg.Role, "standby"), w.cfg.Thresholds, now
		in.CatchUp = st.catchUp
		rep := verdict.Judge(in)
		if rep.CaughtUp {
			a.caughtUp(w.cfg, st, marks[w.cfg.Name], now)
		}
		a.mu.Lock()
		if a.nodes[w.cfg.Name] != st { // removed or replaced while this pass probed: its result is void
			a.mu.Unlock()
			continue
		}
		prev := st.damper.Current()
		status, changed := st.damper.Observe(rep.Status)
		rep.Status, rep.Holding = status, st.damper.Holding()
		st.report, st.result, st.updated = rep, r, now
		if changed {
			st.changed = now
			a.recordTransition(Transition{Time: now, Node: w.cfg.Name, Service: w.cfg.Service, From: prev.String(),
				To: status.String(), Output: rep.Output()})
		}
		if r.Version != "" {
			st.version = r.Version
		}
		if r.Client != "" {
			st.client = r.Client
		}
		svc := a.service(st, rep)
		a.metrics.observeVerdict(w.cfg, rep, head, in.Finalized)
		a.mu.Unlock()
		if changed {
			a.metrics.transitions.WithLabelValues(w.cfg.Name, w.cfg.Service, status.String()).Inc()
			a.log.Info("node status changed", "node", w.cfg.Name, "from", prev, "to", status, "output", rep.Output())
		}
		services = append(services, svc)
		judged = append(judged, st)
		if a.restarter != nil {
			ok := r.Err == nil && r.HasHeight && r.Height > 0 && chainMatches(w.cfg, r)
			seen = append(seen, restart.Node{Name: w.cfg.Name, Service: w.cfg.Service, AllocID: w.cfg.AllocID,
				Task: w.cfg.Task, Deploying: w.cfg.Deploying, Status: status, Height: r.Height, HasHeight: ok, Head: head.Height})
		}
	}
	if a.restarter != nil {
		a.restart(ctx, now, seen, services, judged)
	}

	a.publishFlags(ctx, nets, now)
	if _, err := a.heads.Publish(ctx, pub, gone); err != nil {
		a.mu.Lock()
		a.gone = append(a.gone, gone...) // try the deletes again next pass
		a.mu.Unlock()
		a.log.Debug("publish heads failed", "error", err)
	}
	published := time.Now()
	before := a.reg.Writes()
	err := a.reg.Sync(ctx, services)
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

func chainMatches(n nodespec.Node, r probe.Result) bool {
	w := n.WantChain()
	return w == "" || r.ChainID == w
}

// service is the Consul registration of a node with its check state; a.mu must be held.
func (a *Agent) service(st *nodeState, rep verdict.Report) registry.Service {
	n := st.cfg
	meta := map[string]string{"kind": string(n.Kind), "chain": string(n.Kind), "node": n.Name, "source": n.Source}
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
func (a *Agent) followCatchUp(n nodespec.Node, st *nodeState, marks map[string]restored.Mark, r probe.Result,
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
func (a *Agent) caughtUp(n nodespec.Node, st *nodeState, mark restored.Mark, now time.Time) {
	st.catchUp = nil
	if err := restored.Remove(a.cfg.StateDir, n.Name); err != nil {
		a.log.Warn("cannot remove the restore mark", "node", n.Name, "error", err)
	}
	a.log.Info("node restored from a snapshot has caught up", "node", n.Name, "snapshot", mark.Snapshot,
		"since_restore", now.Sub(mark.Restored).Round(time.Second))
}
