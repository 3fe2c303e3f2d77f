// Package fleet reads the whole fleet's state back from Consul — every chainwarden service with its check status,
// and the heads in KV — for `chainwarden status`.
package fleet

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/networkhead"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/registry"
)

// Row is one node of the fleet.
type Row struct {
	Service string `json:"service"`
	Node    string `json:"node"`
	Host    string `json:"host"` // Consul node the service is registered on
	Status  string `json:"status"`
	Height  uint64 `json:"height"`
	Head    uint64 `json:"head"`
	Lag     uint64 `json:"lag"`
	// LagSec is how long the node has been behind: since the network first saw a height above the node's (among the
	// heads in KV); 0 when at the head.
	LagSec float64 `json:"lag_seconds"`
	Peers  uint64  `json:"peers"`
	AgeSec float64 `json:"block_age_seconds"` // -1 when unknown
	Client string  `json:"client,omitempty"`
	Output string  `json:"output"`
	// Reason is why the node is not passing, shortened for a table; "" when passing.
	Reason string `json:"reason,omitempty"`
	// Flag is why the node does not count toward its network's head (not_corroborated, fork), as its agent decided;
	// "" when it counts.
	Flag string `json:"flag,omitempty"`
}

// Read lists every chainwarden node known to Consul. Heights come from the heads in KV under kvPrefix (see
// kvlayout). A network's head is decided as the agents decide it (internal/networkhead) from the heads that count:
// fresh (no older than maxAge) and not flagged by their agent.
func Read(ctx context.Context, c *consulapi.Client, kvPrefix string, maxAge time.Duration, now time.Time) ([]Row, error) {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	svcs, _, err := c.Catalog().Services(q)
	if err != nil {
		return nil, fmt.Errorf("list services from consul: %w", err)
	}
	layout := kvlayout.New(kvPrefix)
	pairs, _, err := c.KV().List(layout.Heads(), q)
	if err != nil {
		return nil, fmt.Errorf("read heads from consul kv: %w", err)
	}
	all := heads.Decode(layout.Heads(), pairs, nil)
	flags, err := Flags(ctx, c, kvPrefix)
	if err != nil {
		return nil, err
	}
	flagged := map[string]string{} // service/source -> kind
	for _, f := range flags {
		flagged[f.Service+"/"+f.Source] = f.Kind
	}

	var rows []Row
	for name, tags := range svcs {
		if !slices.Contains(tags, registry.Tag) {
			continue
		}
		entries, _, err := c.Health().Service(name, registry.Tag, false, q)
		if err != nil {
			return nil, fmt.Errorf("health of %s: %w", name, err)
		}
		counted := map[string]heads.Head{}
		var sources []networkhead.Source
		for node, h := range all[name] {
			if now.Sub(h.Observed) > maxAge || flagged[name+"/"+node] != "" {
				continue
			}
			counted[node] = h
			sources = append(sources, networkhead.Source{Name: node, Height: h.Height, Hash: h.Hash,
				BlockTime: h.BlockTime, Seen: h.Observed, Hashes: map[uint64]probe.Hash{h.Height - 1: h.ParentHash}})
		}
		var kind probe.Kind
		if len(entries) > 0 {
			kind = probe.Kind(entries[0].Service.Meta["kind"])
		}
		d := networkhead.Decide(sources, networkhead.KindChain(kind), networkhead.Previous{}, now)
		head := d.Head.Height
		for node, h := range counted {
			if _, bad := d.Flagged(node); bad || h.Height > head {
				delete(counted, node)
			}
		}
		for _, e := range entries {
			row := Row{Service: name, Node: e.Service.ID, Host: e.Node.Node, Status: "critical", Head: head, AgeSec: -1,
				Client: e.Service.Meta["client"]}
			for _, ch := range e.Checks {
				if ch.CheckID == registry.CheckID(e.Service.ID) {
					row.Status, row.Output = ch.Status, ch.Output
				}
				if ch.CheckID == "_service_maintenance:"+e.Service.ID {
					row.Status, row.Output = "maintenance", ch.Output
				}
			}
			if row.Status != "passing" {
				row.Reason = Reason(row.Output, 60)
			}
			row.Flag = flagged[name+"/"+e.Service.ID]
			if h, ok := all[name][e.Service.ID]; ok {
				row.Height, row.Peers = h.Height, h.Peers
				if !h.BlockTime.IsZero() {
					row.AgeSec = now.Sub(h.BlockTime).Seconds()
				}
			} else if height, peers, ok := FromOutput(row.Output); ok && row.Status != "maintenance" {
				// Not a publisher (bounded publishers, internal/heads): its figures are in its check's output.
				row.Height, row.Peers = height, peers
			}
			if row.Height > 0 && head > row.Height {
				row.Lag = head - row.Height
				row.LagSec = behindSince(counted, row.Height, now, maxAge)
			}
			rows = append(rows, row)
		}
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Service != rows[j].Service {
			return rows[i].Service < rows[j].Service
		}
		return rows[i].Node < rows[j].Node
	})
	return rows, nil
}

