package agent

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/ethfake"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

func nodeWith(name, url, extra string) string {
	return fmt.Sprintf("node %q {\n  kind = \"ethereum\"\n  rpc = %q\n  service = \"eth-mainnet\"\n  chain_id = 1\n  fail_after = 1\n  pass_after = 1\n%s}\n",
		name, url, extra)
}

func metricsText(t *testing.T, a *Agent) string {
	t.Helper()
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A node that reports a height far ahead of the others (a buggy client, a node of another network) does not take
// the service down: the head stays with the others, the liar is critical and says why, a metric counts it.
func TestStepLiarDoesNotMoveTheHead(t *testing.T) {
	clk := start()
	_, u1 := newFakeEth(t, 100, clk)
	_, u2 := newFakeEth(t, 100, clk)
	liar, u3 := newFakeEth(t, 100, clk)
	a := newUnit(t, clk, nodeWith("geth-a", u1, "")+nodeWith("geth-b", u2, "")+nodeWith("geth-liar", u3, ""))
	ctx := context.Background()
	a.Step(ctx)
	liar.Height.Store(99999999)
	clk.Advance(time.Second)
	a.Step(ctx)
	for _, n := range []string{"geth-a", "geth-b"} {
		if h := health(t, a.Agent, n); h.Status != "passing" || h.Head != 100 {
			t.Fatalf("%s: %+v", n, h)
		}
	}
	h := health(t, a.Agent, "geth-liar")
	if h.Status != "critical" || !strings.HasPrefix(h.Output, "head 99999999 not corroborated: the other sources put the chain at 104 at most (geth-a is at 100") {
		t.Fatalf("liar: %+v", h)
	}
	st, out := a.check(t, "geth-liar")
	if st != "critical" || !strings.Contains(out, "not corroborated") {
		t.Fatalf("liar's check: %s %q", st, out)
	}
	m := metricsText(t, a.Agent)
	for _, want := range []string{
		`chainwarden_head_source_flagged{kind="not_corroborated",service="eth-mainnet",source="geth-liar"} 1`,
		`chainwarden_head_flags_total{kind="not_corroborated",service="eth-mainnet",source="geth-liar"} 1`,
		`chainwarden_network_head{service="eth-mainnet"} 100`,
		`chainwarden_network_head_sources{origin="own",service="eth-mainnet"} 2`, // the liar does not count
		`chainwarden_network_head_sources{origin="other_agents",service="eth-mainnet"} 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// Its head still goes to KV (other agents judge it by the same rule), and so does the flag.
	if a.consul.Key(kvlayout.New("").Flag("eth-mainnet", "host-a", "geth-liar")) == nil {
		t.Fatal("no flag in KV")
	}
	// Back to the truth: it counts again, the flag is gone.
	liar.Height.Store(101)
	clk.Advance(time.Second)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-liar"); h.Status != "passing" {
		t.Fatalf("liar back: %+v", h)
	}
	if a.consul.Key(kvlayout.New("").Flag("eth-mainnet", "host-a", "geth-liar")) != nil {
		t.Fatal("flag still in KV")
	}
	if m := metricsText(t, a.Agent); strings.Contains(m, `chainwarden_head_source_flagged{`) {
		t.Fatal("flagged gauge still set")
	}
}

// Nodes of one service on two branches (the same chain id): the node on the minority branch is on a fork, found by
// asking for the block at a common height.
func TestStepForkByBlockHash(t *testing.T) {
	clk := start()
	_, u1 := newFakeEth(t, 100, clk)
	_, u2 := newFakeEth(t, 100, clk)
	other, u3 := newFakeEth(t, 130, clk)
	other.Branch.Store(7)
	a := newUnit(t, clk, nodeWith("geth-a", u1, "")+nodeWith("geth-b", u2, "")+nodeWith("geth-c", u3, ""))
	ctx := context.Background()
	a.Step(ctx)
	h := health(t, a.Agent, "geth-c")
	want := fmt.Sprintf("on a fork: block 98 is %s here, %s on geth-a, geth-b", ethfake.Hash(7, 98)[:12], ethfake.Hash(0, 98)[:12])
	if h.Status != "critical" || !strings.HasPrefix(h.Output, want) {
		t.Fatalf("geth-c: %+v\nwant %s", h, want)
	}
	for _, n := range []string{"geth-a", "geth-b"} {
		if h := health(t, a.Agent, n); h.Status != "passing" || h.Head != 100 {
			t.Fatalf("%s: %+v", n, h)
		}
	}
	// With only heads and parents known, no two nodes have a common height 2 below their heads (ethereum's
	// confirmations): each is asked once for block 98.
	if m := metricsText(t, a.Agent); !strings.Contains(m, "chainwarden_block_hash_lookups_total 3") {
		t.Fatalf("lookups: %s", grep(m, "lookups"))
	}
	// The next passes remember the hashes: no more lookups.
	for range 3 {
		clk.Advance(time.Second)
		a.Step(ctx)
	}
	if m := metricsText(t, a.Agent); !strings.Contains(m, "chainwarden_block_hash_lookups_total 3") {
		t.Fatalf("lookups: %s", grep(m, "lookups"))
	}
	if h := health(t, a.Agent, "geth-c"); h.Status != "critical" {
		t.Fatalf("geth-c: %+v", h)
	}
}

// Lag in time: a node judged by time alone (warn_behind, max_behind without block thresholds) turns warning, then
// critical, as the time it has been behind grows; blocks don't matter.
func TestStepLagInTime(t *testing.T) {
	clk := start()
	lag, u1 := newFakeEth(t, 100, clk)
	head, u2 := newFakeEth(t, 100, clk)
	timed := "  warn_behind = \"20s\"\n  max_behind = \"1m\"\n"
	a := newUnit(t, clk, nodeWith("geth-a", u1, timed)+nodeWith("geth-b", u2, timed))
	ctx := context.Background()
	a.Step(ctx)
	lag.SetHead(100, clk.Now().Add(-time.Second)) // geth-a stops at 100
	for _, step := range []struct {
		advance time.Duration
		height  uint64
		want    string
		behind  float64
	}{
		{time.Second, 101, "passing", 0},       // the chain goes on at a block a second
		{10 * time.Second, 111, "passing", 10}, // 11 blocks behind: no block thresholds
		{15 * time.Second, 126, "warning", 25},
		{40 * time.Second, 166, "critical", 65},
	} {
		clk.Advance(step.advance)
		head.Height.Store(step.height)
		a.Step(ctx)
		h := health(t, a.Agent, "geth-a")
		if h.Status != step.want || h.BehindSeconds != step.behind {
			t.Fatalf("after %s at %d: %s behind %vs: %s", step.advance, step.height, h.Status, h.BehindSeconds, h.Output)
		}
	}
	if h := health(t, a.Agent, "geth-a"); !strings.HasPrefix(h.Output, "behind the head for 1m5s, more than max_behind 1m0s — height 100, 66 behind head 166 (geth-b) for 1m5s") {
		t.Fatalf("output %q", h.Output)
	}
	if m := metricsText(t, a.Agent); !strings.Contains(m, `chainwarden_node_behind_seconds{kind="ethereum",node="geth-a",service="eth-mainnet"} 65`) {
		t.Fatalf("metrics: %s", grep(m, "behind"))
	}
}

// A node whose finalized block stalls while the network's moves on is warning after max_finalized_behind.
func TestStepFinalizedStalls(t *testing.T) {
	clk := start()
	stalled, u1 := newFakeEth(t, 100, clk)
	good, u2 := newFakeEth(t, 100, clk)
	fin := "  max_finalized_behind = \"30s\"\n"
	a := newUnit(t, clk, nodeWith("geth-a", u1, fin)+nodeWith("geth-b", u2, fin))
	ctx := context.Background()
	stalled.Finalized.Store(64)
	good.Finalized.Store(64)
	a.Step(ctx)
	good.Finalized.Store(96)
	for _, step := range []struct {
		advance time.Duration
		want    string
	}{{time.Second, "passing"}, {20 * time.Second, "passing"}, {15 * time.Second, "warning"}} {
		clk.Advance(step.advance)
		a.Step(ctx)
		if h := health(t, a.Agent, "geth-a"); h.Status != step.want || h.Finalized != 64 {
			t.Fatalf("after %s: %+v", step.advance, h)
		}
	}
	h := health(t, a.Agent, "geth-a")
	if !strings.HasPrefix(h.Output, "finalized block 64 behind the network's 96 (geth-b) for 35s, more than max_finalized_behind 30s — height 100, at head 100") {
		t.Fatalf("output %q", h.Output)
	}
	if h := health(t, a.Agent, "geth-b"); h.Status != "passing" || !strings.HasSuffix(h.Output, "finalized 96") {
		t.Fatalf("geth-b: %+v", h)
	}
	m := metricsText(t, a.Agent)
	if !strings.Contains(m, `chainwarden_network_finalized_height{service="eth-mainnet"} 96`) ||
		!strings.Contains(m, `chainwarden_node_finalized_height{kind="ethereum",node="geth-a",service="eth-mainnet"} 64`) {
		t.Fatalf("metrics: %s", grep(m, "finalized"))
	}
}

func grep(text, word string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, word) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A lone node with a provider as its reference: the reference is asked for its finalized block (the node is judged
// on finality), and the node's finalized block is judged against it.
func TestStepReferenceFinality(t *testing.T) {
	clk := start()
	node, u := newFakeEth(t, 100, clk)
	ref, refURL := newFakeEth(t, 100, clk)
	a := newUnit(t, clk, nodeWith("geth-a", u, "  max_finalized_behind = \"30s\"\n")+
		fmt.Sprintf("reference \"provider\" {\n  service = \"eth-mainnet\"\n  rpc = %q\n}\n", refURL))
	ctx := context.Background()
	node.Finalized.Store(64)
	ref.Finalized.Store(64)
	a.Step(ctx)
	ref.Finalized.Store(96)
	for _, step := range []struct {
		advance time.Duration
		want    string
	}{{time.Second, "passing"}, {35 * time.Second, "warning"}} {
		clk.Advance(step.advance)
		a.Step(ctx)
		if h := health(t, a.Agent, "geth-a"); h.Status != step.want {
			t.Fatalf("after %s: %+v", step.advance, h)
		}
	}
	if h := health(t, a.Agent, "geth-a"); !strings.HasPrefix(h.Output, "finalized block 64 behind the network's 96 (provider)") {
		t.Fatalf("output %q", h.Output)
	}
}
