// Package networkhead decides a network's head from every source that reports one — this agent's nodes, the nodes
// other agents published to Consul KV, external references — so that no single faulty source can move it:
//
//   - Branches. Sources are compared by block hash at a common height (far enough below both of their heads that a
//     race for the newest block is not mistaken for a fork: Chain.Confirmations). Sources that agree form a branch;
//     the branch the most sources do not contradict wins (ties: the branch of the previous head, then the highest
//     head, then the name). A source whose block at a common height differs from the winning branch's is flagged
//     "on a fork" and does not count.
//   - Heights. Block times bound how fast a chain grows: after a block made at time T, the chain can have at most
//     ⌊(now − T + ClockSkew) / MinBlockTime⌋ + Margin more blocks by now. A source's height is corroborated when
//     another source (not on a fork) vouches for it that way — its own height plus what the chain can have made
//     since its block. A height nobody vouches for is flagged "not corroborated" and does not move the head. Heights
//     below another source's always are corroborated: a lagging node is judged by its lag, not flagged.
//   - One source. With a single source there is nothing to corroborate against: the previous accepted head vouches
//     instead (a source that jumps further than the chain can grow since then is flagged); with no previous head,
//     the source is accepted as it is. A lone source that lies from the start cannot be caught: give the service a
//     reference or a second node.
//
// The head is the highest corroborated height; the finalized block the highest finalized of the same sources, never
// above the head. Decide is the rule, a pure function; Tracker keeps what it needs between passes.
package networkhead

import (
	"cmp"
	"fmt"
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
	leader  int
	members []int
	hashes  map[uint64]branchEntry
	rel     []relation // of every source to this branch
	why     []conflict // for the sources that disagree
	maxH    uint64
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

	// Heights: each candidate must be vouched for by another (or, alone, by the previous head).
	var accepted []int
	for _, i := range cands {
		if reason, ok := corroborated(src, cands, i, chain, prev, now); !ok {
			d.Flags = append(d.Flags, Flag{Source: src[i].Name, Reference: src[i].Reference, Kind: Uncorroborated,
				Reason: reason})
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
		why: make([]conflict, len(src))}
	join := func(i int) {
		b.rel[i] = agree
		b.members = append(b.members, i)
		b.maxH = max(b.maxH, src[i].Height)
		s := &src[i]
		top := confirmedTop(s, chain)
		for h := top; h+Window > s.Height && h > 0; h-- {
			hash := s.hashAt(h)
			if hash.IsZero() {
				continue
			}
			e, ok := b.hashes[h]
			switch {
			case !ok:
				b.hashes[h] = branchEntry{hash: hash, sources: []string{s.Name}}
			case e.hash == hash:
				e.sources = append(e.sources, s.Name)
				b.hashes[h] = e
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
	top := confirmedTop(s, chain)
	for h := top; h+Window > s.Height && h > 0; h-- {
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
			cmp.Compare(a.maxH, b.maxH)); c > 0 {
			best = i
		}
	}
	return best
}

// corroborated says whether another candidate (or, with none, the previous head) vouches for src[i]'s height.
func corroborated(src []Source, cands []int, i int, chain Chain, prev Previous, now time.Time) (string, bool) {
	s := src[i]
	if chain.MinBlockTime <= 0 {
		return "", true
	}
	var best uint64
	var by *Source
	for _, j := range cands {
		if j == i {
			continue
		}
		o := &src[j]
		reach := o.Height + canMake(chain, blockTimeOf(o.BlockTime, o.Seen), now)
		if s.Height <= reach {
			return "", true
		}
		if by == nil || reach > best {
			best, by = reach, o
		}
	}
	if by != nil {
		return fmt.Sprintf("head %d not corroborated: the other sources put the chain at %d at most (%s is at %d, "+
			"its block made %s ago; at most one block per %s)", s.Height, best, by.Name, by.Height,
			ago(now, blockTimeOf(by.BlockTime, by.Seen)), chain.MinBlockTime), false
	}
	if prev.Height == 0 {
		return "", true // nothing to compare with
	}
	reach := prev.Height + canMake(chain, blockTimeOf(prev.BlockTime, prev.Seen), now)
	if s.Height <= reach {
		return "", true
	}
	return fmt.Sprintf("head %d not corroborated: no other source, and the chain can be at %d at most (the last "+
		"accepted head was %d, %s ago; at most one block per %s)", s.Height, reach, prev.Height,
		ago(now, blockTimeOf(prev.BlockTime, prev.Seen)), chain.MinBlockTime), false
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
