package agent

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/networkhead"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// maxLookupHeights is how many block hashes one pass may ask a node or reference for (in one call).
const maxLookupHeights = 2

// network is what one pass decided about one service's network.
type network struct {
	tracker *networkhead.Tracker
	dec     networkhead.Decision
	own     map[string]bool   // names of this agent's nodes and references in the service
	origin  map[string]string // source name -> originOwn, originOthers or originReference
}

// Where a source of a network's head comes from (the network_head_sources metric).
const (
	originOwn       = "own"
	originOthers    = "other_agents"
	originReference = "reference"
)

// counted is how many sources of each origin count toward the decided head: those not flagged.
func (n *network) counted() map[string]int {
	c := map[string]int{}
	for name, o := range n.origin {
		if _, flagged := n.dec.Flagged(name); !flagged {
			c[o]++
		}
	}
	return c
}

// sourceSeen is when a reference's height was first seen (Step's own, like nodeState.since).
type sourceSeen struct {
	height uint64
	since  time.Time
}

// networks decides the head of every service this agent has nodes in, from its nodes' results, the fresh heads
// other agents published in KV and its references (see internal/networkhead): where a source has not yet been
// compared by block hash with the others, it asks the nodes and references that can answer for the blocks at a
// common height, in one call each, under the probe deadline.
func (a *Agent) networks(ctx context.Context, nodes []work, results []probe.Result, refs []nodespec.Reference,
	refResults []probe.Result, now time.Time) map[string]*network {
	if a.scratch.obs == nil {
		a.scratch.obs = map[string][]networkhead.Observation{}
	}
	obs := a.scratch.obs // kept from pass to pass (the tracker copies what it keeps)
	for svc, o := range obs {
		obs[svc] = o[:0]
	}
	chains := map[string]networkhead.Chain{}
	nets := map[string]*network{}
	for i, w := range nodes {
		svc := w.cfg.Service
		if w.cfg.Kind == probe.Chainlink {
			continue // no heights
		}
		if nets[svc] == nil {
			nets[svc] = &network{own: map[string]bool{}, origin: map[string]string{}}
		}
		nets[svc].own[w.cfg.Name] = true
		chains[svc] = mergeChain(chains[svc], w.cfg.Chain)
		r := results[i]
		if r.Err != nil || !r.HasHeight || r.Height == 0 || !chainMatches(w.cfg, r) {
			continue
		}
		nets[svc].origin[w.cfg.Name] = originOwn
		obs[svc] = append(obs[svc], observation(w.cfg.Name, false, r, w.st.since))
	}
	for i, ref := range refs {
		n, r := nets[ref.Service], refResults[i]
		if n == nil || r.Err != nil || !r.HasHeight || r.Height == 0 {
			continue
		}
		if want := serviceChain(nodes, ref.Service); want != "" && r.ChainID != want {
			continue
		}
		seen := a.refSeen[ref.Name]
		if seen.height != r.Height || seen.since.IsZero() {
			seen = sourceSeen{r.Height, now}
			a.refSeen[ref.Name] = seen
		}
		n.own[ref.Name] = true
		n.origin[ref.Name] = originReference
		obs[ref.Service] = append(obs[ref.Service], observation(ref.Name, true, r, seen.since))
	}

	// Other agents' nodes: fresh heads in KV, not this agent's own (its nodes are in this pass already).
	for svc, n := range nets {
		for _, h := range a.heads.All(svc) {
			if h.Agent == a.id || n.own[h.Node] || now.Sub(h.Observed) > a.cfg.HeadMaxAge {
				continue
			}
			n.origin[h.Node] = originOthers
			obs[svc] = append(obs[svc], networkhead.Observation{Source: networkhead.Source{Name: h.Node, Height: h.Height,
				Hash: h.Hash, BlockTime: h.BlockTime, Seen: h.Observed, Finalized: h.Finalized}, ParentHash: h.ParentHash})
		}
	}

	type lookup struct {
		svc    string
		l      networkhead.Lookup
		hashes []probe.Hash
	}
	var lookups []*lookup
	for svc, n := range nets {
		tr := a.trackers[svc]
		if tr == nil {
			tr = networkhead.NewTracker(chains[svc])
			a.trackers[svc] = tr
		}
		tr.Chain = chains[svc]
		tr.PreviousMaxAge = a.cfg.HeadMaxAge
		n.tracker = tr
		slices.SortFunc(obs[svc], func(x, y networkhead.Observation) int { return strings.Compare(x.Name, y.Name) })
		tr.Observe(obs[svc], now)
		// This agent can ask its own nodes and references for blocks (those counted this pass).
		canAsk := func(name string) bool { o := n.origin[name]; return o == originOwn || o == originReference }
		for _, l := range tr.Lookups(canAsk, maxLookupHeights, now) {
			lookups = append(lookups, &lookup{svc: svc, l: l})
		}
	}
	for svc := range a.trackers {
		if nets[svc] == nil {
			delete(a.trackers, svc)
			delete(obs, svc)
			a.metrics.forgetService(svc)
		}
	}

	if len(lookups) > 0 {
		sem := make(chan struct{}, maxParallelProbes)
		var wg sync.WaitGroup
		for _, lk := range lookups {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				lctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
				defer cancel()
				hs, err := probe.BlockHashes(lctx, a.client, sourceTarget(nodes, refs, lk.svc, lk.l.Source), lk.l.Heights)
				if err != nil {
					a.log.Debug("block hash lookup failed", "source", lk.l.Source, "heights", lk.l.Heights, "error", err)
				}
				lk.hashes = hs
			})
		}
		wg.Wait()
		a.metrics.lookups.Add(float64(len(lookups)))
		for _, lk := range lookups {
			for i, h := range lk.hashes {
				nets[lk.svc].tracker.Record(lk.l.Source, lk.l.Heights[i], h)
			}
		}
	}
	for svc, n := range nets {
		n.dec = n.tracker.Decide(now)
		a.metrics.observeSources(svc, n.counted())
	}
	return nets
}

