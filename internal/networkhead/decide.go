// Package networkhead decides a network's head from every source that reports one — this agent's nodes, the nodes
// other agents published to Consul KV, external references — so that no single faulty source can move it:
//
//   - Branches. Sources are compared by block hash at a common height (far enough below both of their heads that a
//     race for the newest block is not mistaken for a fork: Chain.Confirmations). Sources that agree form a branch;
//     the branch with the most sources wins (ties: one that was compared with any source at all, then the one the
//     fewest sources contradict, then the branch of the previous head, then the highest). A source whose block at a
//     common height differs from the winning branch's is flagged "on a fork" and does not count; one not yet
//     compared counts.
//   - Heights. Block times bound how fast a chain grows: after a block made at time T, the chain can have at most
//     ⌊(now − T + ClockSkew) / MinBlockTime⌋ + Margin more blocks by now. Another source at or below a height
//     vouches for it when its own height plus what the chain can have made since its block reaches it. The head is
//     the highest height some other source (not on a fork) vouches for; a source above it is flagged "not
//     corroborated" and does not move the head. Sources below it count: a lagging node is judged by its lag.
//   - Nothing vouched for. With a single source, or sources too far apart for any to vouch for another, the
//     previous accepted head vouches instead (a source that jumps further than the chain can grow since then is
//     flagged); with no previous head, the lowest claim is taken (a lone source is accepted as it is). A lone
//     source that lies from the start cannot be caught: give the service a reference or a second node. A Tracker
//     lets the previous head hold alone for PreviousMaxAge only (the agent: head_max_age): a lone node restarted
//     from an old head that caught up is flagged that long, then accepted.
//
// The head is the highest corroborated height; the finalized block the highest finalized of the same sources, never
// above the head. Decide is the rule, a pure function; Tracker keeps what it needs between passes.
package networkhead

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
)

// Source is one opinion about a network's head.
type Source struct {
	Name      string
	Reference bool       // an external reference, not a node of the service
	Height    uint64     // its head
	Hash      probe.Hash // hash of the block at Height; zero: unknown
	BlockTime time.Time  // that block's timestamp; zero: unknown
	Seen      time.Time  // when Height was first seen from this source
	Finalized uint64     // its finalized block; 0: none
	// Hashes are more of its blocks by height (the parent of its head, earlier heads, blocks looked up by height).
	Hashes map[uint64]probe.Hash
}

// hashAt is the source's hash of block h (zero: unknown).
func (s *Source) hashAt(h uint64) probe.Hash {
	if h == s.Height && !s.Hash.IsZero() {
		return s.Hash
	}
	return s.Hashes[h]
}

// Chain is what the rule knows of the chain itself.
type Chain struct {
	// MinBlockTime is the fastest the chain makes blocks (Ethereum: 1s, block timestamps are whole seconds and must
	// grow). Zero: heights are not bounded by time.
	MinBlockTime time.Duration
	// Confirmations is how far below both heads a height must be for two different hashes there to be a fork and
	// not a race for the newest block (Ethereum: 2; CometBFT has no reorgs: 0).
	Confirmations uint64
}

// The rule's slack: block timestamps come from other machines' clocks, and the sources are seen at slightly
// different moments.
const (
	ClockSkew = time.Second
	Margin    = 2 // blocks
	// Window is how far below a source's head its hashes are compared (and kept by a Tracker).
	Window = 128
)

// Previous is the head accepted by the last decision.
type Previous struct {
	Height    uint64
	Source    string
	BlockTime time.Time
	Seen      time.Time
}

// FlagKind is why a source does not count.
type FlagKind string

// The kinds of flags.
const (
	Uncorroborated FlagKind = "not_corroborated"
	Fork           FlagKind = "fork"
)

// Flag is a source that does not count toward the head, and why.
type Flag struct {
	Source    string
	Reference bool
	Kind      FlagKind
	Reason    string // as its check says it, e.g. "head 99999999 not corroborated: ..."
}

// Decision is the rule's answer.
type Decision struct {
	Head            Source // the source at the head, Name "" when there is none
	Finalized       uint64 // the network's finalized block, 0 when no source reports one
	FinalizedSource string
	Flags           []Flag // sorted by source
	// Unknown are the sources not yet compared by hash with the winning branch (no common height known).
	Unknown []string
	// branch is the winning branch's hashes by height (for planning lookups).
	branch map[uint64]branchEntry
	// members of the winning branch.
	members []string
}

