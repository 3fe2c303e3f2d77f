package networkhead

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// hashOf is block height of chain (a branch name) — the same on every source of that chain.
func hashOf(chain string, height uint64) probe.Hash {
	return probe.Hash(sha256.Sum256(fmt.Appendf(nil, "%s/%d", chain, height)))
}

// on makes a source at height on chain whose block was made `age` before t0, knowing its hashes from `from` up to
// its head.
func on(name, chain string, height uint64, age time.Duration, from uint64) Source {
	s := Source{Name: name, Height: height, BlockTime: t0.Add(-age), Seen: t0.Add(-age / 2), Hashes: map[uint64]probe.Hash{}}
	if chain != "" {
		s.Hash = hashOf(chain, height)
		for h := from; h < height; h++ {
			s.Hashes[h] = hashOf(chain, h)
		}
	}
	return s
}

func ref(s Source) Source { s.Reference = true; return s }

func fin(s Source, f uint64) Source { s.Finalized = f; return s }

var (
	eth   = Chain{MinBlockTime: time.Second, Confirmations: 2}
	comet = Chain{MinBlockTime: 250 * time.Millisecond}
)

func TestDecide(t *testing.T) {
	cases := []struct {
		name      string
		chain     Chain
		prev      Previous
		sources   []Source
		head      string // name@height
		finalized uint64
		flags     []string // "source kind: reason" prefixes
	}{
		{name: "no sources", chain: eth, head: "@0"},
		{name: "one source, nothing to compare with: accepted", chain: eth,
			sources: []Source{on("a", "x", 99999999, time.Second, 99999990)}, head: "a@99999999"},
		{name: "one source jumping further than the chain can grow since the last head: flagged", chain: eth,
			prev:    Previous{Height: 100, Source: "a", BlockTime: t0.Add(-3 * time.Second)},
			sources: []Source{on("a", "x", 99999999, time.Second, 99999990)}, head: "@0",
			flags: []string{"a not_corroborated: head 99999999 not corroborated: no other source, and the chain can be at 106 at most " +
				"(the last accepted head was 100, 3s ago; at most one block per 1s)"}},
		{name: "one source within reach of the last head", chain: eth,
			prev:    Previous{Height: 100, Source: "a", BlockTime: t0.Add(-3 * time.Second)},
			sources: []Source{on("a", "x", 106, 0, 100)}, head: "a@106"},
		{name: "a liar far ahead of three nodes", chain: eth, sources: []Source{
			on("geth-a", "x", 100, time.Second, 90), on("geth-b", "x", 100, time.Second, 90), on("geth-c", "x", 101, 0, 90),
			on("liar", "", 99999999, 0, 0)}, head: "geth-c@101",
			flags: []string{"liar not_corroborated: head 99999999 not corroborated: the other sources put the chain at 104 at most " +
				"(geth-c is at 101, its block made 0s ago; at most one block per 1s)"}},
		{name: "a reference far ahead", chain: eth, sources: []Source{
			on("geth-a", "x", 100, time.Second, 90), ref(on("infura", "x", 5000, 0, 4990))}, head: "geth-a@100",
			flags: []string{"infura not_corroborated: head 5000 not corroborated"}},
		{name: "a reference that is right and a node far behind", chain: eth, sources: []Source{
			on("geth-a", "x", 100, time.Minute, 90), ref(on("infura", "x", 160, 0, 150))}, head: "infura@160"},
		{name: "a fast node ahead of a lagging majority", chain: eth, sources: []Source{
			on("geth-a", "x", 90, 10*time.Second, 80), on("geth-b", "x", 90, 10*time.Second, 80), on("fast", "x", 100, 0, 95)},
			head: "fast@100"},
		{name: "a node whose block timestamp is in the future vouches only from when it was seen", chain: eth, sources: []Source{
			func() Source { s := on("geth-a", "x", 100, 0, 90); s.BlockTime = t0.Add(time.Hour); return s }(),
			on("liar", "", 110, 0, 0)}, head: "geth-a@100",
			flags: []string{"liar not_corroborated: head 110 not corroborated: no other source vouches for it, and with no " +
				"head accepted before, the lowest claim counts (geth-a at 100)"}},
		{name: "two liars far ahead, at different heights: the higher does not vouch for the lower", chain: eth,
			sources: []Source{on("geth-a", "x", 100, 0, 90), on("geth-b", "x", 100, 0, 90),
				on("liar-1", "", 100000000, 0, 0), on("liar-2", "", 200000000, 0, 0)}, head: "geth-a@100",
			flags: []string{"liar-1 not_corroborated", "liar-2 not_corroborated"}},
		{name: "one node and two liars, nothing before: the lowest claim", chain: eth,
			sources: []Source{on("geth-a", "x", 100, 0, 90), on("liar-1", "", 100000000, 0, 0), on("liar-2", "", 200000000, 0, 0)},
			head:    "geth-a@100", flags: []string{"liar-1 not_corroborated: head 100000000 not corroborated: no other source " +
				"vouches for it, and with no head accepted before, the lowest claim counts (geth-a at 100)", "liar-2 not_corroborated"}},
		{name: "one node and a liar, after a head was accepted", chain: eth, prev: Previous{Height: 99, Source: "geth-a", BlockTime: t0.Add(-time.Second)},
			sources: []Source{on("geth-a", "x", 100, 0, 90), on("liar", "", 100000000, 0, 0)}, head: "geth-a@100",
			flags: []string{"liar not_corroborated: head 100000000 not corroborated: no other source vouches for it, and the " +
				"chain can be at 103 at most (the last accepted head was 99, 1s ago; at most one block per 1s)"}},
		{name: "a node far below with a fresh block (another network) does not hold the head down", chain: eth,
			sources: []Source{on("geth-a", "x", 100, 0, 90), on("geth-b", "x", 100, 0, 90), on("low", "", 5, 0, 0)},
			head:    "geth-a@100"},
		{name: "no minimum block time: heights are not bounded", chain: Chain{Confirmations: 2}, sources: []Source{
			on("geth-a", "x", 100, 0, 90), on("far", "", 99999999, 0, 0)}, head: "far@99999999"},
		{name: "a node on another branch at a common height", chain: eth, sources: []Source{
			on("geth-a", "x", 100, 0, 90), on("geth-b", "x", 100, 0, 90), on("geth-c", "x", 99, 0, 90),
			on("other", "y", 120, 0, 90)}, head: "geth-a@100",
			flags: []string{"other fork: on a fork: block 98 is " + hashOf("y", 98).Short() + " here, " +
				hashOf("x", 98).Short() + " on geth-a, geth-b"}}, // geth-c's block 98 is not 2 below its head
		{name: "a reference on another branch", chain: eth, sources: []Source{
			on("geth-a", "x", 100, 0, 90), on("geth-b", "x", 100, 0, 90), ref(on("infura", "y", 100, 0, 90))},
			head: "geth-a@100", flags: []string{"infura fork: on a fork: block 98 is"}},
		{name: "two chains, one source each: the higher wins the first time", chain: eth, sources: []Source{
			on("dev-a", "x", 130, 0, 90), on("dev-b", "y", 100, 0, 90)}, head: "dev-a@130",
			flags: []string{"dev-b fork: on a fork: block 98 is " + hashOf("y", 98).Short() + " here, " +
				hashOf("x", 98).Short() + " on dev-a"}},
		{name: "two chains, one source each: the previous head's branch keeps winning", chain: eth,
			prev: Previous{Height: 99, Source: "dev-b"}, sources: []Source{
				on("dev-a", "x", 130, 0, 90), on("dev-b", "y", 100, 0, 90)}, head: "dev-b@100",
			flags: []string{"dev-a fork: on a fork: block 98 is " + hashOf("x", 98).Short() + " here, " +
				hashOf("y", 98).Short() + " on dev-b"}},
		{name: "the highest source contradicted by two that were never compared with each other", chain: eth, sources: []Source{
			on("top", "y", 200, 0, 140), on("b", "x", 150, time.Minute, 140), on("c", "x", 190, 0, 185)}, head: "c@190",
			flags: []string{"top fork: on a fork: block 188 is"}},
		{name: "a race for the newest block is not a fork (ethereum: 2 confirmations)", chain: eth, sources: []Source{
			func() Source { s := on("geth-a", "x", 100, 0, 90); s.Hash = hashOf("race", 100); return s }(),
			on("geth-b", "x", 100, 0, 90)}, head: "geth-a@100"},
		{name: "cometbft has no reorgs: different blocks at the same height are a fork", chain: comet, sources: []Source{
			on("comet-0", "x", 100, 0, 100), on("comet-1", "x", 100, 0, 100), on("comet-2", "y", 100, 0, 100)},
			head: "comet-0@100", flags: []string{"comet-2 fork: on a fork: block 100 is " + hashOf("y", 100).Short() +
				" here, " + hashOf("x", 100).Short() + " on comet-0, comet-1"}},
		{name: "a cometbft liar far ahead", chain: comet, sources: []Source{
			on("comet-0", "x", 100, time.Second, 100), on("comet-1", "x", 100, time.Second, 100),
			on("liar", "x", 1000, 0, 1000)}, head: "comet-0@100",
			flags: []string{"liar not_corroborated: head 1000 not corroborated: the other sources put the chain at 110 at most"}},
		{name: "heads without hashes (an older agent's): heights only", chain: eth, sources: []Source{
			on("old-a", "", 100, 0, 0), on("geth-b", "x", 101, 0, 90)}, head: "geth-b@101"},
		{name: "finalized: the highest of the sources that count, never above the head", chain: eth, sources: []Source{
			fin(on("geth-a", "x", 100, 0, 90), 64), fin(on("geth-b", "x", 100, 0, 90), 96),
			fin(on("liar", "", 99999999, 0, 0), 99999990), fin(on("other", "y", 100, 0, 90), 99)},
			head: "geth-a@100", finalized: 96, flags: []string{"liar not_corroborated", "other fork"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.sources, tc.chain, tc.prev, t0)
			if got := fmt.Sprintf("%s@%d", d.Head.Name, d.Head.Height); got != tc.head {
				t.Errorf("head %s, want %s", got, tc.head)
			}
			if d.Finalized != tc.finalized {
				t.Errorf("finalized %d, want %d", d.Finalized, tc.finalized)
			}
			if len(d.Flags) != len(tc.flags) {
				t.Fatalf("flags %+v, want %q", d.Flags, tc.flags)
			}
			for i, f := range d.Flags {
				got := fmt.Sprintf("%s %s: %s", f.Source, f.Kind, f.Reason)
				if !strings.HasPrefix(got, tc.flags[i]) {
					t.Errorf("flag %d:\n got %s\nwant %s...", i, got, tc.flags[i])
				}
				if want := strings.HasPrefix(f.Source, "infura"); f.Reference != want {
					t.Errorf("flag %s: Reference %v", f.Source, f.Reference)
				}
			}
		})
	}
}

