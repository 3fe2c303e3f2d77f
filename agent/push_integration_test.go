package agent

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// syncBuf is a log sink the test reads while the agent writes.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startPushAgent runs an agent (interval 500ms, push_poll_interval 1h: once a node's push is up, only a push can
// move its height) with blocks against a real Consul until the test ends; its log is kept.
func startPushAgent(t *testing.T, c *testenv.Consul, blocks string) (*Agent, *syncBuf) {
	t.Helper()
	src := fmt.Sprintf("consul {\n  address = %q\n  deregister_after = \"1m\"\n}\nlisten = \"127.0.0.1:%d\"\n"+
		"interval = \"500ms\"\npush_poll_interval = \"1h\"\nhead_max_age = \"10s\"\n%s", c.Addr, testenv.FreePort(t), blocks)
	cfg, err := config.Parse([]byte(src), "push.hcl")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	log := hclog.New(&hclog.LoggerOptions{Name: "agent", Level: hclog.Info, Output: io.MultiWriter(logs, t.Output())})
	a, err := New(cfg, log, Options{ID: "push-host", Consul: ConsulAPI(c.Client)})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "agent", a.Run)
	return a, logs
}

func pushBlock(name, kind, rpc, ws, service, extra string) string {
	return fmt.Sprintf("node %q {\n  kind = %q\n  rpc = %q\n  ws = %q\n  service = %q\n  min_peers = 0\n%s}\n",
		name, kind, rpc, ws, service, extra)
}

// pushJudgedAbove waits until more than n heads were judged on arrival and node's height passed minHeight.
func pushJudgedAbove(t *testing.T, a *Agent, node string, n float64, minHeight uint64) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, node+" judged by push", func() error {
		got := testutil.ToFloat64(a.metrics.pushJudged)
		h := health(t, a, node)
		if got <= n || h.Height <= minHeight {
			return fmt.Errorf("push_heads_judged_total %v (want > %v), height %d (want > %d), push %q", got, n, h.Height, minHeight, h.Push)
		}
		return nil
	})
}

// A real geth --dev with its WebSocket behind a TCP proxy: heads are judged as they arrive (push_poll_interval is
// 1h, so only push moves the height); cutting the WebSocket falls back to polling and resubscribes; a node whose
// ws URL is wrong but whose HTTP works is judged by polling and says why push is unavailable.
func TestAgentPushGethDev(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	g := testenv.StartGethDev(t, "geth-dev")
	proxy := testenv.StartTCPProxy(t, strings.TrimPrefix(g.WS, "ws://"))
	wrongWS := fmt.Sprintf("ws://127.0.0.1:%d", testenv.FreePort(t))
	chain := fmt.Sprintf("  chain_id = %d\n", testenv.DevChainID)
	a, logs := startPushAgent(t, c, pushBlock("geth-a", "ethereum", g.RPC, "ws://"+proxy.Addr, "eth-devnet", chain)+
		pushBlock("geth-nows", "ethereum", g.RPC, wrongWS, "eth-devnet", chain))

	c.WaitCheck(t, "geth-a", 30*time.Second, "passing")
	first := health(t, a, "geth-a").Height
	pushJudgedAbove(t, a, "geth-a", 2, first+2)
	if h := health(t, a, "geth-a"); h.Push != "subscribed to ws://"+proxy.Addr || h.Status != "passing" {
		t.Fatalf("geth-a: %+v", h)
	}

	// The wrong WebSocket port: still judged, by polling, with the reason in the health answer and the log.
	testenv.Eventually(t, 30*time.Second, "geth-nows polled", func() error {
		h := health(t, a, "geth-nows")
		if h.Status != "passing" || h.Height < first+2 {
			return fmt.Errorf("geth-nows %s at %d", h.Status, h.Height)
		}
		return nil
	})
	h := health(t, a, "geth-nows")
	if !strings.HasPrefix(h.Push, "push unavailable: dial "+wrongWS+": ") || !strings.Contains(h.Push, "connection refused") ||
		!strings.HasSuffix(h.Push, "; polling every 500ms") {
		t.Fatalf("geth-nows push detail %q", h.Push)
	}
	if !strings.Contains(logs.String(), "push unavailable, polling instead: node=geth-nows") {
		t.Fatalf("the log does not say push is unavailable for geth-nows")
	}
	if got := gauge(t, a, "chainwarden_push_subscribed_nodes"); got != 1 {
		t.Fatalf("push_subscribed_nodes %v, want 1", got)
	}

	// Cut the WebSocket: the drop is logged once, the node is polled meanwhile, the subscription comes back and
	// heads are judged by push again.
	proxy.Cut()
	testenv.Eventually(t, 30*time.Second, "the drop and the resubscription", func() error {
		out := logs.String()
		lost := strings.Index(out, "push subscription lost, polling instead: node=geth-a")
		back := strings.LastIndex(out, "push subscription back: node=geth-a")
		if lost < 0 || back < lost {
			return fmt.Errorf("lost at %d, back at %d", lost, back)
		}
		return nil
	})
	if n := strings.Count(logs.String(), "push subscription lost"); n != 1 {
		t.Fatalf("%d drop warnings for one drop", n)
	}
	after := testutil.ToFloat64(a.metrics.pushJudged)
	pushJudgedAbove(t, a, "geth-a", after+1, health(t, a, "geth-a").Height)
	if st, out, _ := c.CheckStatus("geth-a"); st != "passing" {
		t.Fatalf("consul: geth-a %s %q", st, out)
	}
}

