// Package fleet reads the whole fleet's state back from Consul — every chainwarden service with its check status,
// and the heads in KV — for `chainwarden status`.
package fleet

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/registry"
)

// Row is one node of the fleet.
type Row struct {
	Service string  `json:"service"`
	Node    string  `json:"node"`
	Host    string  `json:"host"` // Consul node the service is registered on
	Status  string  `json:"status"`
	Height  uint64  `json:"height"`
	Head    uint64  `json:"head"`
	Lag     uint64  `json:"lag"`
	Peers   uint64  `json:"peers"`
	AgeSec  float64 `json:"block_age_seconds"` // -1 when unknown
	Client  string  `json:"client,omitempty"`
	Output  string  `json:"output"`
}

// Read lists every chainwarden node known to Consul. Heights come from the heads in KV under kvPrefix (see
// kvlayout); heads older
// than maxAge don't count toward a network's head.
func Read(ctx context.Context, c *consulapi.Client, kvPrefix string, maxAge time.Duration, now time.Time) ([]Row, error) {
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	svcs, _, err := c.Catalog().Services(q)
	if err != nil {
		return nil, fmt.Errorf("list services from consul: %w", err)
	}
	prefix := kvlayout.New(kvPrefix).Heads()
	pairs, _, err := c.KV().List(prefix, q)
	if err != nil {
		return nil, fmt.Errorf("read heads from consul kv: %w", err)
	}
	all := heads.Decode(prefix, pairs, nil)

	var rows []Row
	for name, tags := range svcs {
		if !hasTag(tags, registry.Tag) {
			continue
		}
		entries, _, err := c.Health().Service(name, registry.Tag, false, q)
		if err != nil {
			return nil, fmt.Errorf("health of %s: %w", name, err)
		}
		var head uint64
		for _, h := range all[name] {
			if now.Sub(h.Observed) <= maxAge && h.Height > head {
				head = h.Height
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
			if h, ok := all[name][e.Service.ID]; ok {
				row.Height, row.Peers = h.Height, h.Peers
				if head > h.Height {
					row.Lag = head - h.Height
				}
				if !h.BlockTime.IsZero() {
					row.AgeSec = now.Sub(h.BlockTime).Seconds()
				}
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

// WriteTable prints rows as an aligned table.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tNODE\tHOST\tSTATUS\tHEIGHT\tLAG\tPEERS\tAGE\tCLIENT")
	for _, r := range rows {
		age := "-"
		if r.AgeSec >= 0 {
			age = (time.Duration(r.AgeSec * float64(time.Second))).Round(time.Second).String()
		}
		height, lag := "-", "-"
		if r.Height > 0 {
			height, lag = strconv.FormatUint(r.Height, 10), strconv.FormatUint(r.Lag, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Service, r.Node, r.Host, r.Status, height, lag, r.Peers, age, r.Client)
	}
	return tw.Flush()
}

func hasTag(tags []string, tag string) bool {
	for _, t := range tags {
		if t == tag {
			return true
		}
	}
	return false
}
