package agent

import (
	"encoding/json"
	"net/http"
	"sort"
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
		BehindSeconds: r.Behind.Seconds(), Finalized: r.Finalized, Peers: r.Peers, BlockAgeSeconds: r.BlockAge.Seconds(), Updated: st.updated}
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

// Handler serves /v1/health, /v1/health/{node} and /metrics.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Health())
	})
	mux.HandleFunc("GET /v1/health/{node}", func(w http.ResponseWriter, r *http.Request) {
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
		writeJSON(w, StatusCode(h.Status), h)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