// Flagged returns the flag of a source, if any.
func (d *Decision) Flagged(name string) (Flag, bool) {
	for _, f := range d.Flags {
		if f.Source == name {
			return f, true
		}
	}
	return Flag{}, false
}

type branchEntry struct {
	hash    probe.Hash
	sources []string // the branch's sources with this hash at this height
}

type relation int

const (
	unknown relation = iota
	agree
	disagree
)

// conflict is where a source parts from a branch.
type conflict struct {
	height      uint64
	here, there probe.Hash
	on          []string
}

type branch struct {
	leader     int
	members    []int
	hashes     map[uint64]branchEntry
	minH, maxH uint64     // the heights hashes spans
	maxHead    uint64     // the highest head of its members
	rel        []relation // of every source to this branch
	why        []conflict // for the sources that disagree
}

// Decide is the rule: the head of a network from its sources, and the sources that don't count. now is the time
// of the decision; prev the last accepted head (zero when there was none).
func Decide(sources []Source, chain Chain, prev Previous, now time.Time) Decision {
	var d Decision
	if len(sources) == 0 {
		return d
	}
	src := slices.Clone(sources)
	// Highest first, then by name: the order branches are led in and ties are broken by.
	slices.SortFunc(src, func(a, b Source) int {
		return cmp.Or(cmp.Compare(b.Height, a.Height), strings.Compare(a.Name, b.Name))
	})

	// Branches: grow one from the highest source not yet in any, until every source is in one.
	var branches []*branch
	in := make([]int, len(src)) // branch index + 1
	for lead := range src {
		if in[lead] != 0 {
			continue
		}
		b := grow(src, lead, chain)
		for _, m := range b.members {
			if in[m] == 0 {
				in[m] = len(branches) + 1
			}
		}
		branches = append(branches, b)
	}
	win := pick(src, branches, prev)
	wb := branches[win]
	d.branch = wb.hashes
	for _, m := range wb.members {
		d.members = append(d.members, src[m].Name)
	}

	// Candidates: every source that does not contradict the winning branch.
	var cands []int
	for i := range src {
		switch wb.rel[i] {
		case disagree:
			c := wb.why[i]
			d.Flags = append(d.Flags, Flag{Source: src[i].Name, Reference: src[i].Reference, Kind: Fork,
				Reason: fmt.Sprintf("on a fork: block %d is %s here, %s on %s", c.height, c.here.Short(), c.there.Short(),
					names(c.on, 3))})
			continue
		case unknown:
			d.Unknown = append(d.Unknown, src[i].Name)
		}
		cands = append(cands, i)
	}

	// Heights: the head is the highest height another source vouches for; what is above it is flagged.
	var accepted []int
	top, why := ceiling(src, cands, chain, prev, now)
	for _, i := range cands {
		if src[i].Height > top {
			d.Flags = append(d.Flags, Flag{Source: src[i].Name, Reference: src[i].Reference, Kind: Uncorroborated,
				Reason: why(i)})
			continue
		}
		accepted = append(accepted, i)
	}
	slices.SortFunc(d.Flags, func(a, b Flag) int { return strings.Compare(a.Source, b.Source) })

	for _, i := range accepted {
		s := src[i]
		better := d.Head.Name == "" || s.Height > d.Head.Height ||
			(s.Height == d.Head.Height && s.Name == prev.Source && d.Head.Name != prev.Source)
		if better {
			d.Head = s
		}
	}
	for _, i := range accepted {
		if f := min(src[i].Finalized, d.Head.Height); f > d.Finalized {
			d.Finalized, d.FinalizedSource = f, src[i].Name
		}
	}
	return d
}

