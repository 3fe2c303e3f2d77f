package networkhead

import (
	"fmt"
	"testing"
	"time"
)

// obs is what a probe of a source on chain at height tells, its block made `age` before now.
func obs(name, chain string, height uint64, now time.Time, age time.Duration) Observation {
	return Observation{Source: Source{Name: name, Height: height, Hash: hashOf(chain, height), BlockTime: now.Add(-age),
		Seen: now}, ParentHash: hashOf(chain, height-1)}
}

func canAskAll(string) bool { return true }

// fakeNode answers lookups as a node on chain up to height would.
func answer(tr *Tracker, ls []Lookup, chains map[string]string) {
	for _, l := range ls {
		for _, h := range l.Heights {
			tr.Record(l.Source, h, hashOf(chains[l.Source], h))
		}
	}
}

// Two geth --dev nodes are two chains with the same chain id. With only their heads and parents known there is no
// common height; the tracker asks both for the same block, and the lower one is on a fork.
func TestTrackerLooksUpAndFindsTheFork(t *testing.T) {
	tr := NewTracker(eth)
	now := t0
	tr.Observe([]Observation{obs("dev-a", "x", 130, now, 0), obs("dev-b", "y", 100, now, 0)}, now)
	ls := tr.Lookups(canAskAll, 2, now)
	if got := fmt.Sprint(ls); got != "[{dev-a [98]} {dev-b [98]}]" {
		t.Fatalf("lookups %s", got)
	}
	answer(tr, ls, map[string]string{"dev-a": "x", "dev-b": "y"})
	d := tr.Decide(now)
	if d.Head.Name != "dev-a" || len(d.Flags) != 1 || d.Flags[0].Source != "dev-b" || d.Flags[0].Kind != Fork {
		t.Fatalf("decision %+v", d)
	}
	// The next pass needs no lookup: the hashes are remembered, and the previous head's branch keeps winning.
	now = now.Add(time.Second)
	tr.Observe([]Observation{obs("dev-a", "x", 131, now, 0), obs("dev-b", "y", 101, now, 0)}, now)
	if ls := tr.Lookups(canAskAll, 2, now); ls != nil {
		t.Fatalf("lookups again: %v", ls)
	}
	if d := tr.Decide(now); d.Head.Name != "dev-a" || len(d.Flags) != 1 || d.Flags[0].Source != "dev-b" {
		t.Fatalf("second decision %+v", d)
	}
}

// A source that can't be asked (another agent's node) is compared when the hashes remembered meet.
func TestTrackerRemoteSourcesNeedNoLookup(t *testing.T) {
	tr := NewTracker(eth)
	now := t0
	remote := func(string) bool { return false }
	for h := uint64(100); h < 106; h++ {
		tr.Observe([]Observation{obs("geth-a", "x", h, now, 0), obs("geth-b", "x", h-1, now, 0)}, now)
		if ls := tr.Lookups(remote, 2, now); ls != nil {
			t.Fatalf("lookups of sources that can't be asked: %v", ls)
		}
		if d := tr.Decide(now); d.Head.Name != "geth-a" || len(d.Flags) != 0 || (h > 102 && len(d.Unknown) != 0) {
			t.Fatalf("height %d: %+v", h, d)
		}
		now = now.Add(time.Second)
	}
}

// A race for the newest block: two nodes with different heads at one height, and the loser reorganises onto the
// winner's branch. No fork is ever flagged, and the loser's forgotten hashes don't linger.
func TestTrackerRaceIsNotAFork(t *testing.T) {
	tr := NewTracker(eth)
	now := t0
	a, b := obs("geth-a", "x", 100, now, 0), obs("geth-b", "x", 100, now, 0)
	b.Hash = hashOf("race", 100)
	tr.Observe([]Observation{a, b}, now)
	if d := tr.Decide(now); len(d.Flags) != 0 {
		t.Fatalf("race flagged: %+v", d.Flags)
	}
	now = now.Add(time.Second)
	tr.Observe([]Observation{obs("geth-a", "x", 101, now, 0), obs("geth-b", "x", 101, now, 0)}, now)
	if got := tr.known["geth-b"].hashes[100]; got != hashOf("x", 100) {
		t.Fatalf("geth-b's block 100 after the reorg is %s", got.Short())
	}
	for range 3 {
		if d := tr.Decide(now); len(d.Flags) != 0 {
			t.Fatalf("after the reorg: %+v", d.Flags)
		}
		now = now.Add(time.Second)
	}
}

