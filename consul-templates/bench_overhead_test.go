package consultemplates

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// overheadTarget is one way to reach the node in TestBenchProxyOverhead.
type overheadTarget struct {
	name   string
	url    string
	pid    func() (int, error) // the proxy's master process; nil for the node itself
	client *http.Client        // the open-loop load's keep-alive connections to it
}

// overheadRound is what one round measured for one target.
type overheadRound struct {
	cpu      float64 // proxy CPU per call at the fixed rate, µs (master and workers: utime+stime)
	node     float64 // the node's CPU per call at the fixed rate, µs
	p50, p99 time.Duration
	failed   int
	rate     float64 // saturated calls/s
}

// TestBenchProxyOverhead: what a call through each proxy costs, against one geth v1.16 node (--dev), in one run:
//   - at a fixed open-loop rate (CHAINWARDEN_BENCH_RATE calls/s, default 500, over 16 keep-alive connections): the
//     proxy's CPU per call (utime+stime from /proc of its master and workers) and the latency it adds over calling
//     the node directly;
//   - saturated (16 clients calling back to back): calls/s, which on a small shared machine measures CPU sharing
//     more than the proxy.
//
// Targets: the node directly; a bare nginx proxy_pass and a bare HAProxy backend with the templates' upstream
// settings and no filter (the floors); nginx with an njs "filter" that inspects nothing (what njs itself costs:
// testdata/rpc-filter-passthrough.js); nginx and HAProxy with the method filter as it was before its fast path
// (testdata/rpc-filter-reference.js; CHAINWARDEN_PROXY_FILTER_FAST_PATH=off for HAProxy, whose Lua is unchanged);
// nginx with the filter of 2 Dec 2026, whose fast path was a JSON.parse in njs (testdata/rpc-filter-njs-fast-path.js);
// both as deployed; and HAProxy with 16 KB buffers instead of 64 KB (not deployed). CHAINWARDEN_BENCH_ROUNDS rounds (default 5); in each, every target gets 5 open-loop slices
// of 2 s, interleaved with the others' in an order that changes every slice, so that all see the same machine load,
// then 4 s saturated.
func TestBenchProxyOverhead(t *testing.T) {
	benchOnly(t)
	callRate := envInt(t, "CHAINWARDEN_BENCH_RATE", 500)
	rounds := envInt(t, "CHAINWARDEN_BENCH_ROUNDS", 5)
	const clients, perRound = 16, 5
	const slice, saturatedFor = 2 * time.Second, 4 * time.Second

	consul := testenv.StartConsul(t)
	g := testenv.StartGethDev(t, "bench")
	const svc = "eth-bench"
	register(t, consul, svc, "bench-node", "127.0.0.1", g.RPCPort, "passing", nil)
	node := func() (int, error) { return g.Proc.Cmd.Process.Pid, nil }

	targets := []overheadTarget{
		{name: "direct", url: g.RPC},
		benchBareNginx(t, svc, g.RPCPort),
		benchProxy(t, "nginx, njs pass-through", "nginx", consul, svc, "rpc-filter-passthrough.js"),
		benchProxy(t, "nginx, filter before", "nginx", consul, svc, "rpc-filter-reference.js"),
		benchProxy(t, "nginx, njs fast path only", "nginx", consul, svc, "rpc-filter-njs-fast-path.js"),
		benchProxy(t, "nginx, filter now", "nginx", consul, svc, ""),
		benchBareHAProxy(t, svc, g.RPCPort),
		benchProxy(t, "HAProxy, filter before", "haproxy", consul, svc, "", "CHAINWARDEN_PROXY_FILTER_FAST_PATH=off"),
		benchProxy(t, "HAProxy, filter now", "haproxy", consul, svc, ""),
		// Not deployed: what HAProxy's 64 KB buffers cost. Its L7 retries (retry-on empty-response etc., for reads)
		// copy the whole request buffer before each send, so a call's cost grows with tune.bufsize.
		benchProxy(t, "HAProxy, 16 KB buffers", "haproxy", consul, svc, "bufsize=16384"),
	}
	if v := os.Getenv("CHAINWARDEN_BENCH_HAPROXY_GLOBAL"); v != "" {
		// Not deployed: HAProxy with one more global setting (e.g. "nbthread 1"), to try a tuning in the same run.
		targets = append(targets, benchProxy(t, "HAProxy, "+v, "haproxy", consul, svc, "global="+v))
	}
	if re := os.Getenv("CHAINWARDEN_BENCH_TARGETS"); re != "" {
		// Only the targets whose names match (and the two every ratio needs: direct, the bare nginx hop).
		keep := regexp.MustCompile(re)
		targets = slices.DeleteFunc(targets, func(tg overheadTarget) bool {
			return tg.name != "direct" && tg.name != "nginx, bare hop" && !keep.MatchString(tg.name)
		})
	}
	for i := range targets {
		tg := &targets[i]
		tg.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: clients, MaxIdleConnsPerHost: clients}}
		t.Cleanup(tg.client.CloseIdleConnections)
		if _, err := blockNumber(tg.url, 5*time.Second); err != nil {
			t.Fatalf("%s: %v", tg.name, err)
		}
		load(tg.url, clients, time.Second) // warm up
	}

	load0 := loadAverage()
	res := map[string][]overheadRound{}
	for r := 0; r < rounds; r++ {
		type acc struct {
			proxy, node time.Duration
			lat         []time.Duration
			failed      int
		}
		accs := make([]acc, len(targets))
		for s := 0; s < perRound; s++ {
			for k := range targets {
				i := (k + r*perRound + s) % len(targets)
				if s%2 == 1 {
					i = len(targets) - 1 - i
				}
				proxyCPU, nodeCPU, lat, failed, err := openLoop(targets[i], node, callRate, clients, slice)
				if err != nil {
					t.Fatalf("%s: %v", targets[i].name, err)
				}
				a := &accs[i]
				a.proxy, a.node, a.lat, a.failed = a.proxy+proxyCPU, a.node+nodeCPU, append(a.lat, lat...), a.failed+failed
			}
		}
		for i, tg := range targets {
			a := accs[i]
			if len(a.lat) == 0 {
				t.Fatalf("%s: no call succeeded", tg.name)
			}
			slices.Sort(a.lat)
			perCall := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(len(a.lat)) }
			m := overheadRound{cpu: perCall(a.proxy), node: perCall(a.node), p50: a.lat[len(a.lat)/2],
				p99: a.lat[len(a.lat)*99/100], failed: a.failed}
			m.rate, _, _, _ = load(tg.url, clients, saturatedFor)
			res[tg.name] = append(res[tg.name], m)
			t.Logf("round %d %-24s proxy %6.1f µs/call, node %6.1f µs/call, p50 %s p99 %s, failed %d; saturated %.0f calls/s",
				r, tg.name, m.cpu, m.node, m.p50.Round(time.Microsecond), m.p99.Round(time.Microsecond), m.failed, m.rate)
		}
	}

	// Per round, each target against the direct call and against the bare nginx hop; then medians over rounds.
	ratio := func(name, base string, f func(overheadRound) float64) []float64 {
		var out []float64
		for i, m := range res[name] {
			out = append(out, f(m)/f(res[base][i]))
		}
		return out
	}
	added := func(name string, f func(overheadRound) time.Duration) []float64 {
		var out []float64
		for i, m := range res[name] {
			out = append(out, float64(f(m)-f(res["direct"][i]))/float64(time.Microsecond))
		}
		return out
	}
	cpu := func(m overheadRound) float64 { return m.cpu }
	var b strings.Builder
	fmt.Fprintf(&b, "Proxy overhead: one geth v1.16 node (--dev), eth_blockNumber; %d rounds, in each %d interleaved slices of %s per target at %d calls/s (open loop, %d keep-alive connections), then %s saturated (%d clients); load average %s before, %s after. Median over the rounds [min–max]:\n\n",
		rounds, perRound, slice, callRate, clients, saturatedFor, clients, load0, loadAverage())
	fmt.Fprintf(&b, "| target | proxy CPU per call at %d/s | × bare nginx hop (same round) | added p50 | added p99 | saturated calls/s | × direct | failed |\n|---|---|---|---|---|---|---|---|\n", callRate)
	for _, tg := range targets {
		ms := res[tg.name]
		failed := 0
		for _, m := range ms {
			failed += m.failed
		}
		cpuCol, ratioCol, p50Col, p99Col := "—", "—", "—", "—"
		if tg.pid != nil {
			cpuCol = spread(mapRounds(ms, cpu), "%.0f µs")
			ratioCol = spread(ratio(tg.name, "nginx, bare hop", cpu), "%.2f")
			p50Col = spread(added(tg.name, func(m overheadRound) time.Duration { return m.p50 }), "%+.0f µs")
			p99Col = spread(added(tg.name, func(m overheadRound) time.Duration { return m.p99 }), "%+.0f µs")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %d |\n", tg.name, cpuCol, ratioCol, p50Col, p99Col,
			spread(mapRounds(ms, func(m overheadRound) float64 { return m.rate }), "%.0f"),
			spread(ratio(tg.name, "direct", func(m overheadRound) float64 { return m.rate }), "%.2f"), failed)
	}
	direct := res["direct"]
	fmt.Fprintf(&b, "\nDirect: p50 %s, p99 %s; the node's own CPU per call %s.\n",
		spread(mapRounds(direct, func(m overheadRound) float64 { return float64(m.p50) / 1e3 }), "%.0f µs"),
		spread(mapRounds(direct, func(m overheadRound) float64 { return float64(m.p99) / 1e3 }), "%.0f µs"),
		spread(mapRounds(direct, func(m overheadRound) float64 { return m.node }), "%.0f µs"))
	fmt.Fprintf(&b, "Goals, per round: nginx's CPU per call %s × the bare hop's (goal ≤ 1.3); HAProxy's %s × nginx's (goal ≤ 1).\n",
		spread(ratio("nginx, filter now", "nginx, bare hop", cpu), "%.2f"),
		spread(ratio("HAProxy, filter now", "nginx, filter now", cpu), "%.2f"))
	report(t, "%s", b.String())
}