// grow builds the branch led by src[lead]: sources whose hash at their most recent common confirmed height with
// the branch is the branch's join it (adding their hashes), those whose hash differs are in conflict with it.
func grow(src []Source, lead int, chain Chain) *branch {
	b := &branch{leader: lead, hashes: map[uint64]branchEntry{}, rel: make([]relation, len(src)),
		why: make([]conflict, len(src)), minH: math.MaxUint64}
	add := func(s *Source, h uint64, hash probe.Hash) {
		if hash.IsZero() || h == 0 || h > confirmedTop(s, chain) || h+Window <= s.Height {
			return
		}
		e, ok := b.hashes[h]
		switch {
		case !ok:
			b.hashes[h] = branchEntry{hash: hash, sources: []string{s.Name}}
			b.minH, b.maxH = min(b.minH, h), max(b.maxH, h)
		case e.hash == hash:
			e.sources = append(e.sources, s.Name)
			b.hashes[h] = e
		}
	}
	join := func(i int) {
		b.rel[i] = agree
		b.members = append(b.members, i)
		s := &src[i]
		b.maxHead = max(b.maxHead, s.Height)
		add(s, s.Height, s.Hash)
		for h, hash := range s.Hashes {
			if h != s.Height || s.Hash.IsZero() {
				add(s, h, hash)
			}
		}
	}
	join(lead)
	// Keep comparing until no source joins: each one that joins brings hashes that may make others comparable, or
	// show that one found in conflict at an older height agrees at a more recent one.
	for changed := true; changed; {
		changed = false
		for i := range src {
			if b.rel[i] == agree {
				continue
			}
			r, c := compare(&src[i], b, chain)
			b.rel[i], b.why[i] = r, c
			if r == agree {
				b.rel[i] = unknown
				join(i)
				changed = true
			}
		}
	}
	return b
}

// confirmedTop is the highest height of s whose hash may be compared: Confirmations below its head.
func confirmedTop(s *Source, chain Chain) uint64 {
	if s.Height < chain.Confirmations {
		return 0
	}
	return s.Height - chain.Confirmations
}

// compare finds the most recent confirmed height at which both s and the branch know a hash, and compares them.
func compare(s *Source, b *branch, chain Chain) (relation, conflict) {
	top := min(confirmedTop(s, chain), b.maxH)
	for h := top; h+Window > s.Height && h >= b.minH && h > 0; h-- {
		hash := s.hashAt(h)
		if hash.IsZero() {
			continue
		}
		e, ok := b.hashes[h]
		if !ok {
			continue
		}
		if e.hash == hash {
			return agree, conflict{}
		}
		return disagree, conflict{height: h, here: hash, there: e.hash, on: e.sources}
	}
	return unknown, conflict{}
}

// pick chooses the winning branch: the one with the most sources; then one that was compared with any source
// outside it (a lone source nothing could be compared with proves nothing); then the one the fewest sources
// contradict; then the one holding the previous head's source; then the highest.
func pick(src []Source, branches []*branch, prev Previous) int {
	against := func(b *branch) int {
		n := 0
		for _, r := range b.rel {
			if r == disagree {
				n++
			}
		}
		return n
	}
	informed := func(b *branch) bool { return len(b.members) > 1 || against(b) > 0 }
	holds := func(b *branch) bool {
		for _, m := range b.members {
			if src[m].Name == prev.Source {
				return true
			}
		}
		return false
	}
	best := 0
	for i := 1; i < len(branches); i++ {
		a, b := branches[i], branches[best]
		if c := cmp.Or(cmp.Compare(len(a.members), len(b.members)), cmp.Compare(btoi(informed(a)), btoi(informed(b))),
			cmp.Compare(against(b), against(a)), cmp.Compare(btoi(holds(a)), btoi(holds(b))),
			cmp.Compare(a.maxHead, b.maxHead)); c > 0 {
			best = i
		}
	}
	return best
}

