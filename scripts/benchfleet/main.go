// Command benchfleet measures head sharing at fleet scale: a real 3-server Consul cluster on loopback addresses, and
// simulated agents — the real internal/heads Store, many per process, each with its own Consul API client (its own
// http.Transport) to one of the servers — for HOSTS hosts × 3 nodes over 10 networks with block times from 1 s to
// 12 s. Each network's chain is a function of time (a block every block time); each node sees each block after its
// own small delay (0–500 ms); each agent publishes every second, as the agent's pass does.
//
// Modes: "before" is the design before bounded publishers (every node writes its head, every agent watches the
// whole heads prefix); "after" is bounded publishers (at most -publishers nodes per network hold a session-held key,
// each agent watches only its networks' prefixes). Per run it reports each server's CPU (utime+stime from /proc),
// the bytes the servers sent (counted at the clients' connections), raft applies/s (the leader's last_log_index),
// transactions/s, and head propagation: from the start of the first write of a height to each interested agent's
// view (its KV read) having it, p50/p99. See docs/BENCHMARKS.md.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

var blockTimes = []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 10, 12} // seconds, one per network

func main() {
	hostsFlag := flag.String("hosts", "100,300,1000", "comma-separated fleet sizes (hosts, 3 nodes each)")
	modes := flag.String("modes", "before,after", "comma-separated: before, after")
	publishers := flag.Int("publishers", heads.DefaultPublishers, "head_publishers (after)")
	warmup := flag.Duration("warmup", 20*time.Second, "time after every agent started, before measuring")
	duration := flag.Duration("duration", 30*time.Second, "measuring window per run")
	maxP99 := flag.Duration("give-up-p99", 10*time.Second, "stop a run early when propagation p99 so far exceeds this (it cannot keep up)")
	flag.Parse()
	var sizes []int
	for _, s := range strings.Split(*hostsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "benchfleet: bad -hosts %q\n", *hostsFlag)
			os.Exit(2)
		}
		sizes = append(sizes, n)
	}
	dir, err := os.MkdirTemp("", "benchfleet-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchfleet:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	cs, err := devnet.StartConsulServers(ctx, dir, dir, 3,
		"-hcl", `limits { http_max_conns_per_client = 15000 }`, "-hcl", `performance { raft_multiplier = 1 }`)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchfleet:", err)
		os.Exit(1)
	}
	defer cs.Stop()
	var bts []string
	for _, bt := range blockTimes {
		bts = append(bts, strconv.Itoa(int(bt)))
	}
	fmt.Printf("3 Consul servers up: %s; %d networks, block times %s s; 3 nodes per host; %s per run after %s warm-up\n",
		strings.Join(addrs(cs), ", "), len(blockTimes), strings.Join(bts, ","), *duration, *warmup)
	fmt.Printf("%-6s %6s %9s %24s %9s %10s %9s %7s %9s %9s %9s %9s %8s %9s\n", "mode", "hosts", "leader", "server CPU (cores)",
		"out MB/s", "KB/s/host", "applies/s", "txn/s", "write p50", "write p99", "prop p50", "prop p99", "samples", "bench CPU")
	for _, hosts := range sizes {
		for _, mode := range strings.Split(*modes, ",") {
			r, err := run(ctx, cs, strings.TrimSpace(mode), hosts, *publishers, *warmup, *duration, *maxP99)
			if err != nil {
				fmt.Fprintln(os.Stderr, "benchfleet:", err)
				os.Exit(1)
			}
			fmt.Println(r)
		}
	}
}

func addrs(cs *devnet.ConsulServers) []string {
	var out []string
	for _, s := range cs.Servers {
		out = append(out, s.Addr)
	}
	return out
}

// countConn counts the bytes read from a connection: what the server sent.
type countConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// propagation records when each height of each network was first written, and how long each interested agent's
// view took to have it.
type propagation struct {
	mu        sync.Mutex
	writeAt   []map[uint64]time.Time // by network
	samples   []time.Duration
	recording atomic.Bool
}

func (p *propagation) wrote(network int, height uint64, at time.Time) {
	p.mu.Lock()
	if _, ok := p.writeAt[network][height]; !ok {
		p.writeAt[network][height] = at
	}
	p.mu.Unlock()
}

func (p *propagation) seen(network int, from, to uint64, at time.Time) {
	if !p.recording.Load() {
		return
	}
	p.mu.Lock()
	for h := from + 1; h <= to; h++ {
		if w, ok := p.writeAt[network][h]; ok {
			p.samples = append(p.samples, at.Sub(w))
		}
	}
	p.mu.Unlock()
}

func (p *propagation) quantile(q float64) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.samples) == 0 {
		return 0
	}
	s := slices.Clone(p.samples)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// simAgent is one simulated host's agent: the real heads.Store on its own Consul client.
type simAgent struct {
	id       string
	nets     []int // its nodes' networks (one node each)
	delays   []time.Duration
	store    *heads.Store
	kv       *recKV
	sessions *consulapi.Session
}

