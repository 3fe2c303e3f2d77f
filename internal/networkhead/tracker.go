package networkhead

import (
	"cmp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
)

// Observation is a source's head as seen in one pass, with the hash of its parent block when the kind reports it
// (Ethereum): the parent links the new head to the hashes remembered from earlier passes.
type Observation struct {
	Source
	ParentHash probe.Hash
}

// Lookup asks a source for its block hashes at heights, so that a source not yet compared by hash with the winning
// branch can be.
type Lookup struct {
	Source  string
	Heights []uint64
}

// Tracker keeps, for one network, what the rule needs from pass to pass: each source's recent block hashes, the
// previous head, and when the network first reached each head and finalized height (how long a node has been
// behind). One pass: Observe, then Lookups and Record for the answers, then Decide. Not safe for concurrent use.
type Tracker struct {
	Chain Chain
	// PreviousMaxAge is how long the previous head may hold alone: when no source has been accepted for this long
	// (every one above what the previous head allows, and none vouched for by another), the previous head is dropped
	// and the rule starts over, as with no head accepted before. A lone node restarted from an old head and caught up
	// since is ahead of what its old head allows, and on a chain making blocks as fast as it may it never gets back
	// within reach: without this it would be flagged for good. Zero: the previous head holds for ever.
	PreviousMaxAge time.Duration

	prev       Previous
	acceptedAt time.Time // when prev was accepted
	known      map[string]*memory
	pass       []Source
	heads      history
	finals     history
}

// memory is what a tracker remembers of one source.
type memory struct {
	hashes map[uint64]probe.Hash
	top    uint64
	seen   time.Time // last observed
}

// forgetAfter is how long a tracker keeps the hashes of a source that stopped reporting.
const forgetAfter = 5 * time.Minute

// NewTracker returns a tracker for a chain.
func NewTracker(chain Chain) *Tracker {
	return &Tracker{Chain: chain, known: map[string]*memory{}}
}

// Previous is the head the last decision accepted.
func (t *Tracker) Previous() Previous { return t.prev }

// Observe starts a pass with the sources' heads, remembering their hashes. A source whose parent hash differs from
// the hash remembered one block below its head has reorganised: what was remembered below is forgotten.
func (t *Tracker) Observe(obs []Observation, now time.Time) {
	t.pass = t.pass[:0]
	for _, o := range obs {
		m := t.known[o.Name]
		if m == nil {
			m = &memory{hashes: map[uint64]probe.Hash{}}
			t.known[o.Name] = m
		}
		h := o.Height
		if h < m.top { // went back: a reorg to a shorter chain, or another node behind the same name
			for k := range m.hashes {
				if k > h {
					delete(m.hashes, k)
				}
			}
		}
		if old, ok := m.hashes[h]; ok && !o.Hash.IsZero() && old != o.Hash {
			clear(m.hashes) // reorganised at its head
		}
		if h > 0 && !o.ParentHash.IsZero() {
			if old, ok := m.hashes[h-1]; ok && old != o.ParentHash {
				clear(m.hashes) // reorganised below its head, how deep is unknown
			}
			m.hashes[h-1] = o.ParentHash
		}
		if !o.Hash.IsZero() {
			m.hashes[h] = o.Hash
		}
		for k := range m.hashes {
			if k+Window <= h {
				delete(m.hashes, k)
			}
		}
		m.top, m.seen = h, now
		s := o.Source
		s.Hashes = m.hashes
		t.pass = append(t.pass, s)
	}
	for name, m := range t.known {
		if now.Sub(m.seen) > forgetAfter {
			delete(t.known, name)
		}
	}
}

// Record remembers a source's block hash at a height (the answer to a Lookup).
func (t *Tracker) Record(source string, height uint64, hash probe.Hash) {
	if m := t.known[source]; m != nil && !hash.IsZero() && height <= m.top && height+Window > m.top {
		m.hashes[height] = hash
	}
}

