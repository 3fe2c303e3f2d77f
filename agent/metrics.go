package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/push"
	"github.com/chainwarden/chainwarden/internal/restart"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// metrics are the agent's Prometheus series, on a registry of its own (no global state).
type metrics struct {
	reg          *prometheus.Registry
	height       *prometheus.GaugeVec
	head         *prometheus.GaugeVec
	lag          *prometheus.GaugeVec
	peers        *prometheus.GaugeVec
	blockAge     *prometheus.GaugeVec
	status       *prometheus.GaugeVec
	probeUp      *prometheus.GaugeVec
	probeSeconds *prometheus.HistogramVec
	transitions  *prometheus.CounterVec
	referenceUp  *prometheus.GaugeVec
	behind       *prometheus.GaugeVec
	finalized    *prometheus.GaugeVec
	safe         *prometheus.GaugeVec
	netFinalized *prometheus.GaugeVec
	netSources   *prometheus.GaugeVec
	flagged      *prometheus.GaugeVec
	flagsTotal   *prometheus.CounterVec
	lookups      prometheus.Counter
	stepSeconds  prometheus.Histogram
	consulUp     prometheus.Gauge
	consulWrites prometheus.Counter
	pushJudged   prometheus.Counter
	restarts     *prometheus.CounterVec
	withheld     *prometheus.CounterVec
	catchingUp   *prometheus.GaugeVec
}

var nodeLabels = []string{"node", "service", "kind"}

func newMetrics() *metrics {
	g := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "chainwarden", Name: name, Help: help}, labels)
	}
	m := &metrics{
		reg:      prometheus.NewRegistry(),
		height:   g("node_height", "Latest block height the node reports.", nodeLabels...),
		head:     g("network_head", "Highest fresh head of the node's network (service), from all agents and references.", "service"),
		lag:      g("node_lag_blocks", "Blocks the node is behind its network's head.", nodeLabels...),
		peers:    g("node_peers", "Peers the node reports.", nodeLabels...),
		blockAge: g("node_block_age_seconds", "Seconds since the node's latest block was made.", nodeLabels...),
		status:   g("node_status", "Damped verdict: 0 passing, 1 warning, 2 critical.", nodeLabels...),
		probeUp:  g("node_probe_success", "1 when the last probe of the node answered, else 0.", nodeLabels...),
		probeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "chainwarden", Name: "probe_duration_seconds",
			Help: "How long probes take.", Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"kind"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "chainwarden", Name: "status_transitions_total",
			Help: "Changes of a node's damped verdict, by the status it went to."}, []string{"node", "service", "to"}),
		stepSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "chainwarden", Name: "pass_duration_seconds",
			Help: "How long one pass over all nodes takes (probe, judge, publish).", Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 30}}),
		referenceUp: g("reference_up", "1 when the external reference answered on the right chain, else 0.", "reference", "service"),
		behind: g("node_behind_seconds", "How long the node has been behind its network's head: since the network first had a height the node has not reached (0 at the head).",
			nodeLabels...),
		finalized:    g("node_finalized_height", "The node's finalized block (Ethereum's \"finalized\" tag).", nodeLabels...),
		safe:         g("node_safe_height", "The node's safe block (Ethereum's \"safe\" tag).", nodeLabels...),
		netFinalized: g("network_finalized_height", "The network's finalized block: the highest of the sources that count toward its head.", "service"),
		netSources: g("network_head_sources", "Sources that counted toward the network's head in the last pass, by origin: this agent's own "+
			"nodes (own), the heads other agents published (other_agents), external references (reference). Other agents' "+
			"nodes at 0 while they run means this agent sees none of their heads.", "service", "origin"),
		flagged: g("head_source_flagged", "1 while a node or reference of this agent does not count toward its network's head: kind not_corroborated or fork.",
			"service", "source", "kind"),
		flagsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "chainwarden", Name: "head_flags_total",
			Help: "Times a node or reference of this agent was found not to count toward its network's head, by kind (not_corroborated, fork)."},
			[]string{"service", "source", "kind"}),
		lookups: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "chainwarden", Name: "block_hash_lookups_total",
			Help: "Calls made to ask a node or reference for block hashes by height, to compare branches."}),
		consulUp: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "chainwarden", Name: "consul_up", Help: "1 when the last Consul sync worked."}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "chainwarden", Name: "node_restarts_total",
			Help: "Restarts of stalled nodes through Nomad, by result (restarted, failed)."}, []string{"node", "service", "result"}),
		withheld: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "chainwarden", Name: "node_restarts_withheld_total",
			Help: "Restarts that were due but withheld, by reason (backoff, limit, lock, no_passing_node, consul); counted when the reason changes."}, []string{"node", "service", "reason"}),
		catchingUp:   g("node_catching_up", "1 while the node, restored from a snapshot, catches up with its network (critical meanwhile).", nodeLabels...),
		consulWrites: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "chainwarden", Name: "consul_writes_total", Help: "State-changing calls made to the Consul agent (registrations, check updates, deregistrations)."}),
		pushJudged: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "chainwarden", Name: "push_heads_judged_total",
			Help: "New heads that arrived by push (WebSocket) and were judged on arrival, not at the next probe."}),
	}
	m.reg.MustRegister(m.height, m.head, m.lag, m.peers, m.blockAge, m.status, m.probeUp, m.probeSeconds,
		m.transitions, m.stepSeconds, m.referenceUp, m.consulUp, m.consulWrites, m.pushJudged,
		m.behind, m.finalized, m.safe, m.netFinalized, m.netSources, m.flagged, m.flagsTotal, m.lookups, m.restarts, m.withheld, m.catchingUp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watchPush adds the gauge of nodes whose heads arrive by push.
func (m *metrics) watchPush(p *push.Manager) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "chainwarden", Name: "push_subscribed_nodes",
		Help: "Nodes whose new heads arrive by push (a WebSocket subscription is up); the others are polled every interval."},
		func() float64 { return float64(p.Subscribed()) }))
}