// ceiling is the highest height the rule accepts among the candidates: the highest that another candidate at or
// below it vouches for (its height plus what the chain can have made since its block). When no candidate is
// vouched for (one source, or sources too far apart), the previous head vouches instead; without one, the lowest
// claim is taken. why says why a candidate above the ceiling is not corroborated.
func ceiling(src []Source, cands []int, chain Chain, prev Previous, now time.Time) (uint64, func(int) string) {
	if chain.MinBlockTime <= 0 || len(cands) == 0 {
		return math.MaxUint64, nil
	}
	reach := func(o *Source) uint64 { return o.Height + canMake(chain, blockTimeOf(o.BlockTime, o.Seen), now) }
	// Lowest first: a candidate is vouched for by another at its own height (whose reach is at least the height
	// plus Margin), or by the farthest reach of those below it.
	asc := slices.Clone(cands)
	slices.SortFunc(asc, func(a, b int) int { return cmp.Compare(src[a].Height, src[b].Height) })
	var top, below uint64 // below: the farthest reach of the candidates under the current height
	vouched := false
	for k := 0; k < len(asc); {
		h := src[asc[k]].Height
		n := k
		var here uint64
		for ; n < len(asc) && src[asc[n]].Height == h; n++ {
			here = max(here, reach(&src[asc[n]]))
		}
		if n-k > 1 || (k > 0 && below >= h) {
			vouched, top = true, h
		}
		below = max(below, here)
		k = n
	}
	if vouched {
		return top, func(i int) string {
			var best uint64
			var by *Source
			for _, j := range cands {
				if o := &src[j]; j != i && o.Height <= top && (by == nil || reach(o) > best) {
					best, by = reach(o), o
				}
			}
			return fmt.Sprintf("head %d not corroborated: the other sources put the chain at %d at most (%s is at %d, "+
				"its block made %s ago; at most one block per %s)", src[i].Height, best, by.Name, by.Height,
				ago(now, blockTimeOf(by.BlockTime, by.Seen)), chain.MinBlockTime)
		}
	}
	alone := "no other source"
	if len(cands) > 1 {
		alone = "no other source vouches for it"
	}
	if prev.Height > 0 {
		limit := prev.Height + canMake(chain, blockTimeOf(prev.BlockTime, prev.Seen), now)
		for _, i := range cands {
			if src[i].Height <= limit {
				top = max(top, src[i].Height)
			}
		}
		return top, func(i int) string {
			return fmt.Sprintf("head %d not corroborated: %s, and the chain can be at %d at most (the last accepted "+
				"head was %d, %s ago; at most one block per %s)", src[i].Height, alone, limit, prev.Height,
				ago(now, blockTimeOf(prev.BlockTime, prev.Seen)), chain.MinBlockTime)
		}
	}
	low := cands[0]
	for _, i := range cands {
		if src[i].Height < src[low].Height {
			low = i
		}
	}
	return src[low].Height, func(i int) string {
		return fmt.Sprintf("head %d not corroborated: %s, and with no head accepted before, the lowest claim counts "+
			"(%s at %d)", src[i].Height, alone, src[low].Name, src[low].Height)
	}
}

// canMake is how many blocks the chain can have made since a block made at t.
func canMake(chain Chain, t time.Time, now time.Time) uint64 {
	if t.IsZero() {
		return Margin
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return uint64((d+ClockSkew)/chain.MinBlockTime) + Margin
}

// blockTimeOf is when a source's block was made: its timestamp, else when it was first seen; never later than it
// was first seen (a timestamp from a clock ahead of ours).
func blockTimeOf(blockTime, seen time.Time) time.Time {
	if blockTime.IsZero() {
		return seen
	}
	if !seen.IsZero() && blockTime.After(seen) {
		return seen
	}
	return blockTime
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "unknown time"
	}
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// names lists up to n names, then how many more.
func names(ns []string, n int) string {
	ns = slices.Clone(ns)
	slices.Sort(ns)
	if len(ns) <= n {
		return strings.Join(ns, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ns[:n], ", "), len(ns)-n)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Key is the flag's reason without the figures that change every pass (how long ago a block was made, how far the
// chain can be): what a check's output must change for at once.
func (f Flag) Key() string {
	if f.Kind == Uncorroborated {
		k, _, _ := strings.Cut(f.Reason, ":")
		return k
	}
	return f.Reason
}

// KindChain is the chain of a kind of node, before any min_block_time the node sets: Ethereum block timestamps are
// whole seconds and must grow, so no Ethereum chain makes more than a block a second (L2s that do set
// min_block_time), and a race for the newest block settles within two blocks; CometBFT chains make blocks in
// about a second or more, and a committed block is final.
func KindChain(kind probe.Kind) Chain {
	switch kind {
	case probe.Ethereum:
		return Chain{MinBlockTime: time.Second, Confirmations: 2}
	case probe.CometBFT:
		return Chain{MinBlockTime: 250 * time.Millisecond}
	}
	return Chain{}
}