// recKV is the agent's KV reads: the view it gets, for the propagation figures.
type recKV struct {
	kv     *consulapi.KV
	prop   *propagation
	layout kvlayout.Layout
	mine   map[int]bool
	mu     sync.Mutex
	last   map[int]uint64
}

var heightField = []byte(`"height":`)

func (r *recKV) List(prefix string, q *consulapi.QueryOptions) (consulapi.KVPairs, *consulapi.QueryMeta, error) {
	pairs, meta, err := r.kv.List(prefix, q)
	if err != nil {
		return pairs, meta, err
	}
	now := time.Now()
	top := map[int]uint64{}
	for _, p := range pairs {
		n, ok := networkOf(r.layout, p.Key)
		if !ok || !r.mine[n] {
			continue
		}
		if h := parseHeight(p.Value); h > top[n] {
			top[n] = h
		}
	}
	r.mu.Lock()
	for n, h := range top {
		if h > r.last[n] {
			if r.last[n] > 0 {
				r.prop.seen(n, r.last[n], h, now)
			}
			r.last[n] = h
		}
	}
	r.mu.Unlock()
	return pairs, meta, err
}

// recTxn is the agent's KV writes: when each height was first written (the start of the write).
type recTxn struct {
	txn    *consulapi.Txn
	prop   *propagation
	layout kvlayout.Layout
	count  *atomic.Int64
	took   *latencies
}

// latencies are the durations of the writes made while recording.
type latencies struct {
	mu        sync.Mutex
	d         []time.Duration
	recording *atomic.Bool
}

func (l *latencies) add(d time.Duration) {
	if !l.recording.Load() {
		return
	}
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func (r *recTxn) Txn(ops consulapi.TxnOps, q *consulapi.QueryOptions) (bool, *consulapi.TxnResponse, *consulapi.QueryMeta, error) {
	start := time.Now()
	for _, op := range ops {
		if op.KV == nil || len(op.KV.Value) == 0 {
			continue
		}
		if n, ok := networkOf(r.layout, op.KV.Key); ok {
			r.prop.wrote(n, parseHeight(op.KV.Value), start)
		}
	}
	r.count.Add(1)
	ok, resp, meta, err := r.txn.Txn(ops, q)
	r.took.add(time.Since(start))
	return ok, resp, meta, err
}

func networkOf(l kvlayout.Layout, key string) (int, bool) {
	rest, ok := strings.CutPrefix(key, l.Heads()+"net")
	if !ok {
		return 0, false
	}
	s, _, _ := strings.Cut(rest, "/")
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0 && n < len(blockTimes)
}

func parseHeight(v []byte) uint64 {
	i := bytes.Index(v, heightField)
	if i < 0 {
		return 0
	}
	v = v[i+len(heightField):]
	var h uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			break
		}
		h = h*10 + uint64(c-'0')
	}
	return h
}

// procCPU is a process's utime+stime in seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100 // USER_HZ
}

func lastIndex(s *devnet.ConsulServer) float64 {
	st, err := s.Client.Agent().Self()
	if err != nil {
		return 0
	}
	raft, _ := st["Stats"]["raft"].(map[string]any)
	v, _ := raft["last_log_index"].(string)
	f, _ := strconv.ParseFloat(v, 64)
	return f
}