// sourceTarget is how to ask a source of a service this agent can ask (canAsk) for blocks: its node or reference.
func sourceTarget(nodes []work, refs []nodespec.Reference, svc, name string) probe.Target {
	for _, w := range nodes {
		if w.cfg.Service == svc && w.cfg.Name == name {
			return w.cfg.Target()
		}
	}
	for _, r := range refs {
		if r.Service == svc && r.Name == name {
			return r.Target()
		}
	}
	return probe.Target{}
}

// mergeChain folds what one more node of a service says of its chain into what the others said: the fastest block
// time and the deepest reorgs any of them declares.
func mergeChain(c, n networkhead.Chain) networkhead.Chain {
	if c.MinBlockTime == 0 || (n.MinBlockTime > 0 && n.MinBlockTime < c.MinBlockTime) {
		c.MinBlockTime = n.MinBlockTime
	}
	c.Confirmations = max(c.Confirmations, n.Confirmations)
	return c
}

func observation(name string, reference bool, r probe.Result, seen time.Time) networkhead.Observation {
	o := networkhead.Observation{Source: networkhead.Source{Name: name, Reference: reference, Height: r.Height,
		Hash: r.Hash, BlockTime: r.BlockTime, Seen: seen}, ParentHash: r.ParentHash}
	if r.HasFinalized {
		o.Finalized = r.Finalized
	}
	return o
}

// judgement is what a node's verdict needs from its network: the head, how long the node has been behind it, its
// flag, and the network's finalized block.
func (n *network) judgement(name string, r probe.Result, now time.Time) (head verdict.Head, in verdict.Input) {
	if n == nil {
		return head, in
	}
	d := &n.dec
	if d.Head.Name != "" {
		head = verdict.Head{Height: d.Head.Height, Node: d.Head.Name, Observed: d.Head.Seen}
	}
	if r.Err == nil && r.HasHeight && head.Height > r.Height {
		if since, ok := n.tracker.BehindSince(r.Height); ok {
			in.BehindFor = max(now.Sub(since), 0)
		}
	}
	if f, ok := d.Flagged(name); ok {
		in.Flag, in.FlagKey = f.Reason, f.Key()
	}
	if d.Finalized > 0 {
		in.Finalized, in.FinalizedNode = d.Finalized, d.FinalizedSource
		if r.HasFinalized && r.Finalized < d.Finalized {
			if since, ok := n.tracker.FinalizedBehindSince(r.Finalized); ok {
				in.FinalizedBehindFor = max(now.Sub(since), 0)
			}
		}
	}
	return head, in
}

// publishFlags logs and counts the sources of this agent (nodes and references) that became flagged or stopped
// being, and writes the current flags to KV for `chainwarden status`.
func (a *Agent) publishFlags(ctx context.Context, nets map[string]*network, now time.Time) {
	var flags []heads.Flag
	current := map[string]heads.Flag{}
	for svc, n := range nets {
		for _, f := range n.dec.Flags {
			if !n.own[f.Source] {
				continue // another agent's node: its agent judges it
			}
			k := svc + "/" + f.Source
			hf := heads.Flag{Service: svc, Source: f.Source, Reference: f.Reference, Kind: string(f.Kind),
				Reason: f.Reason, Key: f.Key(), Since: now}
			if prev, ok := a.flagged[k]; ok && prev.Kind == hf.Kind {
				hf.Since = prev.Since
			} else {
				a.metrics.flagsTotal.WithLabelValues(svc, f.Source, hf.Kind).Inc()
				a.log.Warn("source does not count toward the network head", "service", svc, "source", f.Source,
					"reference", f.Reference, "reason", f.Reason)
			}
			a.metrics.flagged.WithLabelValues(svc, f.Source, hf.Kind).Set(1)
			current[k] = hf
			flags = append(flags, hf)
		}
	}
	for k, prev := range a.flagged {
		if cur, ok := current[k]; !ok || cur.Kind != prev.Kind {
			a.metrics.flagged.DeleteLabelValues(prev.Service, prev.Source, prev.Kind)
			if !ok {
				a.log.Info("source counts toward the network head again", "service", prev.Service, "source", prev.Source)
			}
		}
	}
	a.flagged = current
	if err := a.heads.PublishFlags(ctx, a.id, flags); err != nil {
		a.log.Debug("publish flags failed", "error", err)
	}
}
