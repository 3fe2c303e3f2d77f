package consultemplates

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// The proxy benchmarks (docs/BENCHMARKS.md, "RPC proxy"). They run only with CHAINWARDEN_BENCH=1, through
// scripts/bench-proxy.sh; each prints its figures as a markdown fragment (and appends it to $CHAINWARDEN_BENCH_OUT).

func benchOnly(t *testing.T) {
	t.Helper()
	if os.Getenv("CHAINWARDEN_BENCH") == "" {
		t.Skip("benchmark: run scripts/bench-proxy.sh (CHAINWARDEN_BENCH=1)")
	}
}

func report(t *testing.T, format string, args ...any) {
	t.Helper()
	s := fmt.Sprintf(format, args...)
	t.Log("\n" + s)
	if out := os.Getenv("CHAINWARDEN_BENCH_OUT"); out != "" {
		f, err := os.OpenFile(out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fmt.Fprintln(f, s)
	}
}

// load runs `workers` clients calling eth_blockNumber on url for d, returning calls/s, p50, p99 and failures.
func load(url string, workers int, d time.Duration) (rate float64, p50, p99 time.Duration, failed int) {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	start := time.Now()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			bad := 0
			for time.Now().Before(end) {
				t0 := time.Now()
				if _, err := blockNumber(url, 10*time.Second); err != nil {
					bad++
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			failed += bad
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) == 0 {
		return 0, 0, 0, failed
	}
	return float64(len(lat)) / el.Seconds(), lat[len(lat)/2], lat[len(lat)*99/100], failed
}

// TestBenchDrainAndCrash: failed client reads while nodes are drained the planned way (Consul maintenance, wait for
// the proxies to drop the node, stop it, restart it, end maintenance) and while they crash (SIGKILL), with the
// real agent judging the nodes every second.
func TestBenchDrainAndCrash(t *testing.T) {
	benchOnly(t)
	const cycles = 5
	consul := testenv.StartConsul(t)
	net := testenv.StartCliqueNetwork(t, 3)
	startAgentInterval(t, consul, "1s", net.Nodes)
	proxies := startProxies(t, consul, map[string]string{"clique-0": "server", "clique-1": "server", "clique-2": "server"})
	back := func(g *testenv.Geth) {
		g.Restart()
		if err := net.Connect(g); err != nil {
			t.Fatal(err)
		}
		consul.WaitCheck(t, g.Name, 90*time.Second, "passing")
		for _, p := range proxies {
			p.waitConfig(t, g.Name+" back", expectStates(p.kind, map[string]string{g.Name: "server"}))
		}
	}
	out := func(g *testenv.Geth) {
		for _, p := range proxies {
			p.waitConfig(t, g.Name+" out", expectStates(p.kind, map[string]string{g.Name: "absent"}))
		}
	}
	phase := func(name string, cycle func(g *testenv.Geth)) map[string][3]int64 {
		hs := map[string]*hammer{}
		reloads := map[string]int{}
		for _, p := range proxies {
			hs[p.kind] = startHammer(p.URL+"/"+service, 8)
			reloads[p.kind] = p.reloads()
		}
		for i := 0; i < cycles; i++ {
			cycle(net.Nodes[1+i%2])
		}
		res := map[string][3]int64{}
		for _, p := range proxies {
			ok, failed, resets, errs := hs[p.kind].finish()
			res[p.kind] = [3]int64{ok, failed, resets}
			t.Logf("%s %s: %d ok, %d failed (%d resets), %d reloads: %v", name, p.kind, ok, failed, resets,
				p.reloads()-reloads[p.kind], errs)
		}
		return res
	}
	// The pauses in the cycles are part of the measured scenario, not waits for a condition: each state (node out of
	// rotation, node stopped, node back) lasts a second of real load before the next step.
	drain := phase("drain", func(g *testenv.Geth) {
		if err := consul.Client.Agent().EnableServiceMaintenance(g.Name, "planned drain"); err != nil {
			t.Fatal(err)
		}
		out(g)
		time.Sleep(time.Second) // load with the node drained
		g.Stop()
		time.Sleep(time.Second) // load with the node stopped
		if err := consul.Client.Agent().DisableServiceMaintenance(g.Name); err != nil {
			t.Fatal(err)
		}
		back(g)
		time.Sleep(time.Second) // load with the node back
	})
	crash := phase("crash", func(g *testenv.Geth) {
		if err := g.Proc.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		consul.WaitCheck(t, g.Name, 30*time.Second, "critical")
		out(g)
		time.Sleep(time.Second) // load with the crashed node out
		back(g)
		time.Sleep(time.Second) // load with the node back
	})
	var b strings.Builder
	fmt.Fprintf(&b, "Failed client reads (8 clients per proxy calling eth_blockNumber through it; %d planned drains, then %d crashes, of the two non-sealing nodes of a 3-node Clique network; real agent at 1 s):\n\n", cycles, cycles)
	fmt.Fprintf(&b, "| proxy | drain: failed / reads | crash: failed / reads | of which keep-alive resets (drain, crash) |\n|---|---|---|---|\n")
	for _, p := range proxies {
		d, c := drain[p.kind], crash[p.kind]
		fmt.Fprintf(&b, "| %s | %d / %d (%.3f %%) | %d / %d (%.3f %%) | %d, %d |\n", p.kind, d[1], d[0]+d[1],
			pct(d[1], d[0]+d[1]), c[1], c[0]+c[1], pct(c[1], c[0]+c[1]), d[2], c[2])
	}
	report(t, "%s", b.String())
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// failoverModes are the ways the agent can learn that a node stopped, each a run of TestBenchFailover:
// polling only (every node probed every second), heads by push with the same block thresholds, and push with lag
// in time (warn_behind) on top.
var failoverModes = map[string]struct {
	push       bool
	thresholds string
	what       string
}{
	"polling":     {false, failoverThresholds, "polling every 1 s, no ws"},
	"push":        {true, failoverThresholds, "heads by push (ws), probes every 10 s"},
	"push+behind": {true, failoverThresholds + "  warn_behind = \"500ms\"\n", "heads by push, and warn_behind 500 ms"},
}

// failoverThresholds are the benchmark's failover-oriented thresholds (startAgentInterval's).
const failoverThresholds = "  warn_lag = 1\n  max_lag = 4\n  max_block_age = \"3s\"\n  min_peers = 0\n  fail_after = 1\n  pass_after = 2\n"

// TestBenchFailover: from the moment a node stops advancing (SIGSTOP, or its peers removed) to the moment nginx
// sends it no more requests, over 20 trials each (CHAINWARDEN_BENCH_TRIALS), with the real agent at a 1 s interval,
// for each of CHAINWARDEN_BENCH_FAILOVER (comma-separated failoverModes; default all, push+behind first).
func TestBenchFailover(t *testing.T) {
	benchOnly(t)
	trials := 20
	if s := os.Getenv("CHAINWARDEN_BENCH_TRIALS"); s != "" {
		trials, _ = strconv.Atoi(s)
	}
	modes := []string{"push+behind", "push", "polling"}
	if s := os.Getenv("CHAINWARDEN_BENCH_FAILOVER"); s != "" {
		modes = strings.Split(s, ",")
	}
	for _, m := range modes {
		if _, ok := failoverModes[m]; !ok {
			t.Fatalf("CHAINWARDEN_BENCH_FAILOVER: %q is not one of polling, push, push+behind", m)
		}
	}
	consul := testenv.StartConsul(t)
	net := testenv.StartCliqueNetwork(t, 3)
	p := startProxy(t, "nginx", consul)
	all := map[string]string{"clique-0": "server", "clique-1": "server", "clique-2": "server"}

	type trial struct{ detect, config, last time.Duration }
	run := func(mode string, settle time.Duration, stop, restore func(g *testenv.Geth)) []trial {
		var out []trial
		for i := 0; i < trials; i++ {
			g := net.Nodes[1+i%2]
			port := strconv.Itoa(g.RPCPort)
			t0 := time.Now()
			stop(g)
			var tCheck, tConfig time.Time
			for time.Since(t0) < 60*time.Second && (tCheck.IsZero() || tConfig.IsZero()) {
				if st, _, _ := consul.CheckStatus(g.Name); tCheck.IsZero() && st != "passing" && st != "" {
					tCheck = time.Now()
				}
				if tConfig.IsZero() && serverState("nginx", p.liveConfig(t), g.Name) != "server" {
					tConfig = time.Now()
				}
				time.Sleep(20 * time.Millisecond) // the resolution of the measured times
			}
			if tCheck.IsZero() || tConfig.IsZero() {
				t.Fatalf("%s trial %d: %s never left the rotation", mode, i, g.Name)
			}
			time.Sleep(settle) // measurement window: requests already sent to a frozen node end after proxy_read_timeout (10 s)
			last := lastRequestTo(t, p.AccessLog, "127.0.0.1:"+port, t0)
			tr := trial{tCheck.Sub(t0), tConfig.Sub(t0), last.Sub(t0)}
			if last.IsZero() || last.Before(t0) {
				tr.last = 0
			}
			t.Logf("%s trial %d (%s): check %s, config %s, last request sent %s after it stopped", mode, i, g.Name,
				tr.detect.Round(time.Millisecond), tr.config.Round(time.Millisecond), tr.last.Round(time.Millisecond))
			out = append(out, tr)
			restore(g)
			consul.WaitCheck(t, g.Name, 90*time.Second, "passing")
			p.waitConfig(t, g.Name+" back", expectStates("nginx", all))
			time.Sleep(2 * time.Second) // two seconds of load on the full rotation between trials (measured, not awaited)
		}
		return out
	}
	var b strings.Builder
	var reads []string
	fmt.Fprintf(&b, "Failover time, nginx, %d trials per way of stopping (agent interval 1 s, probe timeout 1 s, fail_after 1, warn_lag 1, max_lag 4, max_block_age 3 s; consul-template wait 250 ms..3 s; open-loop load, a call every 5 ms):\n\n", trials)
	fmt.Fprintf(&b, "| agent | node stops by | check leaves passing (median / max) | nginx config without it (median / max) | last request sent to it (median / max) |\n|---|---|---|---|---|\n")
	for _, mode := range modes {
		fm := failoverModes[mode]
		stopAgent := startAgentBlocks(t, consul, "1s", agentBlocks(net.Nodes, fm.push, fm.thresholds))
		for _, g := range net.Nodes {
			consul.WaitCheck(t, g.Name, 60*time.Second, "passing")
		}
		p.waitConfig(t, "three nodes", expectStates("nginx", all))
		// Open-loop load: a new call every 5 ms whatever the earlier ones do, so that calls stuck on a hung node do
		// not stop new ones from being sent (closed-loop clients would all end up waiting on it). One per mode, from
		// when its agent has every node in the rotation.
		h := startOpenLoop(p.URL+"/"+service, 5*time.Millisecond)
		frozen := run(mode+" SIGSTOP", 12*time.Second, func(g *testenv.Geth) {
			if err := g.Freeze(); err != nil {
				t.Fatal(err)
			}
		}, func(g *testenv.Geth) {
			if err := g.Thaw(); err != nil {
				t.Fatal(err)
			}
		})
		isolated := run(mode+" peers removed", 3*time.Second, func(g *testenv.Geth) {
			if err := net.Isolate(g); err != nil {
				t.Fatal(err)
			}
		}, func(g *testenv.Geth) {
			if err := net.Connect(g); err != nil {
				t.Fatal(err)
			}
		})
		ok, failed, resets, errs := h.finish()
		t.Logf("%s: client errors (first 10): %q", mode, errs)
		reads = append(reads, fmt.Sprintf("%s: %d ok, %d failed (%d keep-alive resets)", mode, ok, failed, resets))
		stopAgent()
		for _, m := range []struct {
			name string
			tr   []trial
		}{{"SIGSTOP", frozen}, {"peers removed", isolated}} {
			var d, c, l []time.Duration
			for _, x := range m.tr {
				d, c, l = append(d, x.detect), append(c, x.config), append(l, x.last)
			}
			fmt.Fprintf(&b, "| %s | %s | %s / %s | %s / %s | %s / %s |\n", fm.what, m.name, median(d), maxOf(d), median(c), maxOf(c), median(l), maxOf(l))
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "\nClient reads during the trials: %s. Load average at the end: %s.\n",
		strings.Join(reads, "; "), strings.Join(strings.Fields(string(load))[:3], " "))
	report(t, "%s", b.String())
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2].Round(10 * time.Millisecond)
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m.Round(10 * time.Millisecond)
}

// lastRequestTo returns when nginx sent the last request to addr that it started after `after`, from the access log
// (format chainwarden: "$msec ... $upstream_addr $upstream_status $request_time"; start = msec - request_time).
func lastRequestTo(t *testing.T, accessLog, addr string, after time.Time) time.Time {
	t.Helper()
	f, err := os.Open(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last time.Time
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, addr) {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) < 2 {
			continue
		}
		msec, err1 := strconv.ParseFloat(fs[0], 64)
		rt, err2 := strconv.ParseFloat(fs[len(fs)-1], 64)
		if err1 != nil || err2 != nil {
			continue
		}
		// With retries, upstream_addr lists each server tried; the request reached addr no later than its end.
		start := time.Unix(0, int64((msec-rt)*1e9))
		if start.After(after) && start.After(last) {
			last = start
		}
	}
	return last
}

// startOpenLoop sends an eth_blockNumber call through url every `every`, each in its own goroutine (at most 4,000 in
// flight), until finished.
func startOpenLoop(url string, every time.Duration) *hammer {
	h := &hammer{}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	sem := make(chan struct{}, 4000)
	h.done.Add(1)
	go func() {
		defer h.done.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			default:
				continue
			}
			h.done.Add(1)
			go func() {
				defer h.done.Done()
				defer func() { <-sem }()
				h.call(url)
			}()
		}
	}()
	return h
}
