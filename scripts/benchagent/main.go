// Command benchagent measures one chainwarden agent watching many nodes: for each scenario it starts a real Consul dev
// agent and one local server that answers as many Ethereum nodes (one URL path each: JSON-RPC batches over HTTP, the
// real wire format, and newHeads subscriptions over WebSocket through go-ethereum's own rpc server), runs the real
// `chainwarden agent` binary against them, with push (every node has a ws URL) or polling only, and reports the
// agent's CPU, RSS and Consul writes.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/ethfake"
)

func main() {
	nodes := flag.Int("nodes", 1000, "nodes the agent watches")
	services := flag.Int("services", 10, "networks (Consul services) the nodes are spread over")
	interval := flag.Duration("interval", time.Second, "probe interval")
	scenarios := flag.String("scenarios", "push:12s,push:1s,poll:12s", "comma-separated runs, each MODE:BLOCKTIME; "+
		"MODE push gives every node a ws URL (new heads by eth_subscribe), poll gives none")
	pushPoll := flag.Duration("push-poll-interval", 0, "the agent's push_poll_interval (0: its default)")
	warmup := flag.Duration("warmup", 10*time.Second, "time to wait after every node passes, before measuring")
	duration := flag.Duration("duration", 60*time.Second, "measuring window")
	agentBin := flag.String("agent", "bin/chainwarden", "chainwarden binary")
	cpuProfile := flag.String("cpuprofile", "", "save a CPU profile of the agent over each measuring window to this file (suffixed -MODE-BLOCKTIME)")
	memProfile := flag.String("memprofile", "", "save a heap profile of the agent at the end of each measuring window to this file (suffixed -MODE-BLOCKTIME)")
	flag.Parse()
	var rows []string
	for _, sc := range strings.Split(*scenarios, ",") {
		mode, bt, ok := strings.Cut(strings.TrimSpace(sc), ":")
		blockTime, err := time.ParseDuration(bt)
		if !ok || err != nil || (mode != "push" && mode != "poll") {
			fmt.Fprintf(os.Stderr, "benchagent: scenario %q is not push:DURATION or poll:DURATION\n", sc)
			os.Exit(2)
		}
		prof, memProf := "", ""
		if *cpuProfile != "" {
			prof = fmt.Sprintf("%s-%s-%s", *cpuProfile, mode, bt)
		}
		if *memProfile != "" {
			memProf = fmt.Sprintf("%s-%s-%s", *memProfile, mode, bt)
		}
		row, err := run(bench{nodes: *nodes, services: *services, interval: *interval, blockTime: blockTime,
			push: mode == "push", pushPoll: *pushPoll, warmup: *warmup, duration: *duration, agentBin: *agentBin, cpuProfile: prof, memProfile: memProf})
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchagent:", err)
			os.Exit(1)
		}
		rows = append(rows, row)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\nload average at the end: %s\n", strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Printf("\n| nodes | mode | interval | block time | probes/s | heads judged on push/s | agent CPU (%% of one core) | RSS max (MiB) | RSS mean (MiB) | Consul raft log entries/min | agent->Consul state writes/min |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Println(r)
	}
}

// bench is one run: an agent watching nodes on a fake chain making a block every blockTime.
type bench struct {
	nodes, services     int
	interval, blockTime time.Duration
	push                bool
	pushPoll            time.Duration
	warmup, duration    time.Duration
	agentBin            string
	cpuProfile          string
	memProfile          string
}

