package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chainwarden/chainwarden/internal/restored"
)

// A node whose volume was restored from a snapshot (a restore mark, as `volume ensure` leaves it) says how it
// catches up — height, head, its speed and the ETA — and stays critical (out of the proxy, not even a backup)
// while behind; once caught up its mark goes and it is judged as any node, passing after pass_after good probes.
func TestRestoredNodeReportsCatchingUp(t *testing.T) {
	clk := start()
	stateDir := t.TempDir()
	restoredNode, u1 := newFakeEth(t, 400, clk)
	head, u2 := newFakeEth(t, 1000, clk)
	a := newUnit(t, clk, fmt.Sprintf("state_dir = %q\n", stateDir)+node("geth-a", u1, 3)+node("geth-b", u2, 3))
	if err := restored.Write(stateDir, restored.Mark{Node: "geth-a", Volume: "geth-data", VolumeID: "vol-1",
		Snapshot: "snap-0abc", Height: "400", Restored: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	// A restored node's blocks are old ones: block h was made (head - h) seconds before the head's, on a 1 s chain.
	// (Were they stamped now, the head would not be corroborated by a source that old: see networkhead.)
	history := func() {
		restoredNode.MadeAt.Store(clk.Now().Add(-time.Duration(head.Height.Load()-restoredNode.Height.Load()+1) * time.Second).UnixNano())
	}
	history()
	ctx := context.Background()
	a.Step(ctx)
	if st, out := a.check(t, "geth-a"); st != "critical" || out != "catching up from snapshot: height 400 → head 1000, measuring its speed — 5 peers" {
		t.Fatalf("first pass: %s %q", st, out)
	}
	// 13 blocks a second against a head making 1: closing 12 a second.
	for i := 0; i < 20; i++ {
		clk.Advance(time.Second)
		head.Height.Add(1)
		restoredNode.Height.Add(13)
		history()
		a.Step(ctx)
	}
	st, out := a.check(t, "geth-a")
	if want := "catching up from snapshot: height 660 → head 1020, ~13 blocks/s, ETA 30s — 5 peers"; st != "critical" || out != want {
		t.Fatalf("catching up: %s %q, want critical %q", st, out, want)
	}
	if h := health(t, a.Agent, "geth-a"); h.Lag != 360 || h.Status != "critical" {
		t.Fatalf("health while catching up: %+v", h)
	}
	if v := testutil.ToFloat64(a.metrics.catchingUp.WithLabelValues("geth-a", "eth-mainnet", "ethereum")); v != 1 {
		t.Fatalf("node_catching_up %v", v)
	}
	// Caught up: the mark goes, and the ordinary damping makes it pass after three good probes.
	restoredNode.Height.Store(head.Height.Load())
	restoredNode.MadeAt.Store(0)
	var statuses []string
	for i := 0; i < 3; i++ {
		clk.Advance(time.Second)
		a.Step(ctx)
		st, _ := a.check(t, "geth-a")
		statuses = append(statuses, st)
	}
	if fmt.Sprint(statuses) != "[critical critical passing]" {
		t.Fatalf("after catching up: %v", statuses)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "restored", "geth-a.json")); !os.IsNotExist(err) {
		t.Fatalf("the restore mark is still there: %v", err)
	}
	if _, out := a.check(t, "geth-a"); out != "height 1020, at head 1020, 5 peers, last block 1s ago, finalized 992" {
		t.Fatalf("caught up: %q", out)
	}
	if v := testutil.ToFloat64(a.metrics.catchingUp.WithLabelValues("geth-a", "eth-mainnet", "ethereum")); v != 0 {
		t.Fatalf("node_catching_up %v after catching up", v)
	}
}
