package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chainwarden/chainwarden/internal/ethfake"
	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/testenv"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// pushNode is an ethfake node that answers HTTP probes (counting them) and newHeads subscriptions on /ws.
type pushNode struct {
	*ethfake.Node
	clk    *fakes.Clock
	pusher *ethfake.Pusher
	probes atomic.Int64
	rpc    string
	ws     string
}

func newPushNode(t *testing.T, height uint64, clk *fakes.Clock) *pushNode {
	t.Helper()
	n := &pushNode{Node: ethfake.New(height, 1, clk.Now), clk: clk}
	n.pusher = ethfake.NewPusher(n.Node)
	mux := http.NewServeMux()
	mux.Handle("/ws", n.pusher)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost { // a probe (a WebSocket dial to a wrong path is a GET)
			n.probes.Add(1)
		}
		n.Node.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(n.pusher.Close)
	n.rpc, n.ws = srv.URL, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws"
	return n
}

// push announces a new head at height, made now, by push (the HTTP answer follows it, as a real node's would).
func (n *pushNode) push(height uint64) {
	n.SetHead(height, n.clk.Now())
	n.pusher.Publish()
}

func wsNode(name, rpc, ws string, failAfter int) string {
	return fmt.Sprintf("node %q {\n  kind = \"ethereum\"\n  rpc = %q\n  ws = %q\n  service = \"eth-mainnet\"\n  chain_id = 1\n"+
		"  fail_after = %d\n  pass_after = 1\n}\n", name, rpc, ws, failAfter)
}

// runPush runs the agent's subscriptions until the test ends.
func runPush(t *testing.T, a *Agent) {
	t.Helper()
	testenv.Background(t, "push", func(ctx context.Context) error {
		a.push.Run(ctx)
		return nil
	})
}

func pushedHeads(a *Agent, node string) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nodes[node].pushN
}

func waitSubscribed(t *testing.T, a *Agent, n int) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "subscriptions up", func() error {
		a.mu.Lock()
		up := 0
		for _, ps := range a.pushState {
			if ps.up {
				up++
			}
		}
		a.mu.Unlock()
		if up < n {
			return fmt.Errorf("%d of %d subscribed", up, n)
		}
		return nil
	})
}

// waitPushed waits until node has received n heads by push.
func waitPushed(t *testing.T, a *Agent, node string, n uint64) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, node+" head by push", func() error {
		if got := pushedHeads(a, node); got < n {
			return fmt.Errorf("%d heads by push, want %d", got, n)
		}
		return nil
	})
}

// A head that arrives by push is judged by a pass that probes nothing: the node's height and its siblings' lag move
// at once, and the counter of heads judged on arrival says so.
func TestPushHeadJudgedOnArrival(t *testing.T) {
	clk := start()
	na, nb := newPushNode(t, 100, clk), newPushNode(t, 100, clk)
	a := newUnit(t, clk, wsNode("geth-a", na.rpc, na.ws, 1)+wsNode("geth-b", nb.rpc, nb.ws, 1))
	runPush(t, a.Agent)
	ctx := context.Background()
	a.Step(ctx)
	waitSubscribed(t, a.Agent, 2)
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" || h.Push != "subscribed to ws://"+strings.TrimPrefix(na.rpc, "http://") {
		t.Fatalf("after the first pass: %+v", h)
	}
	probes := na.probes.Load() + nb.probes.Load()

	na.push(104)
	waitPushed(t, a.Agent, "geth-a", 1)
	a.pushPass(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Height != 104 || h.Lag != 0 {
		t.Fatalf("geth-a after its pushed head: %+v", h)
	}
	if h := health(t, a.Agent, "geth-b"); h.Head != 104 || h.Lag != 4 || h.Status != "warning" {
		t.Fatalf("geth-b is judged against the pushed head at once: %+v", h)
	}
	if st, out := a.check(t, "geth-b"); st != "warning" || !strings.Contains(out, "4 behind head 104 (geth-a)") {
		t.Fatalf("consul has geth-b %s %q", st, out)
	}
	if got := testutil.ToFloat64(a.metrics.pushJudged); got != 1 {
		t.Fatalf("push_heads_judged_total = %v, want 1", got)
	}
	if n := na.probes.Load() + nb.probes.Load(); n != probes {
		t.Fatalf("a push pass probed: %d probes, was %d", n, probes)
	}
	if got := gauge(t, a.Agent, "chainwarden_push_subscribed_nodes"); got != 2 {
		t.Fatalf("push_subscribed_nodes = %v, want 2", got)
	}
}

