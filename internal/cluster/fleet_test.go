package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/cluster"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// TestFleet builds a whole fleet in network namespaces (3 Consul servers, 4 chain hosts, a proxy host) and puts it
// through the faults operators meet, one after another, with a client reading through both proxies the whole time.
// Each fault's figures (how long until the proxies stop or start routing to a host, failed reads per proxy) are
// measured and logged, never asserted; what is asserted could fail: no other node changes status, failed reads only
// while a fault is in effect, the upstreams the proxies run.
func TestFleet(t *testing.T) {
	testenv.RequireRoot(t)
	for _, c := range []string{"ip", "consul", "nomad", "geth-clique", "cometbft", "consul-template", "nginx", "haproxy"} {
		testenv.Bin(t, c)
	}
	agent := testenv.GoBuild(t, "./cmd/chainwarden")
	ctx := context.Background()
	started := time.Now()
	dir := t.TempDir()
	if keep := os.Getenv("CHAINWARDEN_FLEET_DIR"); keep != "" { // keep every host's configs and logs for a look after
		dir = keep
	}
	f, err := cluster.Start(ctx, cluster.Options{Dir: dir, AgentBin: agent,
		Log: hclog.New(&hclog.LoggerOptions{Name: "fleet", Output: t.Output(), Level: hclog.Info})})
	if f != nil {
		t.Cleanup(func() {
			if t.Failed() {
				for _, h := range f.Hosts() {
					t.Logf("%s", h.Logs(15))
				}
			}
			if err := f.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
			if strings.Contains(string(out), f.Prefix()) {
				t.Errorf("namespaces left behind:\n%s", out)
			}
		})
	}
	if err != nil {
		t.Fatalf("start fleet: %v", err)
	}
	t.Logf("fleet up in %s: %d servers, %d chain hosts, 1 proxy host", time.Since(started).Round(100*time.Millisecond),
		len(f.Servers), len(f.Chains))

	w := watch(t, f)

	t.Run("acls: the proxy's token only reads", func(t *testing.T) {
		tok, err := os.ReadFile(f.ProxyTokenFile)
		if err != nil {
			t.Fatal(err)
		}
		c := f.Proxy.ConsulAs(string(tok))
		entries, _, err := c.Health().Service(cluster.EthService, "", true, nil)
		if err != nil || len(entries) != len(f.Chains) {
			t.Fatalf("the proxy's token reads %d passing %s (want %d): %v", len(entries), cluster.EthService, len(f.Chains), err)
		}
		_, err = c.KV().Put(&consulapi.KVPair{Key: "chainwarden/proxy/written-by-proxy", Value: []byte("x")}, nil)
		var se consulapi.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusForbidden {
			t.Fatalf("a KV put with the proxy's token through %s's Consul agent: want HTTP 403, got %v", f.Proxy.Name, err)
		}
		if p, _, err := f.Proxy.Consul().KV().Get("chainwarden/proxy/written-by-proxy", nil); err != nil || p != nil {
			t.Fatalf("the refused key exists (%v) or cannot be read: %v", p, err)
		}
	})

	// Every agent counts the heads the other hosts' agents publish, not only its own nodes: the verdict of the fleet
	// rests on that. (It did not when every agent took the shared hostname for its id: each saw the others' heads as
	// its own and skipped them.)
	t.Run("every agent counts the other hosts' heads", func(t *testing.T) {
		others := len(f.Chains) - 1
		testenv.Eventually(t, timeout, fmt.Sprintf("every agent counts %d other agents' heads", others), func() error {
			for _, h := range f.Chains {
				for _, svc := range []string{cluster.EthService, cluster.CometService} {
					n, err := h.AgentSources(ctx, svc)
					if err != nil {
						return err
					}
					if n["own"] != 1 || n["other_agents"] != others {
						return fmt.Errorf("%s's agent counts %v toward %s", h.Name, n, svc)
					}
				}
			}
			return nil
		})
	})

	t.Run("chain host dies", func(t *testing.T) {
		victim := f.Chains[1]
		start := w.mark()
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		left := waitRouted(t, f, without(f, victim), start)
		critical := w.firstChange(victim.NodeIDs(), start)
		t.Logf("FIGURE host death: catalog shows %s critical after %s (serf failure detection), proxies stop routing to it after %s",
			victim.Name, critical, left)
		w.assertQuiet(t, start, victim)
		w.assertReadsOnlyFailedIn(t, start, start.Add(left))
		t.Logf("FIGURE host death: failed reads nginx %d, haproxy %d of %d", w.failed("nginx", start), w.failed("haproxy", start), w.reads(start))
		// Nomad sees the host gone too: its servers mark the client down once its heartbeat TTL and grace run out.
		waitNomadStatus(t, f, victim, "down")
		t.Logf("FIGURE host death: nomad servers mark its client down after %s (heartbeat TTL and grace)",
			time.Since(start).Round(10*time.Millisecond))

		back := w.mark()
		unjudged := watchUnjudged(t, f, victim)
		if err := victim.Start(ctx); err != nil {
			t.Fatal(err)
		}
		rejoin := waitRouted(t, f, f.AllNodes(), back)
		// The Consul agent restores its TTL checks' last status from its data dir (when the TTL has not run out
		// since): the proxies may route to the host before its chainwarden agent has judged anything. Wait for the
		// agent's own verdict, then for the catalog to show it.
		testenv.Eventually(t, timeout, victim.Name+"'s agent calls its nodes passing", func() error { return victim.AgentPassing(ctx) })
		judged := time.Since(back).Round(10 * time.Millisecond)
		w.waitAllPassing(t, f)
		u := unjudged()
		waitNomadStatus(t, f, victim, "ready")
		t.Logf("FIGURE host restart: its nomad client ready again after %s", time.Since(back).Round(10*time.Millisecond))
		// Its Consul agent restores none of the agent's registrations (consul-forget before it starts): it never
		// serves them passing before the agent judged them, and its first sync removes them from the servers'
		// catalog (or replaces them with the agent's new registrations, critical until judged); from then on the catalog has them passing only once judged. Before that sync the servers still
		// hold the host's last synced checks (passing): if the leader marks the rejoined node alive first, the
		// catalog (and consul-template's blocking queries) see them passing for a moment; measured, not asserted
		// (docs/PRODUCTION.md).
		var afterSync []string
		for _, l := range u.catalog {
			if strings.Contains(l, "after its consul agent's first sync") {
				afterSync = append(afterSync, l)
			}
		}
		for what, early := range map[string][]string{"its own consul agent": u.local, "the servers' catalog": afterSync} {
			if len(early) > 0 {
				t.Errorf("%s served %s's nodes passing before its chainwarden agent judged them (%d of %d looks):\n%s",
					what, victim.Name, len(early), u.looks, strings.Join(early[:min(len(early), 5)], "\n"))
			}
		}
		if u.synced.IsZero() {
			t.Errorf("the servers' catalog never had %s's last passing checks removed or replaced after its restart: its consul agent restored them", victim.Name)
		}
		t.Logf("FIGURE host restart: both proxies route to %s again %s after the restart began; its agent judged its nodes passing after %s; catalog transitions of its nodes: %s; before judged, of %d looks: passing on its own consul agent %d, in the servers' catalog %d, routed %d %v %v",
			victim.Name, rejoin, judged, w.changesOf(victim.NodeIDs(), back), u.looks, len(u.local), len(u.catalog), len(u.routed), u.catalog[:min(len(u.catalog), 3)], u.routed[:min(len(u.routed), 3)])
		w.assertQuiet(t, back, victim)
		w.assertReadsOnlyFailedIn(t, back, back) // the host's return itself must cost no read
	})

	t.Run("acls: agent restarted with a wrong token, then the right one", func(t *testing.T) { aclWrongToken(t, ctx, f, w) })

	t.Run("chain host partitioned and healed", func(t *testing.T) {
		victim := f.Chains[2]
		start := w.mark()
		if err := victim.Partition(); err != nil {
			t.Fatal(err)
		}
		left := waitRouted(t, f, without(f, victim), start)
		t.Logf("FIGURE partition (link down): catalog shows %s critical after %s, proxies stop routing to it after %s",
			victim.Name, w.firstChange(victim.NodeIDs(), start), left)
		heal := w.mark()
		if err := victim.Heal(); err != nil {
			t.Fatal(err)
		}
		rejoin := waitRouted(t, f, f.AllNodes(), heal)
		w.waitAllPassing(t, f)
		t.Logf("FIGURE partition healed: both proxies route to %s again %s after the heal, no manual step", victim.Name, rejoin)
		w.assertQuiet(t, start, victim)
		w.assertReadsOnlyFailedIn(t, start, start.Add(left))
		t.Logf("FIGURE partition: failed reads nginx %d, haproxy %d of %d", w.failed("nginx", start), w.failed("haproxy", start), w.reads(start))
	})

	t.Run("consul leader killed, then servers restarted one at a time", func(t *testing.T) {
		start := w.mark()
		upstreams := w.upstreamChanges(t, f)
		leader, err := f.Leader(nil)
		if err != nil {
			t.Fatal(err)
		}
		index := kvIndex(t, f)
		if err := leader.Stop("consul", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		next, err := f.WaitLeader(ctx, leader)
		if err != nil {
			t.Fatal(err)
		}
		elected := time.Since(start)
		// Heads the agents publish go through the new leader: the KV index moves on.
		testenv.Eventually(t, timeout, "heads written through the new leader", func() error {
			if i := kvIndex(t, f); i <= index {
				return fmt.Errorf("KV index still %d", i)
			}
			return nil
		})
		t.Logf("FIGURE leader loss: %s killed, %s elected after %s, heads written through it after %s",
			leader.Name, next.Name, elected.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
		if err := leader.Restart(ctx, "consul"); err != nil {
			t.Fatal(err)
		}
		if err := f.WaitRaftHealthy(ctx); err != nil {
			t.Fatal(err)
		}
		for _, s := range f.Servers {
			t0 := time.Now()
			if err := s.Stop("consul", syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := s.Restart(ctx, "consul"); err != nil {
				t.Fatal(err)
			}
			if err := f.WaitRaftHealthy(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("FIGURE rolling restart: %s stopped, restarted and raft healthy with 3 voters after %s", s.Name, time.Since(t0).Round(10*time.Millisecond))
		}
		index = kvIndex(t, f)
		testenv.Eventually(t, timeout, "heads still written after the rolling restart", func() error {
			if i := kvIndex(t, f); i <= index {
				return fmt.Errorf("KV index still %d", i)
			}
			return nil
		})
		w.assertQuiet(t, start, nil)
		if changes := upstreams(); len(changes) != 0 {
			t.Errorf("the proxies' upstreams changed while the servers were killed and restarted (%d looks):\n%s", len(changes), strings.Join(changes[:min(len(changes), 5)], "\n"))
		}
		w.assertReadsOnlyFailedIn(t, start, start)
		t.Logf("FIGURE leader loss and rolling restart: failed reads nginx %d, haproxy %d of %d", w.failed("nginx", start), w.failed("haproxy", start), w.reads(start))
	})

	t.Run("consul client agent restarted with its data wiped", func(t *testing.T) {
		victim := f.Chains[0]
		agentPID := victim.PID("chainwarden")
		start := w.mark()
		if err := victim.Stop("consul", syscall.SIGTERM); err != nil { // as systemd stops it: leave_on_terminate
			t.Fatal(err)
		}
		left := waitRouted(t, f, without(f, victim), start)
		if err := os.RemoveAll(victim.ConsulDataDir()); err != nil {
			t.Fatal(err)
		}
		up := w.mark()
		if err := victim.Restart(ctx, "consul"); err != nil {
			t.Fatal(err)
		}
		joined := time.Since(up)
		registered := waitRegistered(t, f, victim, up)
		routed := waitRouted(t, f, f.AllNodes(), up)
		w.waitAllPassing(t, f)
		t.Logf("FIGURE client agent wiped: proxies stopped routing to %s %s after it left; the new agent knew a leader after %s, the chainwarden agent's registrations were back in the catalog and passing after %s, routed after %s",
			victim.Name, left, joined.Round(10*time.Millisecond), registered, routed)
		if pid := victim.PID("chainwarden"); pid != agentPID {
			t.Errorf("the chainwarden agent restarted (pid %d, was %d): it must re-register on its own", pid, agentPID)
		}
		w.assertQuiet(t, start, victim)
		w.assertReadsOnlyFailedIn(t, start, start)
		t.Logf("FIGURE client agent wiped: failed reads nginx %d, haproxy %d of %d", w.failed("nginx", start), w.failed("haproxy", start), w.reads(start))
	})
}

const timeout = 3 * time.Minute

// aclWrongToken restarts a chain host's chainwarden agent with a token Consul does not know: it must exit naming the
// problem (and not the token), its services must never be in the catalog without their check, and with the right
// token back it must pass again.
func aclWrongToken(t *testing.T, ctx context.Context, f *cluster.Fleet, w *watcher) {
	victim := f.Chains[3]
	good, err := os.ReadFile(victim.AgentTokenFile())
	if err != nil {
		t.Fatal(err)
	}
	start := w.mark()
	if err := victim.Stop("chainwarden", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wrong := testenv.RandomUUID(t)
	if err := os.WriteFile(victim.AgentTokenFile(), []byte(wrong), 0o600); err != nil {
		t.Fatal(err)
	}
	restartErr := victim.Restart(ctx, "chainwarden") // exits before it is ready
	testenv.Eventually(t, timeout, victim.Name+"'s agent exits", func() error {
		if victim.PID("chainwarden") != 0 {
			return errors.New("still runs")
		}
		return nil
	})
	log := victim.Log("chainwarden", 40)
	const want = "consul does not know the token given (acl not found)"
	if restartErr == nil || !strings.Contains(log, "cannot start") || !strings.Contains(log, want) {
		t.Errorf("agent with a wrong token: want it to exit saying %q; restart: %v; log:\n%s", want, restartErr, log)
	}
	if strings.Contains(log, wrong) {
		t.Errorf("the agent logged the token it was given")
	}
	assertNoServiceWithoutCheck(t, f, victim)
	if err := os.WriteFile(victim.AgentTokenFile(), good, 0o600); err != nil {
		t.Fatal(err)
	}
	back := w.mark()
	if err := victim.Restart(ctx, "chainwarden"); err != nil {
		t.Fatal(err)
	}
	assertNoServiceWithoutCheck(t, f, victim)
	routed := waitRouted(t, f, f.AllNodes(), back)
	testenv.Eventually(t, timeout, victim.Name+"'s agent calls its nodes passing", func() error { return victim.AgentPassing(ctx) })
	w.waitAllPassing(t, f)
	t.Logf("FIGURE acl: agent with a wrong token exited with %q; right token back: routed after %s; catalog transitions of %s: %s",
		want, routed, victim.Name, w.changesOf(victim.NodeIDs(), start))
	w.assertQuiet(t, start, victim)
}

// watchUnjudged looks every 50 ms, from now until the host's agent first calls its nodes passing, at the host's own
// Consul agent, the servers' catalog (consistent reads) and the upstreams the proxies run, each in a looker of its
// own (one slow answer does not hide the others); the func it returns stops them and lists every look that saw a
// node of the host passing or routed before that. A looker reads first and asks the agent after, so a passing the
// agent itself wrote is never counted.
func watchUnjudged(t *testing.T, f *cluster.Fleet, h *cluster.Host) func() unjudgedLooks {
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		u  unjudgedLooks
	)
	start := time.Now()
	// see returns what it saw of each node ("" for nothing).
	look := func(into *[]string, see func(ctx context.Context) map[string]string) {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			lctx, lcancel := context.WithTimeout(ctx, time.Second)
			seen := see(lctx)
			var early []string
			judged := 0
			for _, n := range h.NodeIDs() {
				if h.AgentCallsPassing(lctx, n) == nil {
					judged++ // judged since the restart: what was seen of it may be the agent's own verdict
				} else if seen[n] != "" {
					early = append(early, seen[n])
				}
			}
			lcancel()
			if judged == len(h.NodeIDs()) || ctx.Err() != nil {
				return
			}
			mu.Lock()
			u.looks++
			if len(early) > 0 {
				*into = append(*into, "+"+time.Since(start).Round(10*time.Millisecond).String()+" "+strings.Join(early, ", "))
			}
			mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}
	wg.Add(3)
	go look(&u.local, func(ctx context.Context) map[string]string {
		seen := map[string]string{}
		for _, id := range h.NodeIDs() {
			status, info, err := h.Consul().Agent().AgentHealthServiceByIDOpts(id, (&consulapi.QueryOptions{}).WithContext(ctx))
			if err == nil && info != nil && status == consulapi.HealthPassing {
				seen[id] = "passing on its own consul agent: " + id
			}
		}
		return seen
	})
	go look(&u.catalog, func(ctx context.Context) map[string]string {
		seen := map[string]string{}
		present, answered, stale := 0, 0, 0
		for _, svc := range []string{cluster.EthService, cluster.CometService} {
			entries, _, err := f.Servers[0].Consul().Health().Service(svc, "", false, (&consulapi.QueryOptions{}).WithContext(ctx))
			if err != nil {
				continue
			}
			answered++
			for _, e := range entries {
				if e.Node.Node != h.Name {
					continue
				}
				present++
				for _, c := range e.Checks {
					if c.CheckID == "chainwarden:"+e.Service.ID && c.Status == consulapi.HealthPassing {
						stale++ // the TTL check as it was synced before the restart, or already judged
					}
				}
				if e.Checks.AggregatedStatus() == consulapi.HealthPassing {
					seen[e.Service.ID] = "passing in the servers' catalog: " + e.Service.ID
				}
			}
		}
		mu.Lock()
		defer mu.Unlock()
		// The restarted Consul agent's first sync either removes what the catalog still had of the host (the
		// chainwarden agent had not registered yet) or replaces it with the chainwarden agent's new registrations,
		// critical until judged: either way its last synced passing checks are gone.
		if answered == 2 && stale == 0 && u.synced.IsZero() {
			u.synced = time.Now()
		}
		if !u.synced.IsZero() {
			for n, what := range seen {
				seen[n] = what + " (after its consul agent's first sync)"
			}
		}
		return seen
	})
	go look(&u.routed, func(context.Context) map[string]string {
		seen := map[string]string{}
		ng, hp, err := f.Upstreams()
		if err != nil {
			return nil
		}
		for _, l := range append(ng, hp...) {
			for _, n := range h.NodeIDs() {
				if strings.HasPrefix(l, n+" ") {
					seen[n] += "routed: " + l + " "
				}
			}
		}
		return seen
	})
	t.Cleanup(cancel)
	return func() unjudgedLooks {
		cancel()
		wg.Wait()
		return u
	}
}

// unjudgedLooks is what watchUnjudged saw before the agent's first judgement.
type unjudgedLooks struct {
	looks   int
	local   []string  // the host's own Consul agent served a node of it passing (restored from its data dir)
	catalog []string  // the servers' catalog had it passing (consistent reads)
	routed  []string  // a proxy routed to it
	synced  time.Time // when the servers' catalog first had none of the host's passing checks (its agent's first sync)
}

// assertNoServiceWithoutCheck fails the test if a service of the host is in the catalog without its own check.
func assertNoServiceWithoutCheck(t *testing.T, f *cluster.Fleet, h *cluster.Host) {
	t.Helper()
	for _, svc := range []string{cluster.EthService, cluster.CometService} {
		entries, _, err := f.Servers[0].Consul().Health().Service(svc, "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Node.Node != h.Name {
				continue
			}
			own := false
			for _, c := range e.Checks {
				own = own || c.ServiceID == e.Service.ID
			}
			if !own {
				t.Errorf("%s is in the catalog without its check (checks %v)", e.Service.ID, e.Checks)
			}
		}
	}
}

func without(f *cluster.Fleet, h *cluster.Host) []string {
	var out []string
	for _, n := range f.AllNodes() {
		if !slices.Contains(h.NodeIDs(), n) {
			out = append(out, n)
		}
	}
	return out
}

// waitNomadStatus waits until the Nomad servers hold the host's client at status (ready, down).
func waitNomadStatus(t *testing.T, f *cluster.Fleet, h *cluster.Host, status string) {
	t.Helper()
	testenv.Eventually(t, timeout, "nomad servers hold "+h.Name+" "+status, func() error {
		var errs []error
		for _, s := range f.Servers {
			st, err := f.NomadNodeStatus(s, h.Name)
			if err == nil && st == status {
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %q %v", s.Name, st, err))
		}
		return errors.Join(errs...)
	})
}

// waitRouted waits until both proxies route to exactly nodes and returns how long after since that was.
func waitRouted(t *testing.T, f *cluster.Fleet, nodes []string, since time.Time) time.Duration {
	t.Helper()
	testenv.Eventually(t, timeout, "proxies route to "+strings.Join(nodes, ","), func() error { return f.Routed(nodes) })
	return time.Since(since).Round(10 * time.Millisecond)
}

// waitRegistered waits until the host's nodes are in the catalog again, passing, and returns how long after since.
func waitRegistered(t *testing.T, f *cluster.Fleet, h *cluster.Host, since time.Time) time.Duration {
	t.Helper()
	c := f.Proxy.Consul()
	testenv.Eventually(t, timeout, h.Name+"'s services registered and passing", func() error {
		for _, svc := range []string{cluster.EthService, cluster.CometService} {
			entries, _, err := c.Health().Service(svc, "", true, &consulapi.QueryOptions{AllowStale: true})
			if err != nil {
				return err
			}
			found := false
			for _, e := range entries {
				if e.Node.Node == h.Name {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("%s has no passing %s", h.Name, svc)
			}
		}
		return nil
	})
	return time.Since(since).Round(10 * time.Millisecond)
}

// kvIndex is the highest modify index of the agents' KV entries, read from any server.
func kvIndex(t *testing.T, f *cluster.Fleet) uint64 {
	t.Helper()
	var max uint64
	testenv.Eventually(t, timeout, "KV read", func() error {
		pairs, _, err := f.Proxy.Consul().KV().List("chainwarden/heads/", &consulapi.QueryOptions{AllowStale: true})
		if err != nil {
			return err
		}
		if len(pairs) == 0 {
			return fmt.Errorf("no heads in KV")
		}
		max = 0
		for _, p := range pairs {
			if p.ModifyIndex > max {
				max = p.ModifyIndex
			}
		}
		return nil
	})
	return max
}

// watcher follows the fleet during the faults: every node's status in the catalog (as the proxy host's Consul agent
// serves it), the upstreams both proxies run, and a client reading through both proxies.
type watcher struct {
	mu          sync.Mutex
	status      map[string]string // node -> passing, warning, critical, absent
	transitions []transition
	upstreams   []upstreamSeen // every look at the proxies' upstreams
	readLog     []read
}

type upstreamSeen struct {
	at        time.Time
	upstreams string // nginx's | HAProxy's
}

// upstreamsNow is what both proxies route to now, as one string.
func upstreamsNow(f *cluster.Fleet) (string, error) {
	ng, hp, err := f.Upstreams()
	if err != nil {
		return "", err
	}
	return strings.Join(ng, ",") + " | " + strings.Join(hp, ","), nil
}

type transition struct {
	node, from, to string
	at             time.Time
}

type read struct {
	proxy, service string
	at             time.Time
	err            error
}

func watch(t *testing.T, f *cluster.Fleet) *watcher {
	w := &watcher{status: map[string]string{}}
	consul := f.Proxy.Consul()
	poll := func(ctx context.Context, every time.Duration, fn func()) error {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			fn()
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
	}
	testenv.Background(t, "status watch", func(ctx context.Context) error {
		return poll(ctx, 200*time.Millisecond, func() {
			now := map[string]string{}
			for _, n := range f.AllNodes() {
				now[n] = "absent"
			}
			for _, svc := range []string{cluster.EthService, cluster.CometService} {
				// Consistent reads (through the leader), as the proxies' consul-template makes them: a server
				// that restarts serves its stale state until it has caught up.
				entries, _, err := consul.Health().Service(svc, "", false, nil)
				if err != nil {
					return // no answer (e.g. no leader): no news
				}
				for _, e := range entries {
					now[e.Service.ID] = e.Checks.AggregatedStatus()
				}
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			for n, s := range now {
				if old, ok := w.status[n]; ok && old != s {
					w.transitions = append(w.transitions, transition{n, old, s, time.Now()})
				}
				w.status[n] = s
			}
		})
	})
	testenv.Background(t, "upstream watch", func(ctx context.Context) error {
		return poll(ctx, 200*time.Millisecond, func() {
			at := time.Now() // when the files were read, not when the reading was recorded
			s, err := upstreamsNow(f)
			if err != nil {
				return
			}
			w.mu.Lock()
			w.upstreams = append(w.upstreams, upstreamSeen{at, s})
			w.mu.Unlock()
		})
	})
	client := f.Proxy.HTTPClient(5 * time.Second)
	client.Transport.(*http.Transport).DisableKeepAlives = true
	for proxy, url := range map[string]string{"nginx": f.NginxURL, "haproxy": f.HAProxyURL} {
		testenv.Background(t, proxy+" reader", func(ctx context.Context) error {
			return poll(ctx, 100*time.Millisecond, func() {
				for _, svc := range []string{cluster.EthService, cluster.CometService} {
					at := time.Now()
					err := rpcRead(ctx, client, url+"/"+svc, svc)
					if ctx.Err() != nil {
						return
					}
					w.mu.Lock()
					w.readLog = append(w.readLog, read{proxy, svc, at, err})
					w.mu.Unlock()
				}
			})
		})
	}
	return w
}

// rpcRead makes one read of a chain through a proxy: eth_blockNumber, or CometBFT's status, over JSON-RPC.
func rpcRead(ctx context.Context, c *http.Client, url, service string) error {
	method := "eth_blockNumber"
	if service == cluster.CometService {
		method = "status"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url,
		strings.NewReader(fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":%q,"params":[]}`, method)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("HTTP %d: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || len(r.Result) == 0 {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, r.Error)
	}
	return nil
}

// waitAllPassing waits until the catalog shows every node passing.
func (w *watcher) waitAllPassing(t *testing.T, f *cluster.Fleet) {
	t.Helper()
	testenv.Eventually(t, timeout, "every node passing in the catalog", func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, n := range f.AllNodes() {
			if s := w.status[n]; s != "passing" {
				return fmt.Errorf("%s is %s", n, s)
			}
		}
		return nil
	})
}

// changesOf lists the catalog transitions of nodes since a time, e.g. "geth-chain2 critical->passing +1.2s".
func (w *watcher) changesOf(nodes []string, since time.Time) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, tr := range w.transitions {
		if tr.at.After(since) && slices.Contains(nodes, tr.node) {
			out = append(out, fmt.Sprintf("%s %s->%s +%s", tr.node, tr.from, tr.to, tr.at.Sub(since).Round(10*time.Millisecond)))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// mark is the start of a phase.
func (w *watcher) mark() time.Time { return time.Now() }

// firstChange is how long after since the first of nodes left passing in the catalog ("never" when none did).
func (w *watcher) firstChange(nodes []string, since time.Time) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, tr := range w.transitions {
		if tr.at.After(since) && slices.Contains(nodes, tr.node) && tr.from == "passing" {
			return tr.at.Sub(since).Round(10 * time.Millisecond).String()
		}
	}
	return "never"
}

// assertQuiet fails the test if a node not on the faulted host (nil: any node) changed status since the phase began.
func (w *watcher) assertQuiet(t *testing.T, since time.Time, faulted *cluster.Host) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, tr := range w.transitions {
		if tr.at.Before(since) || (faulted != nil && slices.Contains(faulted.NodeIDs(), tr.node)) {
			continue
		}
		t.Errorf("%s went %s -> %s %s into the phase", tr.node, tr.from, tr.to, tr.at.Sub(since).Round(10*time.Millisecond))
	}
}

// settle is how long a proxy may take to carry out a reload once its new config is in place (nginx and HAProxy
// reload asynchronously after the signal): reads that began within it may still meet the old upstreams.
const settle = 2 * time.Second

// assertReadsOnlyFailedIn fails the test for a read that failed having begun after since but outside the window
// [from, to+settle], in which the fault (a host's nodes in the upstreams while unreachable) explains failures.
func (w *watcher) assertReadsOnlyFailedIn(t *testing.T, since, to time.Time) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.readLog {
		if r.err == nil || r.at.Before(since) {
			continue
		}
		if to.After(since) && !r.at.After(to.Add(settle)) {
			continue
		}
		t.Errorf("a read of %s through %s failed %s into the phase, outside the fault's window: %v", r.service, r.proxy,
			r.at.Sub(since).Round(10*time.Millisecond), r.err)
	}
}

func (w *watcher) failed(proxy string, since time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, r := range w.readLog {
		if r.proxy == proxy && r.err != nil && !r.at.Before(since) {
			n++
		}
	}
	return n
}

func (w *watcher) reads(since time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, r := range w.readLog {
		if !r.at.Before(since) {
			n++
		}
	}
	return n
}

// upstreamChanges reads the upstreams now and returns a func listing every later look at them that saw others.
func (w *watcher) upstreamChanges(t *testing.T, f *cluster.Fleet) func() []string {
	since := time.Now()
	base, err := upstreamsNow(f)
	if err != nil {
		t.Fatal(err)
	}
	return func() []string {
		w.mu.Lock()
		defer w.mu.Unlock()
		var out []string
		for _, u := range w.upstreams {
			if u.at.After(since) && u.upstreams != base {
				out = append(out, fmt.Sprintf("+%s: %s\n  (were %s)", u.at.Sub(since).Round(10*time.Millisecond), u.upstreams, base))
			}
		}
		return out
	}
}
