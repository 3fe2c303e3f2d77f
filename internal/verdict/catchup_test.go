package verdict

import (
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/probe"
)

// restoredNode plays a node restored from a snapshot at height 1000 while its network's head, at 2000, makes a
// block a second: each probe (a second of the fake clock) the node imports speed blocks.
type restoredNode struct {
	t            *testing.T
	clk          *fakes.Clock
	c            *CatchUp
	height, head uint64
	syncing      bool
	peers        uint64
}

func newRestoredNode(t *testing.T) *restoredNode {
	return &restoredNode{t: t, clk: fakes.NewClock(now), c: NewCatchUp("snap-0123"), height: 1000, head: 2000, syncing: true, peers: 5}
}

// probe advances the clock by a second, moves the chain and the node, and judges the node.
func (n *restoredNode) probe(speed uint64) Report {
	n.clk.Advance(time.Second)
	n.head++
	n.height = min(n.height+speed, n.head)
	return n.judge()
}

func (n *restoredNode) judge() Report {
	t := n.clk.Now()
	r := probe.Result{Height: n.height, HasHeight: true, Peers: n.peers, ChainID: "4242", Syncing: n.syncing,
		BlockTime: now.Add(-3 * time.Hour)} // the restored blocks are hours old
	n.c.Observe(t, n.height, n.head)
	return Judge(Input{Kind: probe.Ethereum, Result: r, Head: Head{Height: n.head, Node: "geth-b"}, WantChain: "4242",
		Thresholds: eth(), Now: t, CatchUp: n.c})
}

func TestCatchUpOutput(t *testing.T) {
	n := newRestoredNode(t)
	rep := n.judge()
	if got, want := rep.Output(), "catching up from snapshot: height 1000 → head 2000, measuring its speed — 5 peers"; got != want {
		t.Fatalf("first probe\n got %q\nwant %q", got, want)
	}
	for i := 0; i < 10; i++ {
		rep = n.probe(11)
	}
	// 11 blocks/s against a head making 1: it closes 10 a second, 900 to go.
	if rep.Status != Critical || !rep.CatchingUp || rep.CaughtUp || rep.Lag != 900 || len(rep.Reasons) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if got, want := rep.Output(), "catching up from snapshot: height 1110 → head 2010, ~11 blocks/s, ETA 1m30s — 5 peers"; got != want {
		t.Fatalf("catching up\n got %q\nwant %q", got, want)
	}
}

// The ETA follows the window, and a node that does not gain on the head says so instead of an ETA.
func TestCatchUpRatesAndETA(t *testing.T) {
	n := newRestoredNode(t)
	n.head = 10000
	for i := 0; i < 70; i++ {
		n.probe(2)
	}
	for i := 0; i < 60; i++ {
		n.probe(21)
	}
	// The rates look back one window (a minute): only the faster part counts.
	node, head, ok := n.c.Rates()
	if !ok || node != 21 || head != 1 {
		t.Fatalf("rates over the last minute: node %v head %v %v", node, head, ok)
	}
	if eta, ok := n.c.ETA(400); !ok || eta != 20*time.Second {
		t.Fatalf("ETA of 400 blocks closing 20/s: %s %v", eta, ok)
	}
	var rep Report
	slow := newRestoredNode(t)
	for i := 0; i < 5; i++ {
		rep = slow.probe(1) // as fast as the head: never there
	}
	if got, want := rep.Output(), "catching up from snapshot: height 1005 → head 2005, ~1.0 blocks/s, not gaining on the head (~1.0 blocks/s) — 5 peers"; got != want {
		t.Fatalf("not gaining\n got %q\nwant %q", got, want)
	}
	stuck := newRestoredNode(t)
	for i := 0; i < 5; i++ {
		rep = stuck.probe(0)
	}
	if got, want := rep.Output(), "catching up from snapshot: height 1000 → head 2005, not moving — 5 peers"; got != want {
		t.Fatalf("stuck\n got %q\nwant %q", got, want)
	}
}

// What is not about catching up is still said; once within warn_lag of the head and no longer syncing, the node is
// caught up and judged as any node (passing here).
func TestCatchUpKeepsOtherReasonsAndEnds(t *testing.T) {
	n := newRestoredNode(t)
	n.peers = 0
	rep := n.probe(500)
	if rep.Status != Critical || len(rep.Reasons) != 2 || rep.Reasons[1] != "0 peers, want at least 1" {
		t.Fatalf("no peers while catching up: %+v", rep.Reasons)
	}
	n.peers = 5
	rep = n.probe(600) // at the head now, but geth still says it is syncing
	if rep.CaughtUp || !rep.CatchingUp {
		t.Fatalf("caught up while syncing: %+v", rep)
	}
	n.syncing = false
	rep = n.probe(1)
	if !rep.CaughtUp || rep.CatchingUp {
		t.Fatalf("at the head, not syncing: %+v", rep)
	}
	// Its newest block is still hours old in this play: the ordinary block-age rule applies again.
	if got := rep.Output(); got != "no new block for 3h0m3s — height 2003, at head 2003, 5 peers, last block 3h0m3s ago" {
		t.Fatalf("after catching up the ordinary rules apply: %q", got)
	}
}

func TestFormatETA(t *testing.T) {
	for d, want := range map[time.Duration]string{
		45 * time.Second:                "45s",
		4 * time.Minute:                 "4m",
		6*time.Minute + 47*time.Second:  "6m47s",
		72*time.Minute + 20*time.Second: "1h12m",
		2 * time.Hour:                   "2h",
		76 * time.Hour:                  "3d4h",
	} {
		if got := formatETA(d); got != want {
			t.Errorf("formatETA(%s) = %q, want %q", d, got, want)
		}
	}
}
