package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ethfake"
	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/testenv"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// unit is an agent on fakes: Consul in memory and a clock the test moves. Its nodes are ethfake servers on
// loopback, probed for real.
type unit struct {
	*Agent
	consul *fakes.Consul
	clock  *fakes.Clock
}

func newFakeEth(t *testing.T, height uint64, clk *fakes.Clock) (*ethfake.Node, string) {
	n := ethfake.New(height, 1, clk.Now)
	srv := httptest.NewServer(n)
	t.Cleanup(srv.Close)
	return n, srv.URL
}

// newUnit builds an agent whose passes the test drives with Step.
func newUnit(t *testing.T, clk *fakes.Clock, blocks string) *unit {
	return newUnitEvery(t, clk, "1s", blocks)
}

// newUnitEvery builds an agent with the given interval.
func newUnitEvery(t *testing.T, clk *fakes.Clock, interval, blocks string) *unit {
	t.Helper()
	src := fmt.Sprintf("consul {}\ninterval = %q\nhead_max_age = \"30s\"\n%s", interval, blocks)
	cfg, err := config.Parse([]byte(src), "step.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c := fakes.NewConsul()
	a, err := New(cfg, hclog.NewNullLogger(), Options{ID: "host-a", Clock: clk, HeadClaimWindow: -1, Consul: Consul{Agent: c, KV: c, Txn: c, Sessions: c, Catalog: c}})
	if err != nil {
		t.Fatal(err)
	}
	return &unit{Agent: a, consul: c, clock: clk}
}

func (u *unit) check(t *testing.T, node string) (string, string) {
	t.Helper()
	st, out, ok := u.consul.Check(registry.CheckID(node))
	if !ok {
		t.Fatalf("no check of %s in consul", node)
	}
	return st, out
}

func health(t *testing.T, a *Agent, node string) NodeHealth {
	t.Helper()
	for _, h := range a.Health() {
		if h.Node == node {
			return h
		}
	}
	t.Fatalf("no node %s", node)
	return NodeHealth{}
}

func node(name, url string, passAfter int) string {
	return fmt.Sprintf("node %q {\n  kind = \"ethereum\"\n  rpc = %q\n  service = \"eth-mainnet\"\n  chain_id = 1\n  fail_after = 2\n  pass_after = %d\n}\n", name, url, passAfter)
}

func start() *fakes.Clock { return fakes.NewClock(time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)) }

// twoNodes is an agent watching geth-a at heightA and geth-b at heightB (service eth-mainnet, fail_after 2).
func twoNodes(t *testing.T, heightA, heightB uint64, passAfter int) (*unit, *ethfake.Node) {
	clk := start()
	a1, u1 := newFakeEth(t, heightA, clk)
	_, u2 := newFakeEth(t, heightB, clk)
	return newUnit(t, clk, node("geth-a", u1, passAfter)+node("geth-b", u2, passAfter)), a1
}

// Damping, driven pass by pass: a new node needs 3 good passes, a lagging one 2 bad ones; Consul follows.
func TestStepDampingAndLag(t *testing.T) {
	a, a1 := twoNodes(t, 100, 100, 3)
	clk := a.clock
	ctx := context.Background()

	for i, w := range []string{"critical", "critical", "passing"} {
		a.Step(ctx)
		if got := health(t, a.Agent, "geth-a").Status; got != w {
			t.Fatalf("pass %d: %s, want %s", i+1, got, w)
		}
		if i == 0 { // held critical by damping: the catalog says why, never a bare "healthy" figure line
			st, out := a.check(t, "geth-a")
			if want := "recovering: 1 of 3 good probes; last probe: height 100, at head 100, 5 peers, last block 1s ago, finalized 96"; st != "critical" || out != want {
				t.Fatalf("consul after the first pass: %s %q, want critical %q", st, out, want)
			}
		}
		clk.Advance(time.Second)
	}
	if st, out := a.check(t, "geth-a"); st != "passing" || out != "height 100, at head 100, 5 peers, last block 1s ago, finalized 96" {
		t.Fatalf("consul: %s %q", st, out)
	}

	a1.SetHead(95, clk.Now().Add(-5*time.Second)) // 5 behind geth-b: warning after 2 passes
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" || h.Lag != 5 {
		t.Fatalf("one bad pass is damped: %+v", h)
	}
	a.Step(ctx)
	h := health(t, a.Agent, "geth-a")
	if h.Status != "warning" || !strings.Contains(h.Output, "5 behind head 100 (geth-b)") {
		t.Fatalf("after two bad passes: %+v", h)
	}
	if st, _ := a.check(t, "geth-a"); st != "warning" {
		t.Fatalf("consul has %s", st)
	}
	// Both heads were published to KV for the other agents.
	if keys := a.consul.Keys(kvlayout.New("").ServiceHeads("eth-mainnet")); len(keys) != 2 {
		t.Fatalf("heads in KV: %v", keys)
	}
}