// The rule is symmetric in its input order.
func TestDecideOrderDoesNotMatter(t *testing.T) {
	src := []Source{on("a", "x", 100, 0, 90), on("b", "y", 100, 0, 90), on("c", "x", 99, 0, 90),
		on("liar", "", 5000, 0, 0), on("d", "x", 101, 0, 95)}
	want := Decide(src, eth, Previous{}, t0)
	for i := range src {
		rot := append(append([]Source{}, src[i:]...), src[:i]...)
		got := Decide(rot, eth, Previous{}, t0)
		if got.Head.Name != want.Head.Name || fmt.Sprint(got.Flags) != fmt.Sprint(want.Flags) {
			t.Fatalf("rotation %d: %s %v, want %s %v", i, got.Head.Name, got.Flags, want.Head.Name, want.Flags)
		}
	}
	if want.Head.Name != "d" || len(want.Flags) != 2 {
		t.Fatalf("head %s flags %v", want.Head.Name, want.Flags)
	}
}

// ceiling's sort-and-scan agrees with the rule as written: the highest candidate another at or below it reaches.
func TestCeilingMatchesTheDefinition(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 2000 {
		n := 1 + rng.IntN(6)
		var src []Source
		var cands []int
		for i := range n {
			src = append(src, Source{Name: fmt.Sprint(i), Height: 100 + uint64(rng.IntN(20)),
				BlockTime: t0.Add(-time.Duration(rng.IntN(15)) * time.Second)})
			cands = append(cands, i)
		}
		var want uint64
		found := false
		for _, i := range cands {
			for _, j := range cands {
				reach := src[j].Height + canMake(eth, src[j].BlockTime, t0)
				if i != j && src[j].Height <= src[i].Height && reach >= src[i].Height {
					found, want = true, max(want, src[i].Height)
				}
			}
		}
		got, _ := ceiling(src, cands, eth, Previous{}, t0)
		if found && got != want {
			t.Fatalf("round %d: %+v: ceiling %d, want %d", round, src, got, want)
		}
	}
}

// BenchmarkDecide is one decision for a service of 100 nodes in sync, one of them lying.
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var src []Source
			for i := range n {
				src = append(src, on(fmt.Sprintf("geth-%d", i), "x", 100+uint64(i%3), time.Second, 90))
			}
			src[0] = on("liar", "", 99999999, 0, 0)
			b.ReportAllocs()
			for b.Loop() {
				if d := Decide(src, eth, Previous{}, t0); len(d.Flags) != 1 {
					b.Fatal(d.Flags)
				}
			}
		})
	}
}