func run(bc bench) (string, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "chainwarden-bench")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	// Production Consul keeps output-only check changes on the local agent (check_update_interval, 5 m by default);
	// dev mode would write every one of them to the servers.
	consul, err := devnet.StartConsul(ctx, dir, 0, "-hcl", `check_update_interval = "5m"`)
	if consul != nil {
		defer consul.Stop()
	}
	if err != nil {
		return "", err
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	start := time.Now()
	// One fake node answers for every /n/<i> (JSON-RPC over HTTP) and /ws/<i> (newHeads over WebSocket): a chain
	// on id 1 that makes a block every blockTime.
	node := ethfake.New(0, 1, nil)
	node.HeightFunc = func() (uint64, time.Time) {
		n := uint64(time.Since(start) / bc.blockTime)
		return 1000 + n, start.Add(time.Duration(n) * bc.blockTime)
	}
	pusher := ethfake.NewPusher(node)
	defer pusher.Close()
	go pusher.Follow(ctx, 20*time.Millisecond)
	mux := http.NewServeMux()
	mux.Handle("/n/", node)
	mux.Handle("/ws/", pusher)
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()

	agentPort, err := devnet.FreePort()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "consul {\n  address = %q\n}\nlisten = \"127.0.0.1:%d\"\ninterval = %q\nlog_level = \"warn\"\n", consul.Addr, agentPort, bc.interval)
	if bc.pushPoll > 0 {
		fmt.Fprintf(&b, "push_poll_interval = %q\n", bc.pushPoll)
	}
	for i := 0; i < bc.nodes; i++ {
		ws := ""
		if bc.push {
			ws = fmt.Sprintf("  ws = \"ws://%s/ws/%d\"\n", l.Addr(), i)
		}
		fmt.Fprintf(&b, "node \"n%04d\" {\n  kind = \"ethereum\"\n  rpc = \"http://%s/n/%d\"\n%s  service = \"eth-bench-%d\"\n  chain_id = 1\n  max_block_age = \"1m\"\n}\n",
			i, l.Addr(), i, ws, i%bc.services)
	}
	cfgPath := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
		return "", err
	}
	pprofPort, err := devnet.FreePort()
	if err != nil {
		return "", err
	}
	agent, err := devnet.Start(dir, "", nil, "agent", bc.agentBin, "agent", "-config", cfgPath, "-pprof", fmt.Sprintf("127.0.0.1:%d", pprofPort))
	if err != nil {
		return "", err
	}
	defer agent.Kill()
	pid := agent.Cmd.Process.Pid
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", agentPort)
	mode := "polling"
	if bc.push {
		mode = "push"
	}

	fmt.Printf("benchagent: %d nodes in %d services, %s, interval %s, a block every %s\n", bc.nodes, bc.services, mode, bc.interval, bc.blockTime)
	// Warm up until every node is registered and passing (the start-up registrations are not the steady state), and
	// in push mode subscribed, then a little longer.
	healthURL := fmt.Sprintf("http://127.0.0.1:%d/v1/health", agentPort)
	t0 := time.Now()
	err = devnet.Poll(ctx, 10*time.Minute, "every node passing", agent, func() error {
		passing, err := countPassing(healthURL)
		if err != nil {
			return err
		}
		if passing < bc.nodes {
			return fmt.Errorf("%d of %d passing", passing, bc.nodes)
		}
		if c, err := agentCounters(metricsURL); err != nil || (bc.push && c.subscribed < float64(bc.nodes)) {
			return fmt.Errorf("%v of %d subscribed (%v)", c.subscribed, bc.nodes, err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	fmt.Printf("benchagent: all %d nodes passing after %s; measuring for %s\n", bc.nodes, time.Since(t0).Round(time.Second), bc.duration)
	time.Sleep(bc.warmup)
	if agent.Exited() {
		return "", fmt.Errorf("agent exited:\n%s", agent.Tail(20))
	}
	cpu0, _ := cpuTicks(pid)
	raft0, _ := raftIndex(consul.Addr)
	c0, _ := agentCounters(metricsURL)
	var rssMax, rssSum, samples int64
	if bc.memProfile != "" {
		// The heap profile's allocation counts run from the agent's start; this one at the window's start lets
		// `go tool pprof -base FILE-start FILE` show the steady state's allocations alone.
		if err := fetch(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap", pprofPort), bc.memProfile+"-start"); err != nil {
			return "", fmt.Errorf("heap profile: %w", err)
		}
	}
	profDone := make(chan error, 1)
	if bc.cpuProfile != "" {
		go func() {
			profDone <- fetch(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", pprofPort, int(bc.duration.Seconds())-2), bc.cpuProfile)
		}()
	} else {
		profDone <- nil
	}
	t0 = time.Now()
	for time.Since(t0) < bc.duration {
		time.Sleep(time.Second)
		rss, err := rssKiB(pid)
		if err != nil {
			return "", fmt.Errorf("agent gone: %w\n%s", err, agent.Tail(20))
		}
		rssSum += rss
		samples++
		rssMax = max(rssMax, rss)
	}
	elapsed := time.Since(t0)
	if err := <-profDone; err != nil {
		return "", fmt.Errorf("cpu profile: %w", err)
	}
	cpu1, _ := cpuTicks(pid)
	raft1, _ := raftIndex(consul.Addr)
	c1, _ := agentCounters(metricsURL)
	if bc.memProfile != "" {
		if err := fetch(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap", pprofPort), bc.memProfile); err != nil {
			return "", fmt.Errorf("heap profile: %w", err)
		}
	}

	cpuPct := float64(cpu1-cpu0) / 100 / elapsed.Seconds() * 100 // USER_HZ is 100
	perMin := func(d float64) float64 { return d / elapsed.Minutes() }
	perSec := func(d float64) float64 { return d / elapsed.Seconds() }
	row := fmt.Sprintf("| %d | %s | %s | %s | %.0f | %.0f | %.1f | %.1f | %.1f | %.0f | %.0f |", bc.nodes, mode, bc.interval, bc.blockTime,
		perSec(c1.probes-c0.probes), perSec(c1.pushJudged-c0.pushJudged), cpuPct, float64(rssMax)/1024,
		float64(rssSum)/float64(samples)/1024, perMin(raft1-raft0), perMin(c1.writes-c0.writes))
	fmt.Println(row)
	if resp, err := http.Get(metricsURL); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, name := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_sys_bytes", "go_goroutines"} {
			if m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b); m != nil {
				v, _ := strconv.ParseFloat(string(m[1]), 64)
				if strings.HasSuffix(name, "bytes") {
					fmt.Printf("%s: %.1f MiB\n", name, v/(1<<20))
				} else {
					fmt.Printf("%s: %.0f\n", name, v)
				}
			}
		}
	}
	if tail := agent.Tail(3); strings.TrimSpace(tail) != "" {
		fmt.Printf("\nagent log (last lines):\n%s\n", tail)
	}
	return row, nil
}

func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return utime + stime, nil
}