// The network head is the max of this agent's nodes, fresh heads other agents published to KV, and references that
// answer on the right chain. A stale head and a failing or wrong-chain reference are ignored.
func TestStepNetworkHeadFromKVAndReferences(t *testing.T) {
	clk := start()
	_, u := newFakeEth(t, 100, clk)
	ref, refURL := newFakeEth(t, 100, clk)
	a := newUnit(t, clk, node("geth-a", u, 1)+
		fmt.Sprintf("reference \"provider\" {\n  service = \"eth-mainnet\"\n  rpc = %q\n}\n", refURL))
	ctx := context.Background()
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" || h.Head != 100 {
		t.Fatalf("start: %+v", h)
	}
	now := clk.Now()
	// Another agent's node is at 150, but its head is 2 minutes old: ignored.
	other := heads.New(a.consul, a.consul, kvlayout.New(""), hclog.NewNullLogger(), clk)
	if _, err := other.Publish(ctx, []heads.Head{{Service: "eth-mainnet", Node: "geth-far", Height: 150, Observed: now.Add(-2 * time.Minute), Agent: "host-b"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.heads.WatchOnce(ctx, 0); err != nil {
		t.Fatal(err)
	}
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Head != 100 || h.Status != "passing" {
		t.Fatalf("a stale head counted: %+v", h)
	}

	// A fresh one counts: 104 makes geth-a 4 behind (warning after fail_after=2 passes).
	if _, err := other.Publish(ctx, []heads.Head{{Service: "eth-mainnet", Node: "geth-near", Height: 104, Observed: now.Add(-5 * time.Second), Agent: "host-b"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.heads.WatchOnce(ctx, 0); err != nil {
		t.Fatal(err)
	}
	a.Step(ctx)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Head != 104 || h.HeadNode != "geth-near" || h.Status != "warning" {
		t.Fatalf("fresh KV head: %+v", h)
	}
	// What counted, by origin: the own node, the other agent's fresh head (not its stale one), the reference.
	m := metricsText(t, a.Agent)
	for _, want := range []string{
		`chainwarden_network_head_sources{origin="own",service="eth-mainnet"} 1`,
		`chainwarden_network_head_sources{origin="other_agents",service="eth-mainnet"} 1`,
		`chainwarden_network_head_sources{origin="reference",service="eth-mainnet"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// The reference runs ahead at 112, as far as the chain can have grown since geth-near's head was first seen
	// (5 s ago at a block a second, and 2 blocks of margin): critical (12 > max_lag 10), named as the head.
	ref.Height.Store(112)
	a.Step(ctx)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Head != 112 || h.HeadNode != "provider" || h.Status != "critical" {
		t.Fatalf("reference head: %+v", h)
	}
	// Far beyond that, it is not corroborated: it does not move the head, and it is flagged (log, metric, KV).
	ref.Height.Store(5000)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Head != 104 || h.HeadNode != "geth-near" {
		t.Fatalf("a reference far ahead moved the head: %+v", h)
	}
	flag := a.consul.Key(kvlayout.New("").Flag("eth-mainnet", "host-a", "provider"))
	if !strings.Contains(string(flag), `"reason":"head 5000 not corroborated`) || !strings.Contains(string(flag), `"reference":true`) {
		t.Fatalf("flag in KV: %s", flag)
	}
	ref.Height.Store(100)
	// A failing reference is ignored; so is one on another chain.
	ref.Down.Store(true)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Head != 104 {
		t.Fatalf("failing reference still counted: %+v", h)
	}
	ref.Down.Store(false)
	ref.ChainID.Store(5)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Head != 104 {
		t.Fatalf("wrong-chain reference counted: %+v", h)
	}
	// Time passes: the KV head goes stale too, and geth-a is at the head again.
	clk.Advance(time.Minute)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Head != 100 || h.Lag != 0 {
		t.Fatalf("after the KV head aged out: %+v", h)
	}
}

// A node removed from the config is deregistered and its head deleted from KV; a node the config and Nomad both
// name is the config's.
func TestSetNodesRemovesAndConfigWins(t *testing.T) {
	a, _ := twoNodes(t, 100, 100, 1)
	ctx := context.Background()
	a.Step(ctx)
	layout := kvlayout.New("")
	if a.consul.Key(layout.Head("eth-mainnet", "geth-b")) == nil {
		t.Fatal("geth-b's head not published")
	}
	keep := a.cfg.Nodes[0]
	a.SetNodes(nodespec.SourceConfig, []nodespec.Node{keep})
	a.Step(ctx)
	if ids := a.consul.ServiceIDs(); len(ids) != 1 || ids[0] != "geth-a" {
		t.Fatalf("services after removal: %v", ids)
	}
	if a.consul.Key(layout.Head("eth-mainnet", "geth-b")) != nil {
		t.Fatal("geth-b's head still in KV")
	}

	discovered := keep
	discovered.Service, discovered.Source = "eth-other", nodespec.SourceNomad
	a.SetNodes(nodespec.SourceNomad, []nodespec.Node{discovered})
	a.Step(ctx)
	if s := a.consul.ServiceByID("geth-a"); s == nil || s.Service != "eth-mainnet" || s.Meta["source"] != "config" {
		t.Fatalf("the config's node must win: %+v", s)
	}
}

// A Consul outage: passes go on (verdicts on HTTP keep changing), the agent says Consul is down, and when Consul is
// back without its state everything is registered and published again.
func TestConsulOutageAndLostState(t *testing.T) {
	clk := start()
	n, u := newFakeEth(t, 100, clk)
	a := newUnit(t, clk, node("geth-a", u, 1))
	ctx := context.Background()
	a.Step(ctx)
	a.consul.SetDown(true)
	n.Down.Store(true)
	for range 3 {
		clk.Advance(time.Second)
		a.Step(ctx)
	}
	if h := health(t, a.Agent, "geth-a"); h.Status != "critical" {
		t.Fatalf("verdict stopped during the outage: %+v", h)
	}
	a.consul.Wipe(true)
	a.consul.SetDown(false)
	n.Down.Store(false)
	for i := 0; ; i++ {
		clk.Advance(time.Second)
		a.Step(ctx)
		if _, _, ok := a.consul.Check(registry.CheckID("geth-a")); ok && a.consul.Key(kvlayout.New("").Head("eth-mainnet", "geth-a")) != nil {
			break
		}
		if i > 40 {
			t.Fatal("not registered and published again after the outage")
		}
	}
}

// Run's loop passes on the clock's ticks, not on wall time: with an hour's interval, the second pass comes only
// when the test moves the clock.
func TestLoopTicksOnTheClock(t *testing.T) {
	clk := start()
	n, u := newFakeEth(t, 100, clk)
	a := newUnitEvery(t, clk, "1h", node("geth-a", u, 1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.loop(ctx, nil) }()
	height := func(want uint64) func() error {
		return func() error {
			if h := health(t, a.Agent, "geth-a"); h.Height != want {
				return fmt.Errorf("height %d, want %d", h.Height, want)
			}
			return nil
		}
	}
	testenv.Eventually(t, 10*time.Second, "the first pass", height(100))
	n.Height.Store(101)
	clk.Advance(time.Hour)
	testenv.Eventually(t, 10*time.Second, "a pass on the tick", height(101))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Discovery swaps the node set and the HTTP handlers read verdicts while passes run: the race detector must find
// nothing (go test -race), and every read sees a consistent node.
func TestConcurrentDiscoveryHTTPAndPasses(t *testing.T) {
	clk := start()
	_, u1 := newFakeEth(t, 100, clk)
	_, u2 := newFakeEth(t, 100, clk)
	a := newUnit(t, clk, node("geth-a", u1, 1))
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	id := uint64(1)
	nomadNode := func(rpc string, maxLag uint64) nodespec.Node {
		n := nodespec.Node{Name: "nomad-0", Kind: probe.Ethereum, RPC: rpc, Service: "eth-mainnet", ChainID: &id,
			MaxLag: &maxLag, Source: nodespec.SourceNomad}
		if errs := n.Normalize(); errs != nil {
			t.Fatal(errs)
		}
		return n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { // discovery
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			rpc := []string{u1, u2}[i%2]
			a.SetNodes(nodespec.SourceNomad, []nodespec.Node{nomadNode(rpc, uint64(10+i%5))})
			if i%7 == 0 {
				a.SetNodes(nodespec.SourceNomad, nil)
			}
		}
	}()
	go func() { // load balancers and people
		defer wg.Done()
		for ctx.Err() == nil {
			for _, path := range []string{"/v1/health", "/v1/health/geth-a", "/v1/health/nomad-0", "/metrics"} {
				resp, err := http.Get(srv.URL + path)
				if err == nil {
					resp.Body.Close()
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			_ = a.Health()
			_ = a.NodeCount()
		}
	}()
	for range 30 {
		a.Step(ctx)
		clk.Advance(time.Second)
	}
	cancel()
	wg.Wait()
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" {
		t.Fatalf("geth-a: %+v", h)
	}
}

// A hung node makes passes overrun the interval: the agent says so once, naming the node, and once when it ends.
func TestSlowPassesLoggedOnceNamingTheNode(t *testing.T) {
	clk := start()
	_, fast := newFakeEth(t, 100, clk)
	hang := make(chan struct{})
	hung := true
	var mu sync.Mutex
	eth := ethfake.New(100, 1, clk.Now)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		h := hung
		mu.Unlock()
		if h {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		eth.ServeHTTP(w, r)
	}))
	defer srv.Close()
	defer close(hang)
	src := fmt.Sprintf("consul {}\ninterval = \"100ms\"\ntimeout = \"300ms\"\n%s%s", node("geth-fast", fast, 1), node("geth-hung", srv.URL, 1))
	cfg, err := config.Parse([]byte(src), "slow.hcl")
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var logMu sync.Mutex
	log := hclog.New(&hclog.LoggerOptions{Output: lockedWriter{&logMu, &logs}, Level: hclog.Info})
	c := fakes.NewConsul()
	a, err := New(cfg, log, Options{ID: "host-a", Clock: clk, HeadClaimWindow: -1, Consul: Consul{Agent: c, KV: c, Txn: c, Sessions: c, Catalog: c}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		a.Step(ctx)
	}
	mu.Lock()
	hung = false
	mu.Unlock()
	a.Step(ctx)
	a.Step(ctx)
	logMu.Lock()
	out := logs.String()
	logMu.Unlock()
	if n := strings.Count(out, "passes take longer than the interval"); n != 1 {
		t.Fatalf("%d slow-pass warnings, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "slowest=\"geth-hung ") || !strings.Contains(out, "(timed out)") {
		t.Fatalf("the warning does not name the hung node first:\n%s", out)
	}
	if n := strings.Count(out, "passes are within the interval again"); n != 1 {
		t.Fatalf("%d recovery lines, want 1:\n%s", n, out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// restarted is a new agent (same ID, same configuration) on the Consul of u: the agent process restarted, its
// Consul agent did not.
func (u *unit) restarted(t *testing.T, blocks string) *unit {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf("consul {}\ninterval = \"1s\"\nhead_max_age = \"30s\"\n%s", blocks)), "step.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c := u.consul
	a, err := New(cfg, hclog.NewNullLogger(), Options{ID: "host-a", Clock: u.clock, HeadClaimWindow: -1,
		Consul: Consul{Agent: c, KV: c, Txn: c, Sessions: c, Catalog: c}})
	if err != nil {
		t.Fatal(err)
	}
	return &unit{Agent: a, consul: c, clock: u.clock}
}

// A restarted agent resumes the statuses its earlier run left in Consul: a passing node stays passing (no
// pass_after probes out of service), a node whose probes now fail goes critical after fail_after as any would, and
// a node that was critical, or another allocation under the same name, starts critical.
func TestRestartedAgentResumesConsulsStatus(t *testing.T) {
	clk := start()
	na, ua := newFakeEth(t, 100, clk)
	_, ub := newFakeEth(t, 100, clk)
	blocks := node("geth-a", ua, 3) + node("geth-b", ub, 3) + node("geth-c", "http://127.0.0.1:1", 3)
	u := newUnit(t, clk, blocks)
	ctx := context.Background()
	for range 3 {
		u.Step(ctx)
		clk.Advance(time.Second)
	}
	for n, want := range map[string]string{"geth-a": "passing", "geth-b": "passing", "geth-c": "critical"} {
		if st, _ := u.check(t, n); st != want {
			t.Fatalf("before the restart %s is %s, want %s", n, st, want)
		}
	}

	r := u.restarted(t, blocks)
	r.Step(ctx)
	for n, want := range map[string]string{"geth-a": "passing", "geth-b": "passing", "geth-c": "critical"} {
		if h := health(t, r.Agent, n); h.Status != want {
			t.Fatalf("after the restart %s is %s (%s), want %s", n, h.Status, h.Output, want)
		}
		if st, _ := r.check(t, n); st != want {
			t.Fatalf("after the restart consul has %s %s, want %s", n, st, want)
		}
	}

	na.Down.Store(true) // fail_after 2: critical at the second failed probe, not before
	clk.Advance(time.Second)
	r.Step(ctx)
	if h := health(t, r.Agent, "geth-a"); h.Status != "passing" {
		t.Fatalf("geth-a after one failed probe: %s", h.Status)
	}
	clk.Advance(time.Second)
	r.Step(ctx)
	if h := health(t, r.Agent, "geth-a"); h.Status != "critical" {
		t.Fatalf("geth-a after two failed probes: %s", h.Status)
	}
}

// Only the very registration resumes: another service, kind or Nomad allocation under the name starts critical.
func TestResumeOnlyTheSameRegistration(t *testing.T) {
	u := newUnit(t, start(), "")
	n := nodespec.Node{Name: "geth-a", Service: "eth-mainnet", Kind: probe.Ethereum, AllocID: "alloc-2"}
	for _, c := range []struct {
		s    registry.Standing
		want verdict.Status
	}{
		{registry.Standing{Service: "eth-mainnet", Meta: map[string]string{"kind": "ethereum", "alloc_id": "alloc-2"}, Status: "passing"}, verdict.Passing},
		{registry.Standing{Service: "eth-mainnet", Meta: map[string]string{"kind": "ethereum", "alloc_id": "alloc-2"}, Status: "warning"}, verdict.Warning},
		{registry.Standing{Service: "eth-mainnet", Meta: map[string]string{"kind": "ethereum", "alloc_id": "alloc-1"}, Status: "passing"}, verdict.Critical},
		{registry.Standing{Service: "eth-sepolia", Meta: map[string]string{"kind": "ethereum", "alloc_id": "alloc-2"}, Status: "passing"}, verdict.Critical},
		{registry.Standing{Service: "eth-mainnet", Meta: map[string]string{"kind": "cometbft", "alloc_id": "alloc-2"}, Status: "passing"}, verdict.Critical},
	} {
		u.mu.Lock()
		st := u.newNodeState(n)
		u.resumeNode(st, c.s)
		got := st.damper.Current()
		u.mu.Unlock()
		if got != c.want {
			t.Errorf("%+v: %s, want %s", c.s, got, c.want)
		}
	}
}
