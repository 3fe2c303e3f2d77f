// Command benchagent measures one chainwarden agent watching many nodes: it starts a real Consul dev agent and one
// local JSON-RPC server that answers as many Ethereum nodes (one URL path each, the real batch wire format), runs the
// real `chainwarden agent` binary against them, and reports the agent's CPU, RSS and Consul writes.
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
	blockTime := flag.Duration("block-time", 12*time.Second, "how often the fake chain makes a block")
	warmup := flag.Duration("warmup", 10*time.Second, "time to wait after every node passes, before measuring")
	duration := flag.Duration("duration", 60*time.Second, "measuring window")
	agentBin := flag.String("agent", "bin/chainwarden", "chainwarden binary")
	cpuProfile := flag.String("cpuprofile", "", "save a CPU profile of the agent over the measuring window to this file")
	flag.Parse()
	if err := run(*nodes, *services, *interval, *blockTime, *warmup, *duration, *agentBin, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "benchagent:", err)
		os.Exit(1)
	}
}

func run(nodes, services int, interval, blockTime, warmup, duration time.Duration, agentBin, cpuProfile string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "chainwarden-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// Production Consul keeps output-only check changes on the local agent (check_update_interval, 5 m by default);
	// dev mode would write every one of them to the servers.
	consul, err := devnet.StartConsul(ctx, dir, 0, "-hcl", `check_update_interval = "5m"`)
	if consul != nil {
		defer consul.Stop()
	}
	if err != nil {
		return err
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	start := time.Now()
	// One fake node answers for every /n/<i>: a chain on id 1 that makes a block every blockTime.
	node := ethfake.New(0, 1, nil)
	node.HeightFunc = func() (uint64, time.Time) {
		n := uint64(time.Since(start) / blockTime)
		return 1000 + n, start.Add(time.Duration(n) * blockTime)
	}
	srv := &http.Server{Handler: node}
	go srv.Serve(l)
	defer srv.Close()

	agentPort, err := devnet.FreePort()
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "consul {\n  address = %q\n}\nlisten = \"127.0.0.1:%d\"\ninterval = %q\nlog_level = \"warn\"\n", consul.Addr, agentPort, interval)
	for i := 0; i < nodes; i++ {
		fmt.Fprintf(&b, "node \"n%04d\" {\n  kind = \"ethereum\"\n  rpc = \"http://%s/n/%d\"\n  service = \"eth-bench-%d\"\n  chain_id = 1\n  max_block_age = \"1m\"\n}\n",
			i, l.Addr(), i, i%services)
	}
	cfgPath := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
		return err
	}
	pprofPort, err := devnet.FreePort()
	if err != nil {
		return err
	}
	agent, err := devnet.Start(dir, "", nil, "agent", agentBin, "agent", "-config", cfgPath, "-pprof", fmt.Sprintf("127.0.0.1:%d", pprofPort))
	if err != nil {
		return err
	}
	defer agent.Kill()
	pid := agent.Cmd.Process.Pid
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", agentPort)

	fmt.Printf("benchagent: %d nodes in %d services, interval %s, a block every %s\n", nodes, services, interval, blockTime)
	// Warm up until every node is registered and passing (the start-up registrations are not the steady state),
	// then a little longer.
	healthURL := fmt.Sprintf("http://127.0.0.1:%d/v1/health", agentPort)
	t0 := time.Now()
	err = devnet.Poll(ctx, 10*time.Minute, "every node passing", agent, func() error {
		passing, err := countPassing(healthURL)
		if err != nil {
			return err
		}
		if passing < nodes {
			return fmt.Errorf("%d of %d passing", passing, nodes)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("benchagent: all %d nodes passing after %s; measuring for %s\n", nodes, time.Since(t0).Round(time.Second), duration)
	time.Sleep(warmup)
	if agent.Exited() {
		return fmt.Errorf("agent exited:\n%s", agent.Tail(20))
	}
	cpu0, _ := cpuTicks(pid)
	raft0, _ := raftIndex(consul.Addr)
	probes0, writes0, _ := agentCounters(metricsURL)
	var rssMax, rssSum, samples int64
	profDone := make(chan error, 1)
	if cpuProfile != "" {
		go func() {
			profDone <- fetch(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", pprofPort, int(duration.Seconds())-2), cpuProfile)
		}()
	} else {
		profDone <- nil
	}
	t0 = time.Now()
	for time.Since(t0) < duration {
		time.Sleep(time.Second)
		rss, err := rssKiB(pid)
		if err != nil {
			return fmt.Errorf("agent gone: %w\n%s", err, agent.Tail(20))
		}
		rssSum += rss
		samples++
		rssMax = max(rssMax, rss)
	}
	elapsed := time.Since(t0)
	if err := <-profDone; err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	cpu1, _ := cpuTicks(pid)
	raft1, _ := raftIndex(consul.Addr)
	probes1, writes1, _ := agentCounters(metricsURL)

	cpuPct := float64(cpu1-cpu0) / 100 / elapsed.Seconds() * 100 // USER_HZ is 100
	perMin := func(d float64) float64 { return d / elapsed.Minutes() }
	fmt.Printf("\n| nodes | interval | block time | probes/s | agent CPU (%% of one core) | RSS max (MiB) | RSS mean (MiB) | Consul raft log entries/min | agent->Consul state writes/min |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|\n")
	fmt.Printf("| %d | %s | %s | %.0f | %.1f | %.1f | %.1f | %.0f | %.0f |\n", nodes, interval, blockTime,
		(probes1-probes0)/elapsed.Seconds(), cpuPct, float64(rssMax)/1024, float64(rssSum)/float64(samples)/1024,
		perMin(raft1-raft0), perMin(writes1-writes0))
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
	return nil
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
)

func agentCounters(url string) (probes, writes float64, err error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if m := probeCount.FindSubmatch(b); m != nil {
		probes, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	if m := writesGauge.FindSubmatch(b); m != nil {
		writes, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	return probes, writes, nil
}