// gauge reads an unlabelled gauge from the agent's registry.
func gauge(t *testing.T, a *Agent, name string) float64 {
	t.Helper()
	mfs, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// With push up, a node is probed every push_poll_interval, not every interval; when its subscription drops it is
// probed every pass again at once, and the drop shows in its health detail.
func TestPushRelaxesPollingAndFallsBack(t *testing.T) {
	clk := start()
	na := newPushNode(t, 100, clk)
	a := newUnit(t, clk, "push_poll_interval = \"5s\"\n"+wsNode("geth-a", na.rpc, na.ws, 1))
	runPush(t, a.Agent)
	ctx := context.Background()
	a.Step(ctx)
	waitSubscribed(t, a.Agent, 1)
	if n := na.probes.Load(); n != 1 {
		t.Fatalf("%d probes after the first pass", n)
	}
	for i := 1; i <= 20; i++ {
		clk.Advance(time.Second)
		a.Step(ctx)
	}
	// 20 passes in 20 s: a probe every 5 s, from the node's phase on (3 to 5 of them, not 20).
	if n := na.probes.Load() - 1; n < 3 || n > 5 {
		t.Fatalf("%d probes in 20 passes of 1s with push up and push_poll_interval 5s, want 3 to 5", n)
	}

	na.pusher.Close() // the WebSocket drops
	testenv.Eventually(t, 10*time.Second, "the drop seen", func() error {
		if h := health(t, a.Agent, "geth-a"); !strings.HasPrefix(h.Push, "push unavailable: ") {
			return fmt.Errorf("push detail %q", h.Push)
		}
		return nil
	})
	before := na.probes.Load()
	for i := 1; i <= 3; i++ {
		clk.Advance(time.Second)
		a.Step(ctx)
	}
	if n := na.probes.Load() - before; n != 3 {
		t.Fatalf("%d probes in 3 passes after the drop, want 3", n)
	}
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" || !strings.Contains(h.Push, "polling every 1s") {
		t.Fatalf("after the drop: %+v", h)
	}
}

// A node whose WebSocket is down but whose HTTP works is judged by polling, and says why push is unavailable.
func TestPushUnavailableNodeStillPolled(t *testing.T) {
	clk := start()
	na := newPushNode(t, 100, clk)
	wrong := "ws" + strings.TrimPrefix(na.rpc, "http") + "/not-ws"
	a := newUnit(t, clk, wsNode("geth-a", na.rpc, wrong, 1))
	runPush(t, a.Agent)
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "the failure", func() error {
		a.Step(ctx)
		h := health(t, a.Agent, "geth-a")
		if !strings.HasPrefix(h.Push, "push unavailable: dial ws://127.0.0.1:") {
			return fmt.Errorf("push detail %q", h.Push)
		}
		return nil
	})
	before := na.probes.Load()
	na.Height.Store(101)
	clk.Advance(time.Second)
	a.Step(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" || h.Height != 101 || na.probes.Load() != before+1 {
		t.Fatalf("judged by polling: %+v", h)
	}
}