// A real Clique network: the follower that loses its peers falls behind the sealer's pushed heads and turns warning
// without being probed (push_poll_interval 1h).
func TestAgentPushClique(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	net := testenv.StartCliqueNetwork(t, 2)
	extra := fmt.Sprintf("  chain_id = %d\n  warn_lag = 1\n  fail_after = 1\n  pass_after = 1\n", testenv.CliqueChainID)
	var blocks string
	for _, g := range net.Nodes {
		blocks += pushBlock(g.Name, "ethereum", g.RPC, g.WS, "eth-clique", extra)
	}
	a, _ := startPushAgent(t, c, blocks)
	follower := net.Nodes[1]
	c.WaitCheck(t, follower.Name, 60*time.Second, "passing")
	pushJudgedAbove(t, a, follower.Name, 2, health(t, a, follower.Name).Height)

	if err := net.Isolate(follower); err != nil {
		t.Fatal(err)
	}
	out := c.WaitCheck(t, follower.Name, 30*time.Second, "warning")
	if !strings.Contains(out, "behind head") || !strings.Contains(out, "("+net.Nodes[0].Name+")") {
		t.Fatalf("warning output %q", out)
	}
}

// A real CometBFT validator: NewBlock events on /websocket are judged as they arrive; a cut WebSocket resubscribes;
// the same node under a wrong ws port is judged by polling.
func TestAgentPushCometBFT(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	net := testenv.StartCometNetwork(t, 1)
	v := net.Nodes[0]
	proxy := testenv.StartTCPProxy(t, strings.TrimPrefix(v.RPC, "http://"))
	wrongWS := fmt.Sprintf("ws://127.0.0.1:%d/websocket", testenv.FreePort(t))
	network := fmt.Sprintf("  network = %q\n", net.ChainID)
	a, logs := startPushAgent(t, c, pushBlock(v.Name, "cometbft", v.RPC, "ws://"+proxy.Addr+"/websocket", "comet-devnet", network)+
		pushBlock("comet-nows", "cometbft", v.RPC, wrongWS, "comet-devnet", network))
	c.WaitCheck(t, v.Name, 60*time.Second, "passing")
	pushJudgedAbove(t, a, v.Name, 2, health(t, a, v.Name).Height+1)
	if h := health(t, a, v.Name); h.Push != "subscribed to ws://"+proxy.Addr || h.Status != "passing" {
		t.Fatalf("%+v", h)
	}
	c.WaitCheck(t, "comet-nows", 60*time.Second, "passing")
	if h := health(t, a, "comet-nows"); !strings.HasPrefix(h.Push, "push unavailable: dial "+strings.TrimSuffix(wrongWS, "/websocket")) {
		t.Fatalf("comet-nows push detail %q", h.Push)
	}

	proxy.Cut()
	testenv.Eventually(t, 30*time.Second, "the drop and the resubscription", func() error {
		out := logs.String()
		lost := strings.Index(out, "push subscription lost, polling instead: node="+v.Name)
		back := strings.LastIndex(out, "push subscription back: node="+v.Name)
		if lost < 0 || back < lost {
			return fmt.Errorf("lost at %d, back at %d", lost, back)
		}
		return nil
	})
	after := testutil.ToFloat64(a.metrics.pushJudged)
	pushJudgedAbove(t, a, v.Name, after+1, health(t, a, v.Name).Height)
}
