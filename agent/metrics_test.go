package agent

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chainwarden/chainwarden/internal/nodespec"
)

// The series a pass leaves, read with prometheus/testutil: the figures of each node, its damped status, transitions,
// Consul's writes as a counter, and a removed node's series gone.
func TestMetricsFollowPasses(t *testing.T) {
	a, a1 := twoNodes(t, 100, 104, 1)
	clk := a.clock
	ctx := context.Background()
	a.Step(ctx)
	m := a.metrics
	if got := testutil.ToFloat64(m.height.WithLabelValues("geth-a", "eth-mainnet", "ethereum")); got != 100 {
		t.Fatalf("height %v", got)
	}
	if got := testutil.ToFloat64(m.lag.WithLabelValues("geth-a", "eth-mainnet", "ethereum")); got != 4 {
		t.Fatalf("lag %v", got)
	}
	if got := testutil.ToFloat64(m.head.WithLabelValues("eth-mainnet")); got != 104 {
		t.Fatalf("network head %v", got)
	}
	if got := testutil.ToFloat64(m.status.WithLabelValues("geth-b", "eth-mainnet", "ethereum")); got != 0 {
		t.Fatalf("geth-b status %v, want 0 (passing)", got)
	}
	writes := testutil.ToFloat64(m.consulWrites)
	if writes < 4 { // two registrations and two check updates at least
		t.Fatalf("consul writes %v", writes)
	}
	a1.Down.Store(true)
	for range 2 {
		clk.Advance(time.Second)
		a.Step(ctx)
	}
	if got := testutil.ToFloat64(m.probeUp.WithLabelValues("geth-a", "eth-mainnet", "ethereum")); got != 0 {
		t.Fatalf("probe success %v for a node that is down", got)
	}
	if got := testutil.ToFloat64(m.transitions.WithLabelValues("geth-a", "eth-mainnet", "critical")); got != 1 {
		t.Fatalf("transitions to critical: %v", got)
	}
	if testutil.ToFloat64(m.consulWrites) <= writes {
		t.Fatal("the status change did not count as a consul write")
	}

	a.SetNodes(nodespec.SourceConfig, a.cfg.Nodes[1:])
	if n := testutil.CollectAndCount(m.height); n != 1 {
		t.Fatalf("%d height series after removing geth-a, want 1", n)
	}
	if n := testutil.CollectAndCount(m.transitions); n != 1 { // geth-b's move to passing stays
		t.Fatalf("%d transition series after removing geth-a, want 1", n)
	}
	problems, err := testutil.GatherAndLint(m.reg)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
}