// labelValues are a node's values of nodeLabels, in their order: one slice for all of a node's series (a
// prometheus.Labels map would be built and hashed for each).
func labelValues(n *nodespec.Node) []string { return []string{n.Name, n.Service, string(n.Kind)} }

func (m *metrics) observeProbe(n *nodespec.Node, r probe.Result) {
	m.probeSeconds.WithLabelValues(string(n.Kind)).Observe(r.Duration.Seconds())
	m.probeUp.WithLabelValues(labelValues(n)...).Set(boolGauge(r.Err == nil))
}

func (m *metrics) observeVerdict(n *nodespec.Node, rep verdict.Report, head verdict.Head, netFinalized uint64) {
	l := labelValues(n)
	m.status.WithLabelValues(l...).Set(float64(rep.Status))
	m.catchingUp.WithLabelValues(l...).Set(boolGauge(rep.CatchingUp))
	if rep.Err != "" || n.Kind == probe.Chainlink {
		return
	}
	m.height.WithLabelValues(l...).Set(float64(rep.Height))
	m.peers.WithLabelValues(l...).Set(float64(rep.Peers))
	m.lag.WithLabelValues(l...).Set(float64(rep.Lag))
	m.blockAge.WithLabelValues(l...).Set(rep.BlockAge.Seconds())
	m.behind.WithLabelValues(l...).Set(rep.Behind.Seconds())
	if rep.HasFinalized {
		m.finalized.WithLabelValues(l...).Set(float64(rep.Finalized))
	}
	if rep.HasSafe {
		m.safe.WithLabelValues(l...).Set(float64(rep.Safe))
	}
	if head.Height > 0 {
		m.head.WithLabelValues(n.Service).Set(float64(head.Height))
	}
	if netFinalized > 0 {
		m.netFinalized.WithLabelValues(n.Service).Set(float64(netFinalized))
	}
}

func (m *metrics) observeRestart(e restart.Event) {
	if e.Kind == "withheld" {
		m.withheld.WithLabelValues(e.Node, e.Service, e.Reason).Inc()
		return
	}
	m.restarts.WithLabelValues(e.Node, e.Service, e.Kind).Inc()
}

// forget drops a removed node's series (not its restart counts: a node being restarted leaves the set for a moment).
func (m *metrics) forget(n *nodespec.Node) {
	l := labelValues(n)
	for _, v := range []*prometheus.GaugeVec{m.height, m.lag, m.peers, m.blockAge, m.status, m.probeUp, m.behind, m.finalized, m.safe, m.catchingUp} {
		v.DeleteLabelValues(l...)
	}
	m.transitions.DeletePartialMatch(prometheus.Labels{"node": n.Name, "service": n.Service})
}

// Metrics is the registry /metrics serves, for the series of work that runs beside the agent (volume growth).
func (a *Agent) Metrics() prometheus.Registerer { return a.metrics.reg }

// observeSources sets how many sources of each origin counted toward a service's head.
func (m *metrics) observeSources(service string, counted map[string]int) {
	for _, origin := range []string{originOwn, originOthers, originReference} {
		m.netSources.WithLabelValues(service, origin).Set(float64(counted[origin]))
	}
}

// forgetService drops a service's network series once this agent has no nodes in it.
func (m *metrics) forgetService(service string) {
	m.netSources.DeletePartialMatch(prometheus.Labels{"service": service})
}