// Damping counts judgements with something new: a push pass that finds a node's height and network head as they
// were does not count as another bad probe.
func TestPushPassesDampOnNews(t *testing.T) {
	clk := start()
	na, nb := newPushNode(t, 100, clk), newPushNode(t, 100, clk)
	a := newUnit(t, clk, wsNode("geth-a", na.rpc, na.ws, 2)+wsNode("geth-b", nb.rpc, nb.ws, 2))
	runPush(t, a.Agent)
	ctx := context.Background()
	a.Step(ctx)
	waitSubscribed(t, a.Agent, 2)

	clk.Advance(5 * time.Second) // five blocks' time: a head 5 blocks up is plausible
	nb.push(105)                 // geth-a is 5 behind: one bad judgement
	waitPushed(t, a.Agent, "geth-b", 1)
	a.pushPass(ctx)
	a.pushPass(ctx)
	a.pushPass(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" || h.Lag != 5 {
		t.Fatalf("repeated push passes without news counted as bad probes: %+v", h)
	}
	clk.Advance(time.Second)
	nb.push(106) // news: a second bad judgement
	waitPushed(t, a.Agent, "geth-b", 2)
	a.pushPass(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Status != "warning" || h.Lag != 6 {
		t.Fatalf("after the second head: %+v", h)
	}
}

// The loop judges a pushed head when it arrives, before the next tick: with a 1 h interval, only the push can move
// the height, after the loop's short coalescing wait.
func TestLoopJudgesPushBeforeTheTick(t *testing.T) {
	clk := start()
	na := newPushNode(t, 100, clk)
	a := newUnitEvery(t, clk, "1h", wsNode("geth-a", na.rpc, na.ws, 1))
	runPush(t, a.Agent)
	testenv.Background(t, "loop", func(ctx context.Context) error { return a.loop(ctx, nil) })
	testenv.Eventually(t, 10*time.Second, "the first pass", func() error {
		if h := health(t, a.Agent, "geth-a"); h.Height != 100 {
			return fmt.Errorf("height %d", h.Height)
		}
		return nil
	})
	waitSubscribed(t, a.Agent, 1)

	na.push(101)
	clk.BlockUntil(3) // the ticker, the wake-up at max_block_age and the coalescing wait
	clk.Advance(PushCoalesce)
	testenv.Eventually(t, 10*time.Second, "the pushed head judged", func() error {
		if h := health(t, a.Agent, "geth-a"); h.Height != 101 {
			return fmt.Errorf("height %d", h.Height)
		}
		return nil
	})
	if n := na.probes.Load(); n != 1 {
		t.Fatalf("%d probes, want only the first pass's", n)
	}
	if got := testutil.ToFloat64(a.metrics.pushJudged); got != 1 {
		t.Fatalf("push_heads_judged_total = %v", got)
	}
}

// A push pass writes to Consul only status changes: a new height that changes no status reaches the check with the
// next round of figures (every 10 s), not with the next pass, so blocks alone cost no writes.
func TestPushPassWritesOnlyStatusChanges(t *testing.T) {
	clk := start()
	na, nb := newPushNode(t, 100, clk), newPushNode(t, 100, clk)
	a := newUnit(t, clk, wsNode("geth-a", na.rpc, na.ws, 1)+wsNode("geth-b", nb.rpc, nb.ws, 1))
	runPush(t, a.Agent)
	ctx := context.Background()
	a.Step(ctx)
	waitSubscribed(t, a.Agent, 2)
	writes := a.reg.Writes()

	na.push(101)
	nb.push(101)
	waitPushed(t, a.Agent, "geth-a", 1)
	waitPushed(t, a.Agent, "geth-b", 1)
	a.pushPass(ctx)
	if h := health(t, a.Agent, "geth-a"); h.Height != 101 || h.Status != "passing" {
		t.Fatalf("health: %+v", h)
	}
	if _, out := a.check(t, "geth-a"); !strings.HasPrefix(out, "height 100,") {
		t.Fatalf("a push pass wrote an output-only change: %q", out)
	}
	if n := a.reg.Writes(); n != writes {
		t.Fatalf("%d consul writes by a push pass without a status change", n-writes)
	}
	clk.Advance(time.Second)
	a.Step(ctx)
	if _, out := a.check(t, "geth-a"); !strings.HasPrefix(out, "height 100,") {
		t.Fatalf("a pass between rounds wrote an output-only change: %q", out)
	}
	for range 9 { // the round, 10 s after the first pass's
		clk.Advance(time.Second)
		a.Step(ctx)
	}
	if _, out := a.check(t, "geth-a"); !strings.HasPrefix(out, "height 101, at head 101") {
		t.Fatalf("the round did not write the new height: %q", out)
	}
}

// Nodes whose push is up are probed at phases spread over push_poll_interval, not all in one pass.
func TestPushPollsSpreadOverTheInterval(t *testing.T) {
	const period = 10 * time.Second
	buckets := map[time.Duration]int{}
	for i := range 1000 {
		buckets[phase(fmt.Sprintf("n%04d", i), period).Truncate(time.Second)]++
	}
	if len(buckets) != 10 {
		t.Fatalf("phases fall in %d of 10 seconds: %v", len(buckets), buckets)
	}
	for s, n := range buckets {
		if n > 150 {
			t.Fatalf("%d of 1000 nodes probed in the second at %s: %v", n, s, buckets)
		}
	}
}

// A node left behind by a pushed head is judged again when it crosses warn_behind, not at the next tick: with a 1 h
// interval, only that wake-up can turn it warning.
func TestLoopJudgesWhenBehindCrossesWarnBehind(t *testing.T) {
	clk := start()
	na, nb := newPushNode(t, 100, clk), newPushNode(t, 100, clk)
	behind := "  warn_behind = \"500ms\"\n"
	a := newUnitEvery(t, clk, "1h", strings.Replace(wsNode("geth-a", na.rpc, na.ws, 1), "}\n", behind+"}\n", 1)+
		strings.Replace(wsNode("geth-b", nb.rpc, nb.ws, 1), "}\n", behind+"}\n", 1))
	runPush(t, a.Agent)
	testenv.Background(t, "loop", func(ctx context.Context) error { return a.loop(ctx, nil) })
	waitSubscribed(t, a.Agent, 2)
	testenv.Eventually(t, 10*time.Second, "the first pass", func() error {
		if h := health(t, a.Agent, "geth-a"); h.Status != "passing" {
			return fmt.Errorf("geth-a %s", h.Status)
		}
		return nil
	})

	clk.Advance(time.Second)
	nb.push(101)      // geth-a stays at 100
	clk.BlockUntil(3) // the ticker, the wake-up at max_block_age and the coalescing wait
	clk.Advance(PushCoalesce)
	testenv.Eventually(t, 10*time.Second, "geth-a behind", func() error {
		if h := health(t, a.Agent, "geth-a"); h.Head != 101 || h.Status != "passing" {
			return fmt.Errorf("geth-a %s, head %d", h.Status, h.Head)
		}
		return nil
	})
	clk.BlockUntil(2)                   // the ticker and the wake-up at warn_behind
	clk.Advance(600 * time.Millisecond) // just past warn_behind
	testenv.Eventually(t, 10*time.Second, "geth-a warning", func() error {
		if h := health(t, a.Agent, "geth-a"); h.Status != "warning" || !strings.Contains(h.Output, "more than warn_behind 500ms") {
			return fmt.Errorf("geth-a %s: %s", h.Status, h.Output)
		}
		return nil
	})
	// The push pass writes the status change to Consul right after it records it.
	testenv.Eventually(t, 10*time.Second, "geth-a warning in consul", func() error {
		if st, out := a.check(t, "geth-a"); st != "warning" {
			return fmt.Errorf("consul: %s %q", st, out)
		}
		return nil
	})
}

// With heads by push, a pass that probes does not judge again a node it did not probe and that has nothing new: the
// node keeps its last judgement (and its check) until news, a time threshold, or its push_poll_interval probe.
func TestPassJudgesPushedNodesOnlyOnNews(t *testing.T) {
	clk := start()
	na, nb := newPushNode(t, 100, clk), newPushNode(t, 100, clk)
	a := newUnit(t, clk, wsNode("geth-a", na.rpc, na.ws, 1)+wsNode("geth-b", nb.rpc, nb.ws, 1))
	runPush(t, a.Agent)
	ctx := context.Background()
	a.Step(ctx)
	waitSubscribed(t, a.Agent, 2)
	first := health(t, a.Agent, "geth-a").Updated
	probes := na.probes.Load() + nb.probes.Load()

	clk.Advance(time.Second)
	a.Step(ctx) // nothing new, neither node due (their phases are 4.2 s and 3.7 s): both keep the first judgement
	for _, n := range []string{"geth-a", "geth-b"} {
		if got := health(t, a.Agent, n).Updated; !got.Equal(first) {
			t.Fatalf("%s judged again with nothing new: updated %s, first %s", n, got, first)
		}
	}
	if n := na.probes.Load() + nb.probes.Load(); n != probes {
		t.Fatalf("the second pass probed: %d probes, was %d", n, probes)
	}

	clk.Advance(time.Second)
	na.push(101)
	waitPushed(t, a.Agent, "geth-a", 1)
	a.Step(ctx) // news for geth-a, and a new network head for geth-b: both judged
	for _, n := range []string{"geth-a", "geth-b"} {
		if h := health(t, a.Agent, n); !h.Updated.Equal(clk.Now()) || h.Head != 101 {
			t.Fatalf("%s not judged on the new head: %+v", n, h)
		}
	}
	// Every push_poll_interval (10 s by default) a node is probed, and judged, though nothing changed.
	judged := clk.Now()
	for range 11 {
		clk.Advance(time.Second)
		a.Step(ctx)
	}
	if h := health(t, a.Agent, "geth-a"); !h.Updated.After(judged) {
		t.Fatalf("geth-a not judged at its push_poll_interval probe: updated %s", h.Updated)
	}
	// The figures of its judgement on the new head reached its check with a round (every 10 s).
	if _, out := a.check(t, "geth-b"); !strings.Contains(out, "head 101") {
		t.Fatalf("geth-b's check did not get the new head: %q", out)
	}
}

// nextCrossing is when time alone changes a judgement: the behind thresholds, max_finalized_behind, max_block_age.
func TestNextCrossing(t *testing.T) {
	now := start().Now()
	th := verdict.Thresholds{WarnBehind: 5 * time.Second, MaxBehind: 30 * time.Second, MaxBlockAge: 2 * time.Minute,
		MaxFinalizedBehind: time.Minute}
	at := func(d time.Duration) time.Time { return now.Add(d + time.Millisecond) }
	for _, c := range []struct {
		name string
		in   verdict.Input
		age  time.Duration
		want time.Time
	}{
		{"at the head, a fresh block: max_block_age", verdict.Input{Result: probe.Result{Height: 10, HasHeight: true, BlockTime: now}, Head: verdict.Head{Height: 10}}, 0, at(2 * time.Minute)},
		{"behind 2s: warn_behind", verdict.Input{Result: probe.Result{Height: 9, HasHeight: true, BlockTime: now}, Head: verdict.Head{Height: 10}, BehindFor: 2 * time.Second}, 0, at(3 * time.Second)},
		{"behind 10s: max_behind", verdict.Input{Result: probe.Result{Height: 9, HasHeight: true, BlockTime: now}, Head: verdict.Head{Height: 10}, BehindFor: 10 * time.Second}, 0, at(20 * time.Second)},
		{"finalized behind 50s, block 119s old", verdict.Input{Result: probe.Result{Height: 10, HasHeight: true, BlockTime: now}, Head: verdict.Head{Height: 10}, FinalizedBehindFor: 50 * time.Second}, 119 * time.Second, at(time.Second)},
		{"every threshold crossed", verdict.Input{Result: probe.Result{Height: 9, HasHeight: true, BlockTime: now}, Head: verdict.Head{Height: 10}, BehindFor: time.Minute}, 3 * time.Minute, time.Time{}},
		{"failed probe: none", verdict.Input{Result: probe.Result{Err: fmt.Errorf("refused")}, Head: verdict.Head{Height: 10}}, 0, time.Time{}},
	} {
		c.in.Thresholds = th
		if got := nextCrossing(c.in, verdict.Report{BlockAge: c.age}, now); !got.Equal(c.want) {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// A publisher whose pass keeps its last judgement (heads by push, nothing new) keeps its publisher slot: the slot
// follows the node's standing verdict, not whether this pass judged it again.
func TestPublisherKeepsItsSlotOnAPassWithoutNews(t *testing.T) {
	clk := start()
	na, nb := newPushNode(t, 100, clk), newPushNode(t, 100, clk)
	a := newUnit(t, clk, wsNode("geth-a", na.rpc, na.ws, 1)+wsNode("geth-b", nb.rpc, nb.ws, 1))
	runPush(t, a.Agent)
	ctx := context.Background()
	held := func() []string {
		var out []string
		for _, k := range a.consul.Keys("chainwarden/heads/eth-mainnet/") {
			if p, _, _ := a.consul.Get(k, nil); p != nil && p.Session != "" {
				out = append(out, k)
			}
		}
		return out
	}
	a.Step(ctx)
	waitSubscribed(t, a.Agent, 2)
	clk.Advance(time.Second) // the first pass judged them, this one claims (phases: 4.2 s and 3.7 s, none due yet)
	a.Step(ctx)
	if h := held(); len(h) != 2 {
		t.Fatalf("held head keys after the claims: %v", h)
	}
	first := health(t, a.Agent, "geth-a").Updated
	clk.Advance(time.Second)
	a.Step(ctx)
	if got := health(t, a.Agent, "geth-a").Updated; !got.Equal(first) {
		t.Fatalf("the pass judged geth-a again (updated %s): the test needs a pass without news", got)
	}
	if h := held(); len(h) != 2 {
		t.Fatalf("a pass without news released publisher slots: held %v", h)
	}
}
