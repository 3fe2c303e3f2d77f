package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ethfake"
	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/restart"
)

// nomadNode is a node as discovery makes it from a Nomad allocation.
func nomadNode(t *testing.T, name, url, allocID string) nodespec.Node {
	t.Helper()
	one := uint64(1)
	n := nodespec.Node{Name: name, Kind: probe.Ethereum, RPC: url, Service: "eth-mainnet", ChainID: &one,
		Source: nodespec.SourceNomad, AllocID: allocID, Task: "geth"}
	if err := n.Normalize().Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// healing is an agent (fake Consul, fake Nomad, fake clock) watching geth-a, a Nomad task stuck at height 100, and
// geth-b, a config node that follows the chain.
type healing struct {
	*unit
	nomad  *fakes.Nomad
	stuck  *ethfake.Node
	chain  *ethfake.Node
	height uint64
}

func newHealing(t *testing.T, extra string) *healing {
	t.Helper()
	clk := start()
	stuck, u1 := newFakeEth(t, 100, clk)
	chain, u2 := newFakeEth(t, 100, clk)
	src := fmt.Sprintf("consul {}\nnomad {}\ninterval = \"1s\"\n%s%s", node("geth-b", u2, 1), extra)
	cfg, err := config.Parse([]byte(src), "heal.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c := fakes.NewConsul()
	nomad := fakes.NewNomad("client-1")
	nomad.SetAllocations("client-1", &nomadapi.Allocation{ID: "a1", TaskStates: map[string]*nomadapi.TaskState{"geth": {State: "running"}}})
	a, err := New(cfg, hclog.NewNullLogger(), Options{ID: "host-a", Clock: clk, Nomad: nomad,
		HeadClaimWindow: -1, Consul: Consul{Agent: c, KV: c, Txn: c, Sessions: c, Catalog: c, Restart: restart.Consul{Sessions: c, KV: c, Health: c}}})
	if err != nil {
		t.Fatal(err)
	}
	a.SetNodes(nodespec.SourceNomad, []nodespec.Node{nomadNode(t, "geth-a", u1, "a1")})
	return &healing{unit: &unit{Agent: a, consul: c, clock: clk}, nomad: nomad, stuck: stuck, chain: chain, height: 100}
}

// pass moves the chain one block and the clock one second, and runs a pass (waiting for a restart it started).
func (h *healing) pass() {
	h.height++
	h.chain.Height.Store(h.height)
	h.clock.Advance(time.Second)
	h.Step(context.Background())
	if h.restarter != nil {
		h.restarter.Wait()
	}
}

// Without a restart block, a node stuck while its network advances is reported, never restarted.
func TestRestartsAreOffByDefault(t *testing.T) {
	h := newHealing(t, "")
	for range 600 {
		h.pass()
	}
	if st, out := h.check(t, "geth-a"); st != "critical" || strings.Contains(out, "restart") {
		t.Fatalf("geth-a: %s %q", st, out)
	}
	if r := h.nomad.Restarts(); len(r) != 0 {
		t.Fatalf("restarted without a restart block: %v", r)
	}
}

// With the block, the stuck node is restarted through Nomad once it has been critical for `after`; the check output,
// /v1/health and the metrics say so.
func TestRestartBlockRestartsAStuckNode(t *testing.T) {
	h := newHealing(t, "restart {\n  after = \"30s\"\n}\n")
	var passes int
	for passes = 1; passes <= 60 && len(h.nomad.Restarts()) == 0; passes++ {
		h.pass()
	}
	if r := h.nomad.Restarts(); len(r) != 1 || r[0] != "a1/geth" {
		t.Fatalf("restarts %v after %d passes", r, passes)
	}
	// geth-a went critical after 10 blocks of lag (max_lag) and 2 bad probes; 30s later it is restarted.
	if passes < 40 || passes > 45 {
		t.Fatalf("restarted at pass %d, want about 12 + 30", passes)
	}
	for range 120 {
		h.pass()
	}
	st, out := h.check(t, "geth-a")
	if st != "critical" || !strings.HasSuffix(out, "; restarted 2m ago, 1 of 3 this hour; restart withheld: backoff 10m after 1 restart that did not help") {
		t.Fatalf("geth-a in consul: %s %q", st, out)
	}
	if hl := health(t, h.Agent, "geth-a"); hl.Output != out {
		t.Fatalf("/v1/health says %q, consul %q", hl.Output, out)
	}
	if got := testutil.ToFloat64(h.metrics.restarts.WithLabelValues("geth-a", "eth-mainnet", "restarted")); got != 1 {
		t.Fatalf("restarts metric %v", got)
	}
	if got := testutil.ToFloat64(h.metrics.withheld.WithLabelValues("geth-a", "eth-mainnet", restart.ReasonBackoff)); got != 1 {
		t.Fatalf("withheld metric %v", got)
	}

	// The node catches up: it passes, the note stays for the hour.
	h.stuck.Height.Store(h.height + 1)
	for range 3 {
		h.stuck.Height.Add(1)
		h.pass()
	}
	if st, out := h.check(t, "geth-a"); st != "passing" || !strings.HasSuffix(out, "; restarted 2m ago, 1 of 3 this hour") {
		t.Fatalf("geth-a after catching up: %s %q", st, out)
	}
}

// /v1/health/alloc/<id> answers Nomad's deployment check: 404 for an allocation the agent doesn't know, the worst
// status of its nodes otherwise, 200 for warning only with warning_ok.
func TestAllocHealth(t *testing.T) {
	h := newHealing(t, "")
	srv := httptest.NewServer(h.Handler())
	defer srv.Close()
	get := func(path string) (int, AllocHealth) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ah AllocHealth
		json.NewDecoder(resp.Body).Decode(&ah)
		return resp.StatusCode, ah
	}
	if code, _ := get("/v1/health/alloc/other"); code != http.StatusNotFound {
		t.Fatalf("unknown allocation: %d", code)
	}
	h.pass() // a new node is critical until it proves itself
	if code, ah := get("/v1/health/alloc/a1"); code != http.StatusServiceUnavailable || ah.Status != "critical" ||
		len(ah.Nodes) != 1 || !strings.HasPrefix(ah.Output, "geth-a: ") {
		t.Fatalf("critical: %d %+v", code, ah)
	}
	h.stuck.Height.Store(97) // 4 behind geth-b's 101: warning
	h.chain.Height.Store(101)
	for range 3 {
		h.clock.Advance(time.Second)
		h.Step(context.Background())
	}
	if code, ah := get("/v1/health/alloc/a1"); code != http.StatusTooManyRequests || ah.Status != "warning" {
		t.Fatalf("warning: %d %+v", code, ah)
	}
	if code, _ := get("/v1/health/alloc/a1?warning_ok=true"); code != http.StatusOK {
		t.Fatalf("warning with warning_ok: %d", code)
	}
	if code, _ := get("/v1/health/geth-a?warning_ok=1"); code != http.StatusOK {
		t.Fatalf("node warning with warning_ok: %d", code)
	}
	if code, _ := get("/v1/health/alloc/a1?warning_ok=maybe"); code != http.StatusBadRequest {
		t.Fatalf("bad warning_ok: %d", code)
	}
	h.stuck.Height.Store(101)
	for range 3 {
		h.clock.Advance(time.Second)
		h.Step(context.Background())
	}
	if code, ah := get("/v1/health/alloc/a1"); code != http.StatusOK || ah.Status != "passing" {
		t.Fatalf("passing: %d %+v", code, ah)
	}

	// A replacement allocation under the same node name starts from scratch: not passing on its predecessor's verdict.
	repl := nomadNode(t, "geth-a", h.sources[nodespec.SourceNomad][0].RPC, "a2")
	h.SetNodes(nodespec.SourceNomad, []nodespec.Node{repl})
	if code, _ := get("/v1/health/alloc/a1"); code != http.StatusNotFound {
		t.Fatalf("the old allocation is still answered: %d", code)
	}
	h.clock.Advance(time.Second)
	h.Step(context.Background())
	if code, ah := get("/v1/health/alloc/a2"); code != http.StatusServiceUnavailable {
		t.Fatalf("replacement allocation: %d %+v", code, ah)
	}
}