// openLoop sends eth_blockNumber calls to tg at a fixed rate for d, whatever the answers do, over tg.client (at
// most `conns` keep-alive connections), and returns the CPU the proxy and the node used meanwhile, the latencies
// (from each call's scheduled time, so that queueing counts) and the failures.
func openLoop(tg overheadTarget, node func() (int, error), rate, conns int, d time.Duration) (proxyCPU, nodeCPU time.Duration, lat []time.Duration, failed int, err error) {
	call := func() error {
		req, err := newPost(context.Background(), tg.url, `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`)
		if err != nil {
			return err
		}
		resp, err := tg.client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var r rpcResponse
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return fmt.Errorf("status %d: %w", resp.StatusCode, err)
		}
		if r.Error != nil {
			return fmt.Errorf("rpc error %s", r.Error.Message)
		}
		return nil
	}
	cpuOf := func(pid func() (int, error)) (time.Duration, error) {
		if pid == nil {
			return 0, nil
		}
		p, err := pid()
		if err != nil {
			return 0, err
		}
		return processTreeCPU(p)
	}

	n := int(d.Seconds() * float64(rate))
	every := time.Second / time.Duration(rate)
	jobs := make(chan time.Time, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for at := range jobs {
				err := call()
				mu.Lock()
				if err != nil {
					failed++
				} else {
					lat = append(lat, time.Since(at))
				}
				mu.Unlock()
			}
		}()
	}
	p0, err := cpuOf(tg.pid)
	if err != nil {
		return 0, 0, nil, 0, err
	}
	n0, err := cpuOf(node)
	if err != nil {
		return 0, 0, nil, 0, err
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(i) * every)
		time.Sleep(time.Until(at)) // the schedule, not synchronisation
		jobs <- at
	}
	close(jobs)
	wg.Wait()
	p1, err := cpuOf(tg.pid)
	if err != nil {
		return 0, 0, nil, 0, err
	}
	n1, err := cpuOf(node)
	if err != nil {
		return 0, 0, nil, 0, err
	}
	return p1 - p0, n1 - n0, lat, failed, nil
}

