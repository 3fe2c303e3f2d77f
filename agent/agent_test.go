package agent

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ethfake"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

func newFakeEth(t *testing.T, height uint64, clock func() time.Time) (*ethfake.Node, string) {
	n := ethfake.New(height, 1, clock)
	srv := httptest.NewServer(n)
	t.Cleanup(srv.Close)
	return n, srv.URL
}

// stepAgent builds an agent whose passes the test drives with Step, on a clock the test sets.
func stepAgent(t *testing.T, c *testenv.Consul, clock *time.Time, blocks string) *Agent {
	t.Helper()
	src := fmt.Sprintf("consul {\n  address = %q\n}\ninterval = \"1s\"\nhead_max_age = \"30s\"\n%s", c.Addr, blocks)
	cfg, err := config.Parse([]byte(src), "step.hcl")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, hclog.NewNullLogger(), Options{ID: "host-a", Consul: c.Client, Now: func() time.Time { return *clock }})
	if err != nil {
		t.Fatal(err)
	}
	return a
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

// Damping, driven pass by pass with an injected clock: a new node needs 3 good passes, a lagging one 2 bad ones.
func TestStepDampingAndLag(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Consul")
	}
	c := testenv.StartConsul(t)
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	a1, u1 := newFakeEth(t, 100, clock)
	_, u2 := newFakeEth(t, 100, clock)
	a := stepAgent(t, c, &now, node("geth-a", u1, 3)+node("geth-b", u2, 3))
	ctx := context.Background()

	want := []string{"critical", "critical", "passing"}
	for i, w := range want {
		a.Step(ctx)
		if got := health(t, a, "geth-a").Status; got != w {
			t.Fatalf("pass %d: %s, want %s", i+1, got, w)
		}
		now = now.Add(time.Second)
	}
	if st, out, _ := c.CheckStatus("geth-a"); st != "passing" || out != "height 100, at head 100, 5 peers, last block 1s ago" {
		t.Fatalf("consul: %s %q", st, out)
	}

	a1.Height.Store(95) // 5 behind geth-b: warning after 2 passes
	a.Step(ctx)
	if h := health(t, a, "geth-a"); h.Status != "passing" || h.Lag != 5 {
		t.Fatalf("one bad pass is damped: %+v", h)
	}
	a.Step(ctx)
	h := health(t, a, "geth-a")
	if h.Status != "warning" || !strings.Contains(h.Output, "5 behind head 100 (geth-b)") {
		t.Fatalf("after two bad passes: %+v", h)
	}
	if st, _, _ := c.CheckStatus("geth-a"); st != "warning" {
		t.Fatalf("consul has %s", st)
	}
}

// The network head is the max of this agent's nodes, fresh heads other agents published to KV, and references that
// answer on the right chain. A stale head and a failing or wrong-chain reference are ignored.
func TestStepNetworkHeadFromKVAndReferences(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Consul")
	}
	c := testenv.StartConsul(t)
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	_, u := newFakeEth(t, 100, clock)
	ref, refURL := newFakeEth(t, 100, clock)
	a := stepAgent(t, c, &now, node("geth-a", u, 1)+
		fmt.Sprintf("reference \"provider\" {\n  service = \"eth-mainnet\"\n  rpc = %q\n}\n", refURL))
	ctx := context.Background()
	a.Step(ctx)
	if h := health(t, a, "geth-a"); h.Status != "passing" || h.Head != 100 {
		t.Fatalf("start: %+v", h)
	}

	// Another agent's node is at 150, but its head is 2 minutes old: ignored.
	other := heads.New(c.Client.KV(), c.Client.Txn(), "chainwarden", hclog.NewNullLogger())
	if _, err := other.Publish(ctx, []heads.Head{{Service: "eth-mainnet", Node: "geth-far", Height: 150, Observed: now.Add(-2 * time.Minute), Agent: "host-b"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.heads.WatchOnce(ctx, 0); err != nil {
		t.Fatal(err)
	}
	a.Step(ctx)
	if h := health(t, a, "geth-a"); h.Head != 100 || h.Status != "passing" {
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
	if h := health(t, a, "geth-a"); h.Head != 104 || h.HeadNode != "geth-near" || h.Status != "warning" {
		t.Fatalf("fresh KV head: %+v", h)
	}

	// The reference runs ahead at 120: critical (16 > max_lag 10), named as the head.
	ref.Height.Store(120)
	a.Step(ctx)
	a.Step(ctx)
	if h := health(t, a, "geth-a"); h.Head != 120 || h.HeadNode != "provider" || h.Status != "critical" {
		t.Fatalf("reference head: %+v", h)
	}
	// A failing reference is ignored; so is one on another chain.
	ref.Down.Store(true)
	a.Step(ctx)
	if h := health(t, a, "geth-a"); h.Head != 104 {
		t.Fatalf("failing reference still counted: %+v", h)
	}
	ref.Down.Store(false)
	ref.ChainID.Store(5)
	a.Step(ctx)
	if h := health(t, a, "geth-a"); h.Head != 104 {
		t.Fatalf("wrong-chain reference counted: %+v", h)
	}
	// Time passes: the KV head goes stale too, and geth-a is at the head again.
	now = now.Add(time.Minute)
	a.Step(ctx)
	if h := health(t, a, "geth-a"); h.Head != 100 || h.Lag != 0 {
		t.Fatalf("after the KV head aged out: %+v", h)
	}
}
