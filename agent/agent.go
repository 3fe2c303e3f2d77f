// Package agent is chainwarden's host agent: every interval it probes the chain nodes of this host, judges each
// against its network's head, publishes heads to Consul KV and the verdicts as Consul TTL checks, and serves them
// on HTTP with Prometheus metrics. Run loops; Step does one pass, and tests call it directly.
package agent

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// Options are the parts of an agent tests and the benchmark replace.
type Options struct {
	ID         string           // agent identity in Consul meta and KV; default: the hostname
	Now        func() time.Time // the clock; default time.Now
	HTTPClient *http.Client     // for probes; default probe.NewHTTPClient()
	Consul     *consulapi.Client
}

// Agent watches this host's chain nodes.
type Agent struct {
	cfg    *config.Config
	log    hclog.Logger
	id     string
	now    func() time.Time
	client *http.Client
	consul *consulapi.Client

	reg     *registry.Registry
	heads   *heads.Store
	metrics *metrics

	mu      sync.Mutex
	sources map[string][]config.Node // "config", "nomad", ... -> nodes
	nodes   map[string]*nodeState    // by node name
	refs    []config.Reference
	gone    []string // service/node heads to delete from KV
}

type nodeState struct {
	cfg      config.Node
	damper   *verdict.Damper
	report   verdict.Report
	result   probe.Result
	since    time.Time // when result.Height was first seen
	updated  time.Time
	lastSeen uint64
	// client and version as last reported, kept while probes fail so a failure doesn't rewrite the catalog.
	client, version string
}

// New builds an agent from a validated configuration.
func New(cfg *config.Config, log hclog.Logger, opts Options) (*Agent, error) {
	if opts.Now == nil {
		opts.Now = time.Now
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
	if opts.Consul == nil {
		cc := consulapi.DefaultConfig() // CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE), CONSUL_CACERT, ... apply
		// The registry updates checks many at a time: keep that many connections open instead of the default
		// GOMAXPROCS+1, which would open and close a TCP connection for most calls.
		cc.Transport.MaxIdleConnsPerHost = 2 * registry.Parallelism
		if cfg.Consul.Address != "" {
			cc.Address = cfg.Consul.Address
		}
		c, err := consulapi.NewClient(cc)
		if err != nil {
			return nil, fmt.Errorf("consul client: %w", err)
		}
		opts.Consul = c
	}
	a := &Agent{cfg: cfg, log: log, id: opts.ID, now: opts.Now, client: opts.HTTPClient, consul: opts.Consul,
		sources: map[string][]config.Node{}, nodes: map[string]*nodeState{}, metrics: newMetrics()}
	a.reg = registry.New(opts.Consul.Agent(), registry.Options{
		AgentID: opts.ID, TTL: cfg.Consul.CheckTTLDur, DeregisterAfter: cfg.Consul.DeregisterAfterDur, Now: opts.Now,
	}, log.Named("consul"))
	a.heads = heads.New(opts.Consul.KV(), opts.Consul.Txn(), cfg.Consul.KVPrefix, log.Named("heads"))
	a.reg.OnStateLost = a.heads.Forget
	a.SetNodes("config", cfg.Nodes)
	a.SetReferences(cfg.References)
	return a, nil
}

// Consul is the client the agent talks to Consul with.
func (a *Agent) Consul() *consulapi.Client { return a.consul }

// ID is the agent's identity in Consul.
func (a *Agent) ID() string { return a.id }

// SetNodes replaces the nodes that came from source ("config" for node blocks, "nomad" for discovered tasks).
// A node named in the config wins over a discovered one of the same name.
func (a *Agent) SetNodes(source string, nodes []config.Node) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sources[source] = append([]config.Node(nil), nodes...)
	want := map[string]config.Node{}
	srcs := make([]string, 0, len(a.sources))
	for s := range a.sources {
		srcs = append(srcs, s)
	}
	sort.Strings(srcs)
	for i, s := range srcs { // "config" last, so it wins
		if s == "config" {
			srcs = append(append(srcs[:i:i], srcs[i+1:]...), "config")
			break
		}
	}
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
		if n.Service != st.cfg.Service || n.Kind != st.cfg.Kind {
			a.gone = append(a.gone, st.cfg.Service+"/"+name)
			a.metrics.forget(st.cfg)
			a.nodes[name] = newNodeState(n)
			continue
		}
		st.cfg = n
	}
	for name, n := range want {
		if _, ok := a.nodes[name]; !ok {
			a.nodes[name] = newNodeState(n)
			a.log.Info("node added", "node", name, "kind", n.Kind, "service", n.Service, "source", n.Source)
		}
	}
}