var (
	outputHeight = regexp.MustCompile(`(?:^|[—;:] )height (\d+)(?:,|$)`)
	outputPeers  = regexp.MustCompile(`(?:^|, )(\d+) peers(?:,|$)`)
)

// FromOutput reads a node's height and peers from its check output, as the agent writes it ("height 1234, 2 behind
// head 1236 (geth-b), 5 peers, last block 1s ago", after the reasons when not passing): false when it has no height.
func FromOutput(out string) (height, peers uint64, ok bool) {
	m := outputHeight.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, false
	}
	height, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil || height == 0 {
		return 0, 0, false
	}
	if p := outputPeers.FindStringSubmatch(out); p != nil {
		peers, _ = strconv.ParseUint(p[1], 10, 64)
	}
	return height, peers, true
}

// Flags lists the sources agents flagged as not counting toward their network's head (nodes and references).
func Flags(ctx context.Context, c *consulapi.Client, kvPrefix string) ([]heads.Flag, error) {
	prefix := kvlayout.New(kvPrefix).Flags()
	pairs, _, err := c.KV().List(prefix, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read flags from consul kv: %w", err)
	}
	return heads.DecodeFlags(prefix, pairs, nil), nil
}

// Status is what `chainwarden status -json` prints: the nodes as the table shows them, and the sources agents
// flagged as not counting toward their network's head (nodes and references), as the table lists them under it.
type Status struct {
	Nodes []Row     `json:"nodes"`
	Flags []FlagRow `json:"flags"`
}

// FlagRow is one flagged source: which agent flagged which node or reference of a service, since when, and why.
type FlagRow struct {
	Service   string    `json:"service"`
	Source    string    `json:"source"`
	Reference bool      `json:"reference"`
	Agent     string    `json:"agent"`
	Kind      string    `json:"kind"` // not_corroborated | fork
	Reason    string    `json:"reason"`
	Since     time.Time `json:"since"`
}

// NewStatus puts rows and flags together for JSON (never null lists).
func NewStatus(rows []Row, flags []heads.Flag) Status {
	st := Status{Nodes: rows, Flags: make([]FlagRow, 0, len(flags))}
	if st.Nodes == nil {
		st.Nodes = []Row{}
	}
	for _, f := range flags {
		st.Flags = append(st.Flags, FlagRow{Service: f.Service, Source: f.Source, Reference: f.Reference, Agent: f.Agent,
			Kind: f.Kind, Reason: f.Reason, Since: f.Since})
	}
	return st
}