// processTreeCPU returns the CPU time (utime+stime) of process pid and of its children (nginx's workers, HAProxy's
// worker) from /proc.
func processTreeCPU(pid int) (time.Duration, error) {
	pids := []int{pid}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f, err := procStat(p); err == nil && f[1] == strconv.Itoa(pid) {
			pids = append(pids, p)
		}
	}
	var total time.Duration
	for _, p := range pids {
		f, err := procStat(p)
		if err != nil {
			return 0, err
		}
		// utime and stime, in clock ticks: USER_HZ, 100 on Linux.
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		s, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", p, f[11], f[12])
		}
		total += time.Duration(u+s) * 10 * time.Millisecond
	}
	return total, nil
}

// procStat returns the fields of /proc/PID/stat after the command name: [0] state, [1] ppid, ... [11] utime,
// [12] stime.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return nil, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return nil, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return f, nil
}

// benchProxy renders the template once for kind and starts the proxy on it, with no consul-template daemon (the
// benchmark changes nothing); filter, when set, replaces the deployed filter with that file from testdata, or, as
// "bufsize=N", sets HAProxy's tune.bufsize to N.
func benchProxy(t *testing.T, name, kind string, consul *testenv.Consul, svc, filter string, env ...string) overheadTarget {
	t.Helper()
	dir := filepath.Join(t.TempDir(), kind)
	copyDir(t, kind, dir)
	if err := os.MkdirAll(filepath.Join(dir, "staging"), 0o700); err != nil {
		t.Fatal(err)
	}
	patch := func(file, old, new string) {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		patched := strings.Replace(string(b), old, new, 1)
		if patched == string(b) {
			t.Fatalf("%s: no %q to replace", file, old)
		}
		if err := os.WriteFile(file, []byte(patched), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if size, ok := strings.CutPrefix(filter, "bufsize="); ok {
		patch(filepath.Join(dir, "haproxy.cfg"), "tune.bufsize 65536", "tune.bufsize "+size)
	} else if line, ok := strings.CutPrefix(filter, "global="); ok { // one more line in HAProxy's global section
		patch(filepath.Join(dir, "haproxy.cfg"), "global\n", "global\n    "+line+"\n")
	} else if filter != "" {
		b, err := os.ReadFile(filepath.Join("testdata", filter))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "rpc-filter.js"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := testenv.FreePort(t)
	env = append([]string{fmt.Sprintf("CHAINWARDEN_PROXY_LISTEN=127.0.0.1:%d", port)}, env...)
	tg := overheadTarget{name: name, url: fmt.Sprintf("http://127.0.0.1:%d/%s", port, svc)}
	switch kind {
	case "nginx":
		prefix := testenv.NginxPrefix(t)
		env = append(env, "NGINX="+testenv.Bin(t, "nginx"), "CHAINWARDEN_NGINX_PREFIX="+prefix)
		testenv.RunConsulTemplateOnce(t, dir, "consul-template.hcl", consul.Addr, env)
		tg.pid = testenv.StartNginx(t, prefix, filepath.Join(dir, "nginx.conf")).Pid
	case "haproxy":
		pidFile := filepath.Join(dir, "haproxy.pid")
		env = append(env, "HAPROXY="+testenv.Bin(t, "haproxy"), "CHAINWARDEN_HAPROXY_PIDFILE="+pidFile)
		testenv.RunConsulTemplateOnce(t, dir, "consul-template.hcl", consul.Addr, env)
		tg.pid = testenv.StartHAProxy(t, dir, pidFile, "haproxy.cfg", "rpc-proxy.cfg").Pid
	}
	testenv.WaitHTTP(t, nil, strings.TrimSuffix(tg.url, "/"+svc)+"/healthz", 20*time.Second)
	return tg
}

// benchBareNginx starts nginx with the deployed main config and an rpc-proxy.conf that only proxies: the template's
// upstream (keepalive 32) and read location, without the filter in front.
func benchBareNginx(t *testing.T, svc string, nodePort int) overheadTarget {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "nginx-bare")
	copyDir(t, "nginx", dir)
	port := testenv.FreePort(t)
	conf := fmt.Sprintf(`client_max_body_size 2m;
client_body_buffer_size 2m;
proxy_http_version 1.1;
proxy_connect_timeout 1s;
proxy_send_timeout 10s;
proxy_read_timeout 10s;
upstream cw_%[1]s {
    server 127.0.0.1:%[2]d max_fails=1 fail_timeout=3s;
    keepalive 32;
}
server {
    listen 127.0.0.1:%[3]d;
    access_log off;
    default_type application/json;
    location = /healthz {
        return 200 "ok\n";
    }
    location = /%[1]s {
        rewrite ^ / break;
        proxy_pass http://cw_%[1]s;
        proxy_set_header Host 127.0.0.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
        proxy_next_upstream_tries 3;
        proxy_next_upstream_timeout 15s;
    }
}
`, svc, nodePort, port)
	if err := os.WriteFile(filepath.Join(dir, "rpc-proxy.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	n := testenv.StartNginx(t, testenv.NginxPrefix(t), filepath.Join(dir, "nginx.conf"))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.WaitHTTP(t, nil, base+"/healthz", 20*time.Second)
	return overheadTarget{name: "nginx, bare hop", url: base + "/" + svc, pid: n.Pid}
}

// benchBareHAProxy starts HAProxy with the deployed haproxy.cfg and a frontend and backend as the template renders
// them (L7 retries included), without the filter.
func benchBareHAProxy(t *testing.T, svc string, nodePort int) overheadTarget {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "haproxy-bare")
	copyDir(t, "haproxy", dir)
	port := testenv.FreePort(t)
	conf := fmt.Sprintf(`frontend cw_rpc
    bind 127.0.0.1:%[3]d
    http-request return status 200 content-type text/plain string "ok\n" if { path /healthz }
    acl cw_svc_%[1]s path -m reg ^/%[1]s(/.*)?$
    use_backend cw_%[1]s if cw_svc_%[1]s

backend cw_%[1]s
    balance roundrobin
    option allbackups
    http-request set-path /
    http-request set-header Host 127.0.0.1
    retry-on conn-failure empty-response response-timeout 502 503 504
    retries 2
    option redispatch 1
    option httpchk
    http-check send meth GET uri /
    http-check expect rstatus ^[1-4]
    timeout check 2s
    default-server inter 1s fall 3 rise 2
    server bench-node 127.0.0.1:%[2]d check
`, svc, nodePort, port)
	if err := os.WriteFile(filepath.Join(dir, "rpc-proxy.cfg"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	h := testenv.StartHAProxy(t, dir, filepath.Join(dir, "haproxy.pid"), "haproxy.cfg", "rpc-proxy.cfg")
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.WaitHTTP(t, nil, base+"/healthz", 20*time.Second)
	return overheadTarget{name: "HAProxy, bare hop", url: base + "/" + svc, pid: h.Pid}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func mapRounds(ms []overheadRound, f func(overheadRound) float64) []float64 {
	out := make([]float64, len(ms))
	for i, m := range ms {
		out[i] = f(m)
	}
	return out
}

// spread formats the median of xs and their range.
func spread(xs []float64, format string) string {
	if len(xs) == 0 {
		return "—"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", med, s[0], s[len(s)-1])
}