func newNodeState(n config.Node) *nodeState {
	return &nodeState{cfg: n, damper: verdict.NewDamper(n.Thresholds.FailAfter, n.Thresholds.PassAfter)}
}

// SetReferences replaces the external head references.
func (a *Agent) SetReferences(refs []config.Reference) {
	a.mu.Lock()
	a.refs = append([]config.Reference(nil), refs...)
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
	a.log.Info("agent started", "id", a.id, "nodes", a.NodeCount(), "interval", a.cfg.IntervalDur, "listen", a.cfg.Listen)

	tick := time.NewTicker(a.cfg.IntervalDur)
	defer tick.Stop()
	for {
		a.Step(ctx)
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-tick.C:
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

// Step does one pass: probe every node and reference, judge, publish heads and checks.
func (a *Agent) Step(ctx context.Context) {
	started := time.Now()
	a.mu.Lock()
	states := make([]*nodeState, 0, len(a.nodes))
	for _, st := range a.nodes {
		states = append(states, st)
	}
	refs := append([]config.Reference(nil), a.refs...)
	gone := a.gone
	a.gone = nil
	a.mu.Unlock()
	sort.Slice(states, func(i, j int) bool { return states[i].cfg.Name < states[j].cfg.Name })

	// Probe nodes and references in parallel, each under the probe deadline.
	results := make([]probe.Result, len(states))
	refResults := make([]probe.Result, len(refs))
	sem := make(chan struct{}, maxParallelProbes)
	var wg sync.WaitGroup
	run := func(out *probe.Result, t probe.Target) {
		defer wg.Done()
		sem <- struct{}{}
		defer func() { <-sem }()
		pctx, cancel := context.WithTimeout(ctx, a.cfg.TimeoutDur)
		defer cancel()
		*out = probe.Run(pctx, a.client, t)
	}
	for i, st := range states {
		wg.Add(1)
		go run(&results[i], probe.Target{Name: st.cfg.Name, Kind: st.cfg.Kind, URL: st.cfg.RPC,
			APIKey: st.cfg.APIKey, APISecret: st.cfg.APISecret})
	}
	for i, r := range refs {
		wg.Add(1)
		go run(&refResults[i], probe.Target{Name: r.Name, Kind: r.Kind, URL: r.RPC})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	probed := time.Now()
	now := a.now()

	// Network heads: fresh heads from KV, this pass's own nodes, and references.
	local := map[string]verdict.Head{}
	consider := func(service string, h verdict.Head) {
		if h.Height > local[service].Height {
			local[service] = h
		}
	}
	var pub []heads.Head
	for i, st := range states {
		r := results[i]
		a.metrics.observeProbe(st.cfg, r)
		if r.Err != nil || !r.HasHeight || r.Height == 0 || !chainMatches(st.cfg, r) {
			continue
		}
		if r.Height != st.lastSeen {
			st.lastSeen, st.since = r.Height, now
		}
		consider(st.cfg.Service, verdict.Head{Height: r.Height, Node: st.cfg.Name, Observed: now})
		pub = append(pub, heads.Head{Service: st.cfg.Service, Node: st.cfg.Name, Height: r.Height, Peers: r.Peers,
			BlockTime: r.BlockTime, Observed: st.since, Agent: a.id})
	}
	for i, ref := range refs {
		r := refResults[i]
		if r.Err != nil {
			a.metrics.referenceUp.WithLabelValues(ref.Name, ref.Service).Set(0)
			a.log.Debug("reference failed, ignored", "reference", ref.Name, "error", r.Err)
			continue
		}
		if want := a.serviceChain(states, ref.Service); want != "" && r.ChainID != want {
			a.metrics.referenceUp.WithLabelValues(ref.Name, ref.Service).Set(0)
			a.log.Warn("reference is on another chain, ignored", "reference", ref.Name, "chain", r.ChainID, "want", want)
			continue
		}
		a.metrics.referenceUp.WithLabelValues(ref.Name, ref.Service).Set(1)
		consider(ref.Service, verdict.Head{Height: r.Height, Node: ref.Name, Observed: now})
	}
	networkHead := func(service string) verdict.Head {
		best := local[service]
		if h, ok := a.heads.Network(service, now, a.cfg.HeadMaxAgeDur); ok && h.Height > best.Height {
			best = verdict.Head{Height: h.Height, Node: h.Node, Observed: h.Observed}
		}
		return best
	}

	services := make([]registry.Service, 0, len(states))
	for i, st := range states {
		r := results[i]
		head := networkHead(st.cfg.Service)
		rep := verdict.Judge(verdict.Input{Kind: st.cfg.Kind, Result: r, Head: head, WantChain: wantChain(st.cfg),
			Standby: strings.Contains(st.cfg.Role, "standby"), Thresholds: st.cfg.Thresholds, Now: now})
		raw := rep.Status
		status, changed := st.damper.Observe(raw)
		rep.Status = status
		a.mu.Lock()
		prev := st.report.Status
		st.report, st.result, st.updated = rep, r, now
		if r.Version != "" {
			st.version = r.Version
		}
		if r.Client != "" {
			st.client = r.Client
		}
		a.mu.Unlock()
		if changed {
			a.metrics.transitions.WithLabelValues(st.cfg.Name, st.cfg.Service, status.String()).Inc()
			a.log.Info("node status changed", "node", st.cfg.Name, "from", prev, "to", status, "output", rep.Output())
		}
		a.metrics.observeVerdict(st.cfg, rep, head)
		services = append(services, a.service(st, rep))
	}

	if _, err := a.heads.Publish(ctx, pub, gone); err != nil {
		a.mu.Lock()
		a.gone = append(a.gone, gone...) // try the deletes again next pass
		a.mu.Unlock()
		a.log.Debug("publish heads failed", "error", err)
	}
	published := time.Now()
	err := a.reg.Sync(ctx, services)
	a.metrics.consulUp.Set(boolGauge(!a.reg.Down()))
	a.metrics.consulWrites.Set(float64(a.reg.Writes()))
	if err != nil {
		a.log.Debug("consul sync failed", "error", err)
	}
	took := time.Since(started)
	a.metrics.stepSeconds.Observe(took.Seconds())
	if took > a.cfg.IntervalDur {
		a.log.Warn("a pass took longer than the interval", "took", took, "probe", probed.Sub(started),
			"publish", published.Sub(probed), "consul", time.Since(published), "nodes", len(states))
	}
}

func (a *Agent) serviceChain(states []*nodeState, service string) string {
	for _, st := range states {
		if st.cfg.Service == service {
			return wantChain(st.cfg)
		}
	}
	return ""
}

// wantChain is the chain id (ethereum, decimal) or network (cometbft) a node must report.
func wantChain(n config.Node) string {
	switch n.Kind {
	case config.KindEthereum:
		if n.ChainID != nil {
			return strconv.FormatUint(*n.ChainID, 10)
		}
	case config.KindCometBFT:
		return n.Network
	}
	return ""
}

func chainMatches(n config.Node, r probe.Result) bool {
	w := wantChain(n)
	return w == "" || r.ChainID == w
}

// service is the Consul registration of a node with its check state.
func (a *Agent) service(st *nodeState, rep verdict.Report) registry.Service {
	n := st.cfg
	meta := map[string]string{"kind": n.Kind, "chain": n.Kind, "node": n.Name, "source": n.Source}
	if n.Network != "" {
		meta["network"] = n.Network
	} else {
		meta["network"] = n.Service
	}
	if c := wantChain(n); c != "" && n.Kind == config.KindEthereum {
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