func run(ctx context.Context, cs *devnet.ConsulServers, mode string, hosts, publishers int, warmup, duration, maxP99 time.Duration) (string, error) {
	if mode != "before" && mode != "after" {
		return "", fmt.Errorf("mode %q is not before or after", mode)
	}
	layout := kvlayout.New("")
	prop := &propagation{writeAt: make([]map[uint64]time.Time, len(blockTimes))}
	for i := range prop.writeAt {
		prop.writeAt[i] = map[uint64]time.Time{}
	}
	out := make([]atomic.Int64, len(cs.Servers))
	var txns atomic.Int64
	writes := &latencies{recording: &prop.recording}
	var transports []*http.Transport
	genesis := time.Now()
	height := func(n int, at time.Time) uint64 { return uint64(at.Sub(genesis)/(blockTimes[n]*time.Second)) + 1 }

	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var agents []*simAgent
	for i := range hosts {
		srv := i % len(cs.Servers)
		counter := &out[srv]
		tr := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 90 * time.Second,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return countConn{c, counter}, nil
			}}
		transports = append(transports, tr)
		cl, err := consulapi.NewClient(&consulapi.Config{Address: cs.Servers[srv].Addr, Transport: tr})
		if err != nil {
			cancel()
			return "", err
		}
		a := &simAgent{id: fmt.Sprintf("host-%04d", i), sessions: cl.Session()}
		// 3 nodes over the 10 networks: every network gets 3×hosts/10 nodes.
		a.nets = []int{i % 10, (i + 3) % 10, (i + 7) % 10}
		mine := map[int]bool{}
		for range a.nets {
			a.delays = append(a.delays, time.Duration(rand.IntN(500))*time.Millisecond)
		}
		for _, n := range a.nets {
			mine[n] = true
		}
		a.kv = &recKV{kv: cl.KV(), prop: prop, layout: layout, mine: mine, last: map[int]uint64{}}
		a.store = heads.New(a.kv, &recTxn{txn: cl.Txn(), prop: prop, layout: layout, count: &txns, took: writes}, layout, hclog.NewNullLogger(), nil)
		if mode == "after" {
			a.store.SetPublishers(heads.Publishers{Max: publishers, Sessions: cl.Session(), Agent: a.id, MaxAge: time.Minute,
				ClaimWindow: heads.DefaultClaimWindow})
			var svcs []string
			for _, n := range a.nets {
				svcs = append(svcs, fmt.Sprintf("net%d", n))
			}
			a.store.SetServices(svcs)
		}
		agents = append(agents, a)
	}
	// Start the agents spread over 2 s (they don't all boot at once), each passing every second at its own phase.
	for i, a := range agents {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if mode == "after" {
				a.store.WatchServices(rctx, 5*time.Minute)
			} else {
				a.store.Watch(rctx, 5*time.Minute)
			}
		}()
		go func() {
			defer wg.Done()
			h := fnv.New32a()
			h.Write([]byte(a.id))
			phase := time.Duration(h.Sum32()%1000) * time.Millisecond
			select {
			case <-rctx.Done():
				return
			case <-time.After(2*time.Second*time.Duration(i)/time.Duration(hosts) + phase):
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			since := map[int]time.Time{}
			last := map[int]uint64{}
			for {
				now := time.Now()
				var hs []heads.Head
				for j, n := range a.nets {
					ht := height(n, now.Add(-a.delays[j]))
					if ht != last[j] {
						last[j], since[j] = ht, now
					}
					hs = append(hs, heads.Head{Service: fmt.Sprintf("net%d", n), Node: fmt.Sprintf("%s-n%d", a.id, j),
						Height: ht, Peers: 25, Observed: since[j], Agent: a.id, Status: heads.StatusPassing,
						BlockTime: genesis.Add(time.Duration(ht-1) * blockTimes[n] * time.Second)})
				}
				pctx, pcancel := context.WithTimeout(rctx, 5*time.Second)
				_, _ = a.store.Publish(pctx, hs, nil)
				pcancel()
				select {
				case <-rctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	sleep := func(d time.Duration) { time.Sleep(d) }
	sleep(2*time.Second + warmup)

	leader := cs.Leader()
	snap := func() (cpu []float64, bytes []int64, idx float64, tx int64, self float64, at time.Time) {
		for i, s := range cs.Servers {
			cpu = append(cpu, procCPU(s.Proc.Cmd.Process.Pid))
			bytes = append(bytes, out[i].Load())
		}
		if leader != nil {
			idx = lastIndex(leader)
		}
		return cpu, bytes, idx, txns.Load(), procCPU(os.Getpid()), time.Now()
	}
	cpu0, b0, idx0, tx0, self0, t0 := snap()
	prop.recording.Store(true)
	stoppedEarly := ""
	for end := t0.Add(duration); time.Now().Before(end); {
		sleep(time.Second)
		if time.Since(t0) > 10*time.Second && prop.quantile(0.99) > maxP99 {
			stoppedEarly = fmt.Sprintf(" (stopped after %s: p99 over %s)", time.Since(t0).Round(time.Second), maxP99)
			break
		}
	}
	prop.recording.Store(false)
	cpu1, b1, idx1, tx1, self1, t1 := snap()
	secs := t1.Sub(t0).Seconds()

	cancel()
	wg.Wait()
	if mode == "after" {
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		for _, a := range agents {
			_ = a.store.Close(cctx)
		}
		ccancel()
	}
	if _, err := cs.Servers[0].Client.KV().DeleteTree(layout.Prefix()+"/", nil); err != nil {
		return "", fmt.Errorf("clean up: %w", err)
	}
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}

	var cpus []string
	var total int64
	for i := range cs.Servers {
		c := fmt.Sprintf("%.2f", (cpu1[i]-cpu0[i])/secs)
		if leader != nil && cs.Servers[i] == leader {
			c += "*"
		}
		cpus = append(cpus, c)
		total += b1[i] - b0[i]
	}
	leaderName := "?"
	if leader != nil {
		leaderName = leader.Name[len(leader.Name)-1:]
		leaderName = "server-" + leaderName
	}
	mbs := float64(total) / secs / 1e6
	prop.mu.Lock()
	n := len(prop.samples)
	prop.mu.Unlock()
	return fmt.Sprintf("%-6s %6d %9s %24s %9.2f %10.2f %9.1f %7.1f %9s %9s %9s %9s %8d %9.2f%s", mode, hosts, leaderName,
		strings.Join(cpus, " "), mbs, float64(total)/secs/1e3/float64(hosts), (idx1-idx0)/secs, float64(tx1-tx0)/secs,
		writes.quantile(0.5).Round(time.Millisecond), writes.quantile(0.99).Round(time.Millisecond), prop.quantile(0.5).Round(time.Millisecond), prop.quantile(0.99).Round(time.Millisecond), n, (self1-self0)/secs,
		stoppedEarly), nil
}