// One source alone jumps to a height the chain can't have made since the last head: flagged, and the previous head
// stays; it is accepted again once back within reach.
func TestTrackerLoneSourceJump(t *testing.T) {
	tr := NewTracker(eth)
	now := t0
	tr.Observe([]Observation{obs("geth-a", "x", 100, now, 0)}, now)
	tr.Decide(now)
	now = now.Add(time.Second)
	tr.Observe([]Observation{obs("geth-a", "x", 99999999, now, 0)}, now)
	d := tr.Decide(now)
	if len(d.Flags) != 1 || d.Head.Name != "" || tr.Previous().Height != 100 {
		t.Fatalf("jump: %+v, previous %+v", d, tr.Previous())
	}
	now = now.Add(time.Second)
	tr.Observe([]Observation{obs("geth-a", "x", 102, now, 0)}, now)
	if d := tr.Decide(now); len(d.Flags) != 0 || d.Head.Height != 102 {
		t.Fatalf("back: %+v", d)
	}
}

// A lone node restarted from an old head catches up faster than the chain grows, on a chain making blocks as fast
// as it may (one a second): ahead of what the old head allows, by as much every pass. It is flagged until the
// previous head is PreviousMaxAge old, then the rule starts over and accepts it; without PreviousMaxAge it stays
// flagged.
func TestTrackerLoneSourceCaughtUpAfterRestart(t *testing.T) {
	for _, maxAge := range []time.Duration{0, 30 * time.Second} {
		tr := NewTracker(eth)
		tr.PreviousMaxAge = maxAge
		now := t0
		tr.Observe([]Observation{obs("geth-a", "x", 7, now, 0)}, now)
		tr.Decide(now)
		flaggedFor := time.Duration(0)
		for sec := 11; sec <= 120; sec++ {
			now = t0.Add(time.Duration(sec) * time.Second)
			h := uint64(24 + sec - 11) // caught up to 24 at 11 s, then a block a second
			tr.Observe([]Observation{obs("geth-a", "x", h, now, 0)}, now)
			d := tr.Decide(now)
			if d.Head.Name == "" {
				flaggedFor = now.Sub(t0)
				continue
			}
			if d.Head.Height != h || len(d.Flags) != 0 {
				t.Fatalf("max age %s, %d s: %+v", maxAge, sec, d)
			}
		}
		switch {
		case maxAge == 0 && flaggedFor != 120*time.Second:
			t.Fatalf("without PreviousMaxAge: flagged until %s, want to the end", flaggedFor)
		case maxAge > 0 && (flaggedFor < maxAge-time.Second || flaggedFor >= maxAge):
			t.Fatalf("PreviousMaxAge %s: flagged until %s after the last accepted head", maxAge, flaggedFor)
		}
	}
}

// How long a height has been behind: from when the network first had a head above it.
func TestTrackerBehindSince(t *testing.T) {
	tr := NewTracker(eth)
	at := func(h uint64, sec int) {
		now := t0.Add(time.Duration(sec) * time.Second)
		tr.Observe([]Observation{obs("geth-a", "x", h, now, 0), obs("geth-b", "x", h, now, 0)}, now)
		tr.Decide(now)
	}
	at(100, 0)
	at(101, 1)
	at(105, 5)
	for h, want := range map[uint64]int{99: 0, 100: 1, 101: 5, 104: 5} {
		if got, ok := tr.BehindSince(h); !ok || !got.Equal(t0.Add(time.Duration(want)*time.Second)) {
			t.Errorf("behind since of %d: %v %v, want +%ds", h, got, ok, want)
		}
	}
	if _, ok := tr.BehindSince(105); ok {
		t.Error("the head itself is behind")
	}
	// The head drops (its source is gone): what it reached no longer counts.
	at(103, 6)
	if _, ok := tr.BehindSince(103); ok {
		t.Error("103 is behind after the head dropped to it")
	}
	if got, _ := tr.BehindSince(102); !got.Equal(t0.Add(6 * time.Second)) {
		t.Errorf("102 behind since %v", got)
	}
}

func TestTrackerFinalizedBehindSince(t *testing.T) {
	tr := NewTracker(eth)
	for i, f := range []uint64{32, 32, 64, 64} {
		now := t0.Add(time.Duration(i) * time.Second)
		a, b := obs("geth-a", "x", 100+uint64(i), now, 0), obs("geth-b", "x", 100+uint64(i), now, 0)
		a.Finalized, b.Finalized = f, 32 // geth-b's finalized block stalls
		tr.Observe([]Observation{a, b}, now)
		if d := tr.Decide(now); d.Finalized != f || d.FinalizedSource != "geth-a" {
			t.Fatalf("pass %d: finalized %d from %s", i, d.Finalized, d.FinalizedSource)
		}
	}
	if got, ok := tr.FinalizedBehindSince(32); !ok || !got.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("finalized 32 behind since %v %v", got, ok)
	}
}