// Lookups plans the hash lookups that would compare the sources not yet compared with the winning branch, at one
// common height each: one the branch knows, asking the source (when it can be asked); else one the source knows,
// asking a source of the branch that can be asked; else the same height asked of both. At most perSource heights
// per source, the highest first.
func (t *Tracker) Lookups(canAsk func(source string) bool, perSource int, now time.Time) []Lookup {
	d := Decide(t.pass, t.Chain, t.prev, now)
	if len(d.Unknown) == 0 {
		return nil
	}
	byName := map[string]*Source{}
	for i := range t.pass {
		byName[t.pass[i].Name] = &t.pass[i]
	}
	var members []*Source // of the winning branch that can be asked, highest first
	for _, n := range d.members {
		if canAsk(n) {
			members = append(members, byName[n])
		}
	}
	slices.SortFunc(members, func(a, b *Source) int { return cmp.Compare(b.Height, a.Height) })
	within := func(s *Source, h uint64) bool { return h > 0 && h <= confirmedTop(s, t.Chain) && h+Window > s.Height }
	member := func(h uint64) *Source {
		for _, q := range members {
			if within(q, h) {
				return q
			}
		}
		return nil
	}
	want := map[string][]uint64{}
	add := func(s *Source, h uint64) {
		if s.hashAt(h).IsZero() && !slices.Contains(want[s.Name], h) {
			want[s.Name] = append(want[s.Name], h)
		}
	}
	for _, name := range d.Unknown {
		y := byName[name]
		ask := canAsk(name)
		var branchAt, ownAt uint64 // the highest heights y could be compared at that the branch, or y, knows
		for h := range d.branch {
			if within(y, h) && h > branchAt {
				branchAt = h
			}
		}
		for h := confirmedTop(y, t.Chain); within(y, h); h-- {
			if !y.hashAt(h).IsZero() {
				ownAt = h
				break
			}
		}
		switch {
		case ask && branchAt > 0:
			add(y, branchAt)
		case ownAt > 0 && member(ownAt) != nil:
			add(member(ownAt), ownAt)
		case ask && len(members) > 0:
			c := min(confirmedTop(y, t.Chain), confirmedTop(members[0], t.Chain))
			if q := member(c); q != nil && within(y, c) {
				add(y, c)
				add(q, c)
			}
		}
	}
	var out []Lookup
	for name, hs := range want {
		slices.SortFunc(hs, func(a, b uint64) int { return cmp.Compare(b, a) })
		out = append(out, Lookup{Source: name, Heights: hs[:min(len(hs), perSource)]})
	}
	slices.SortFunc(out, func(a, b Lookup) int { return strings.Compare(a.Source, b.Source) })
	return out
}

// Decide applies the rule to this pass's sources and remembers the outcome: the previous head for the next pass,
// and when the network first reached the new head and finalized heights.
func (t *Tracker) Decide(now time.Time) Decision {
	d := Decide(t.pass, t.Chain, t.prev, now)
	if d.Head.Name == "" && t.prev.Height > 0 && t.PreviousMaxAge > 0 && now.Sub(t.acceptedAt) >= t.PreviousMaxAge {
		d = Decide(t.pass, t.Chain, Previous{}, now) // the previous head is too old to hold alone: start over
	}
	if d.Head.Name == "" {
		return d // nothing accepted: keep the previous head
	}
	h := d.Head
	t.prev = Previous{Height: h.Height, Source: h.Name, BlockTime: h.BlockTime, Seen: h.Seen}
	t.acceptedAt = now
	seen := h.Seen
	if seen.IsZero() || seen.After(now) {
		seen = now
	}
	t.heads.reach(h.Height, seen)
	if d.Finalized > 0 {
		t.finals.reach(d.Finalized, now)
	}
	return d
}

// BehindSince is when the network first had a head above height; false when it never had (the height is at or
// above the head). Before the tracker's memory starts, it says when its memory starts.
func (t *Tracker) BehindSince(height uint64) (time.Time, bool) { return t.heads.since(height) }

// FinalizedBehindSince is when the network first had a finalized block above f.
func (t *Tracker) FinalizedBehindSince(f uint64) (time.Time, bool) { return t.finals.since(f) }

// history records when a height was first reached, heights increasing.
type history struct{ steps []step }

type step struct {
	height uint64
	at     time.Time
}

// maxSteps bounds a history: at one block a second, over an hour of heights.
const maxSteps = 4096

// reach records that the network is at height now, first seen at `at`. Steps above height are dropped (the head
// that made them no longer counts: a source flagged, or gone).
func (h *history) reach(height uint64, at time.Time) {
	n := len(h.steps)
	for n > 0 && h.steps[n-1].height > height {
		n--
	}
	h.steps = h.steps[:n]
	if n > 0 {
		last := h.steps[n-1]
		if last.height == height {
			return
		}
		if at.Before(last.at) {
			at = last.at
		}
	}
	if len(h.steps) == maxSteps {
		h.steps = append(h.steps[:0], h.steps[1:]...)
	}
	h.steps = append(h.steps, step{height, at})
}

func (h *history) since(height uint64) (time.Time, bool) {
	i := sort.Search(len(h.steps), func(i int) bool { return h.steps[i].height > height })
	if i == len(h.steps) {
		return time.Time{}, false
	}
	return h.steps[i].at, true
}