func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "VmRSS:") {
			return strconv.ParseInt(strings.Fields(sc.Text())[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS")
}

// raftIndex is the Consul server's last raft log index: every write to the catalog or KV adds to it.
func raftIndex(addr string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/v1/agent/self")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var self struct {
		Stats struct {
			Raft struct {
				LastLogIndex string `json:"last_log_index"`
			} `json:"raft"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&self); err != nil {
		return 0, err
	}
	return strconv.ParseFloat(self.Stats.Raft.LastLogIndex, 64)
}

func fetch(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func countPassing(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var hs []struct {
		Status string `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&hs); err != nil {
		return 0, err
	}
	n := 0
	for _, h := range hs {
		if h.Status == "passing" {
			n++
		}
	}
	return n, nil
}

var (
	probeCount  = regexp.MustCompile(`(?m)^chainwarden_probe_duration_seconds_count\{kind="ethereum"\} (\S+)$`)
	writesGauge = regexp.MustCompile(`(?m)^chainwarden_consul_writes_total (\S+)$`)
	pushJudged  = regexp.MustCompile(`(?m)^chainwarden_push_heads_judged_total (\S+)$`)
	subscribed  = regexp.MustCompile(`(?m)^chainwarden_push_subscribed_nodes (\S+)$`)
)

// counters are the agent's own counts the benchmark reads from /metrics.
type counters struct{ probes, writes, pushJudged, subscribed float64 }

func agentCounters(url string) (counters, error) {
	var c counters
	resp, err := http.Get(url)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, m := range []struct {
		re  *regexp.Regexp
		out *float64
	}{{probeCount, &c.probes}, {writesGauge, &c.writes}, {pushJudged, &c.pushJudged}, {subscribed, &c.subscribed}} {
		if v := m.re.FindSubmatch(b); v != nil {
			*m.out, _ = strconv.ParseFloat(string(v[1]), 64)
		}
	}
	return c, nil
}