// WriteFlags prints the flagged sources under the table: which agent flagged which node or reference, since when,
// and why.
func WriteFlags(w io.Writer, flags []heads.Flag, now time.Time) error {
	if len(flags) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNOT COUNTED\tSERVICE\tSOURCE\tBY\tFOR\tREASON")
	for _, f := range flags {
		what := "node"
		if f.Reference {
			what = "reference"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", what, f.Service, f.Source, f.Agent, seconds(now.Sub(f.Since).Seconds()),
			f.Reason)
	}
	return tw.Flush()
}

// behindSince is how long ago the network first saw a height above height, among the heads that count.
func behindSince(hs map[string]heads.Head, height uint64, now time.Time, maxAge time.Duration) float64 {
	var first time.Time
	for _, h := range hs {
		if h.Height > height && now.Sub(h.Observed) <= maxAge && (first.IsZero() || h.Observed.Before(first)) {
			first = h.Observed
		}
	}
	if first.IsZero() {
		return 0
	}
	return max(now.Sub(first).Seconds(), 0)
}

// Reason shortens a check output to its first reason, at most n runes: the figures after " — " and the detail
// after the first "; " go (a held status keeps its "recovering: 1 of 3 good probes" and the last probe's reason).
func Reason(output string, n int) string {
	out := output
	if hold, rest, ok := strings.Cut(out, "; last probe: "); ok {
		out = hold + ": " + firstReason(rest)
	} else {
		out = firstReason(out)
	}
	if r := []rune(out); len(r) > n {
		out = string(r[:n-1]) + "…"
	}
	return out
}

func firstReason(s string) string {
	s, _, _ = strings.Cut(s, " — ")
	s, _, _ = strings.Cut(s, "; ")
	return s
}

// Style colours a table; the zero Style prints plain text (not a terminal).
type Style struct{ Color bool }

var statusColor = map[string]string{"passing": "32", "warning": "33", "critical": "31", "maintenance": "36"}

func (s Style) status(st string) string {
	if !s.Color || statusColor[st] == "" {
		return st
	}
	return "\x1b[" + statusColor[st] + "m" + st + "\x1b[0m"
}

// WriteTable prints rows as an aligned table.
func WriteTable(w io.Writer, rows []Row) error { return Style{}.WriteTable(w, rows) }

// WriteTable prints rows as an aligned table in the style.
func (s Style) WriteTable(w io.Writer, rows []Row) error {
	// tabwriter counts the colour escapes as text; colouring after alignment keeps the columns straight.
	var buf strings.Builder
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tNODE\tHOST\tSTATUS\tHEIGHT\tLAG\tBEHIND\tPEERS\tAGE\tCLIENT\tREASON")
	for _, r := range rows {
		age := "-"
		if r.AgeSec >= 0 {
			age = seconds(r.AgeSec)
		}
		height, lag, behind := "-", "-", "-"
		if r.Height > 0 {
			height, lag, behind = strconv.FormatUint(r.Height, 10), strconv.FormatUint(r.Lag, 10), seconds(r.LagSec)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Service, r.Node, r.Host, r.Status, height, lag, behind,
			r.Peers, age, r.Client, r.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	lines := strings.SplitAfter(buf.String(), "\n")
	for i, line := range lines {
		if i > 0 && i <= len(rows) && s.Color {
			st := rows[i-1].Status
			line = strings.Replace(line, "  "+st+" ", "  "+s.status(st)+" ", 1)
		}
		if _, err := io.WriteString(w, line); err != nil {
			return err
		}
	}
	return nil
}

func seconds(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// Wait blocks until the health of any service in Consul changes after index, or wait passes, and returns the new
// index (0 the first time: call it with 0 to get one at once).
func Wait(ctx context.Context, c *consulapi.Client, index uint64, wait time.Duration) (uint64, error) {
	q := (&consulapi.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	_, meta, err := c.Health().State(consulapi.HealthAny, q)
	if err != nil {
		return index, fmt.Errorf("watch health in consul: %w", err)
	}
	if meta.LastIndex < index { // reset (a new cluster), as Consul's blocking-query rules say
		return 0, nil
	}
	return meta.LastIndex, nil
}
