package agent

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/chainwarden/chainwarden/internal/verdict"
)

// NodeHealth is a node's verdict as served on /v1/health.
type NodeHealth struct {
	Node            string    `json:"node"`
	Service         string    `json:"service"`
	Kind            string    `json:"kind"`
	Status          string    `json:"status"`
	Output          string    `json:"output"`
	Reasons         []string  `json:"reasons,omitempty"`
	Height          uint64    `json:"height"`
	Head            uint64    `json:"head"`
	HeadNode        string    `json:"head_node,omitempty"`
	Lag             uint64    `json:"lag"`
	BehindSeconds   float64   `json:"behind_seconds"` // how long the node has been behind the head
	Finalized       uint64    `json:"finalized,omitempty"`
	Safe            uint64    `json:"safe,omitempty"`
	Peers           uint64    `json:"peers"`
	BlockAgeSeconds float64   `json:"block_age_seconds"`
	Updated         time.Time `json:"updated"`
	// Push says how the node's heads arrive when it has a ws URL: "subscribed to ws://HOST", "connecting to ...",
	// or "push unavailable: WHY; polling every INTERVAL".
	Push string `json:"push,omitempty"`
}

// Health returns the current verdict of every node, sorted by name.
func (a *Agent) Health() []NodeHealth {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]NodeHealth, 0, len(a.nodes))
	for _, st := range a.nodes {
		h := st.health()
		h.Push = a.pushDetail(st)
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

func (st *nodeState) health() NodeHealth {
	r := st.report
	if !r.Probed {
		r.Status = st.damper.Current()
	}
	return NodeHealth{Node: st.cfg.Name, Service: st.cfg.Service, Kind: string(st.cfg.Kind), Status: r.Status.String(),
		Output: r.Output(), Reasons: r.Reasons, Height: r.Height, Head: r.Head, HeadNode: r.HeadNode, Lag: r.Lag,
		BehindSeconds: r.Behind.Seconds(), Finalized: r.Finalized, Safe: r.Safe, Peers: r.Peers, BlockAgeSeconds: r.BlockAge.Seconds(), Updated: st.updated}
}

// StatusCode is what /v1/health/<node> answers for a status: load balancers that only read codes (AWS ALB target
// groups, HAProxy httpchk) treat 2xx as in, anything else as out.
func StatusCode(s string) int {
	switch st, _ := verdict.ParseStatus(s); st {
	case verdict.Passing:
		return http.StatusOK
	case verdict.Warning:
		return http.StatusTooManyRequests
	default:
		return http.StatusServiceUnavailable
	}
}

// AllocHealth is an allocation's verdict as served on /v1/health/alloc/<id>: the worst of its chain nodes.
type AllocHealth struct {
	AllocID string       `json:"alloc_id"`
	Status  string       `json:"status"`
	Output  string       `json:"output"` // "<node>: <output>" of each node, for `nomad alloc checks`
	Nodes   []NodeHealth `json:"nodes"`
}

// Handler serves the agent's page on /, /v1/health, /v1/health/{node}, /v1/health/alloc/{alloc} and /metrics.
//
// /v1/health/{node} and /v1/health/alloc/{alloc} take ?warning_ok=true, which answers 200 for a warning (lagging but
// serving) node: a load balancer or a Nomad deployment that accepts such nodes says so.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.servePage)
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Health())
	})
	mux.HandleFunc("GET /v1/health/{node}", func(w http.ResponseWriter, r *http.Request) {
		warningOK, ok := warningOK(w, r)
		if !ok {
			return
		}
		name := r.PathValue("node")
		a.mu.Lock()
		st, ok := a.nodes[name]
		var h NodeHealth
		if ok {
			h = st.health()
			h.Push = a.pushDetail(st)
		}
		a.mu.Unlock()
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no node named " + name})
			return
		}
		writeJSON(w, code(h.Status, warningOK), h)
	})
	// Nomad's deployment check (the job specs' service check) asks by allocation: a replacement allocation is judged
	// on its own, never on the verdict its predecessor left under the same node name.
	mux.HandleFunc("GET /v1/health/alloc/{alloc}", func(w http.ResponseWriter, r *http.Request) {
		warningOK, ok := warningOK(w, r)
		if !ok {
			return
		}
		h := a.AllocHealth(r.PathValue("alloc"))
		if len(h.Nodes) == 0 {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no chain node of allocation " + h.AllocID +
				" is known to this agent (not discovered yet, not on this host, or not running)"})
			return
		}
		writeJSON(w, code(h.Status, warningOK), h)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// AllocHealth is the verdict of the chain nodes the agent knows in a Nomad allocation: the worst of them (no
// nodes: none known).
func (a *Agent) AllocHealth(allocID string) AllocHealth {
	h := AllocHealth{AllocID: allocID}
	if allocID == "" {
		return h
	}
	a.mu.Lock()
	for _, st := range a.nodes {
		if st.cfg.AllocID == allocID {
			h.Nodes = append(h.Nodes, st.health())
		}
	}
	a.mu.Unlock()
	sort.Slice(h.Nodes, func(i, j int) bool { return h.Nodes[i].Node < h.Nodes[j].Node })
	worst := verdict.Passing
	var outs []string
	for _, n := range h.Nodes {
		if s, _ := verdict.ParseStatus(n.Status); s > worst {
			worst = s
		}
		outs = append(outs, n.Node+": "+n.Output)
	}
	h.Status, h.Output = worst.String(), strings.Join(outs, "\n")
	return h
}

// warningOK reads the warning_ok query parameter, answering 400 itself when it is not a boolean.
func warningOK(w http.ResponseWriter, r *http.Request) (bool, bool) {
	v := r.URL.Query().Get("warning_ok")
	if v == "" {
		return false, true
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "warning_ok: " + strconv.Quote(v) + " is not true or false"})
		return false, false
	}
	return b, true
}

func code(status string, warningOK bool) int {
	if warningOK && status == verdict.Warning.String() {
		return http.StatusOK
	}
	return StatusCode(status)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
