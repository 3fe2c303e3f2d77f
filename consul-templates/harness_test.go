package consultemplates

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// proxy is one RPC proxy under test: consul-template rendering this directory's template for nginx or HAProxy,
// exactly as deployed (same config file, same apply.sh), into a scratch copy of the directory.
type proxy struct {
	kind      string // "nginx" or "haproxy"
	URL       string // http://127.0.0.1:PORT
	Dir       string // the scratch copy of consul-templates/<kind>
	Live      string // the live rendered file
	AccessLog string // nginx only
	CT        *testenv.ConsulTemplate
	Nginx     *testenv.Nginx
	HAProxy   *testenv.HAProxy
}

var proxyKinds = []string{"nginx", "haproxy"}

// startProxy renders once, starts the proxy on that render, then starts the consul-template daemon.
func startProxy(t *testing.T, kind string, consul *testenv.Consul, env ...string) *proxy {
	t.Helper()
	dir := filepath.Join(t.TempDir(), kind)
	copyDir(t, kind, dir)
	if err := os.MkdirAll(filepath.Join(dir, "staging"), 0o700); err != nil {
		t.Fatal(err)
	}
	port := testenv.FreePort(t)
	p := &proxy{kind: kind, URL: fmt.Sprintf("http://127.0.0.1:%d", port), Dir: dir}
	env = append([]string{"CHAINWARDEN_PROXY_LISTEN=" + fmt.Sprintf("127.0.0.1:%d", port)}, env...)
	var prefix string
	switch kind {
	case "nginx":
		prefix = testenv.NginxPrefix(t)
		p.Live = filepath.Join(dir, "rpc-proxy.conf")
		p.AccessLog = filepath.Join(prefix, "logs", "access.log")
		env = append(env, "NGINX="+testenv.Bin(t, "nginx"), "CHAINWARDEN_NGINX_PREFIX="+prefix,
			"CHAINWARDEN_PROXY_ACCESS_LOG="+p.AccessLog)
	case "haproxy":
		p.Live = filepath.Join(dir, "rpc-proxy.cfg")
		env = append(env, "HAPROXY="+testenv.Bin(t, "haproxy"),
			"CHAINWARDEN_HAPROXY_PIDFILE="+filepath.Join(dir, "haproxy.pid"))
	}
	out := testenv.RunConsulTemplateOnce(t, dir, "consul-template.hcl", consul.Addr, env)
	if _, err := os.Stat(p.Live); err != nil {
		t.Fatalf("first render did not produce %s: %v\n%s", p.Live, err, out)
	}
	switch kind {
	case "nginx":
		p.Nginx = testenv.StartNginx(t, prefix, filepath.Join(dir, "nginx.conf"))
	case "haproxy":
		p.HAProxy = testenv.StartHAProxy(t, dir, filepath.Join(dir, "haproxy.pid"), "haproxy.cfg", "rpc-proxy.cfg")
	}
	testenv.WaitHTTP(t, nil, p.URL+"/healthz", 20*time.Second)
	p.CT = testenv.StartConsulTemplate(t, dir, "consul-template.hcl", consul.Addr, env)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(p.Live)
			t.Logf("--- live %s config ---\n%s", kind, b)
			if p.Nginx != nil {
				t.Logf("--- nginx error log ---\n%s", p.Nginx.ErrorLog(30))
			}
		}
	})
	return p
}

// startProxies starts one proxy of each kind and waits until both run a config with the servers in want
// (expectStates).
func startProxies(t *testing.T, consul *testenv.Consul, want map[string]string) []*proxy {
	t.Helper()
	var proxies []*proxy
	for _, kind := range proxyKinds {
		p := startProxy(t, kind, consul)
		p.waitConfig(t, "started", expectStates(kind, want))
		proxies = append(proxies, p)
	}
	return proxies
}

// liveConfig returns the config the proxy runs with.
func (p *proxy) liveConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(p.Live)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// reloads counts the reloads apply.sh made.
func (p *proxy) reloads() int { return p.CT.Count("chainwarden-proxy: reloaded") }

// waitConfig waits until the live config satisfies cond and the proxy runs it: the apply.sh run that put it in
// place has ended (so its reload request is in consul-template's log) and the proxy has carried out every reload
// apply.sh asked for (nginx and HAProxy reload asynchronously after the signal).
func (p *proxy) waitConfig(t *testing.T, what string, cond func(conf string) error) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, p.kind+" config: "+what, func() error {
		if p.CT.Proc.Exited() {
			t.Fatalf("consul-template exited: %s", p.CT.Proc.Tail(20))
		}
		if err := cond(p.liveConfig(t)); err != nil {
			return err
		}
		if p.CT.Busy() {
			return fmt.Errorf("apply.sh still running")
		}
		asked := p.reloads()
		done, err := p.proxyReloads()
		if err != nil {
			return err
		}
		if done < asked {
			return fmt.Errorf("%s carried out %d of the %d reloads apply.sh asked for", p.kind, done, asked)
		}
		return nil
	})
}

// proxyReloads counts the reloads the proxy itself has carried out.
func (p *proxy) proxyReloads() (int, error) {
	if p.Nginx != nil {
		return p.Nginx.Reloads()
	}
	return p.HAProxy.Reloads(), nil
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.Info()
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// register adds a chain node as the agent does: service ID = node name, tag chainwarden, a TTL check
// "chainwarden:<node>" with the given status.
func register(t *testing.T, c *testenv.Consul, service, node, addr string, port int, status string, meta map[string]string) {
	t.Helper()
	m := map[string]string{"kind": "geth", "chain": "ethereum", "network": "devnet", "node": node, "role": "rpc"}
	for k, v := range meta {
		m[k] = v
	}
	err := c.Client.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{
		ID: node, Name: service, Tags: []string{"chainwarden"}, Address: addr, Port: port, Meta: m,
		Check: &consulapi.AgentServiceCheck{CheckID: registry.CheckID(node), TTL: "10m", Status: status},
	})
	if err != nil {
		t.Fatalf("register %s: %v", node, err)
	}
}

// setStatus drives a node's TTL check, as the agent's verdict does.
func setStatus(t testing.TB, c *testenv.Consul, node, status string) {
	t.Helper()
	if err := c.Client.Agent().UpdateTTL(registry.CheckID(node), "set by test", status); err != nil {
		t.Fatalf("update ttl of %s: %v", node, err)
	}
}

// rpcResponse is a JSON-RPC response.
type rpcResponse struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

var httpClient = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// post sends a raw JSON-RPC body and returns the HTTP status and body.
func post(url, body string) (int, []byte, error) {
	resp, err := httpClient.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// call makes one JSON-RPC call and returns the response.
func call(url, method string, params ...any) (*rpcResponse, error) {
	if params == nil {
		params = []any{}
	}
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	status, b, err := post(url, string(req))
	if err != nil {
		return nil, err
	}
	var r rpcResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("status %d, body %q: %w", status, b, err)
	}
	return &r, nil
}

// fakeNode is an HTTP JSON-RPC server that answers every call with its own name, so routing can be observed. It
// records the path, Host header and bodies it saw.
type fakeNode struct {
	Name string
	Srv  *httptest.Server
	mu   sync.Mutex
	hits int
	seen []seenRequest
	drop bool // close the connection after reading each POST, answering nothing (GET health checks still pass)
}

// received counts the requests whose body contains s.
func (f *fakeNode) received(s string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.seen {
		if strings.Contains(r.Body, s) {
			n++
		}
	}
	return n
}

type seenRequest struct{ Path, Host, Body, Method string }

func newFakeNode(t *testing.T, name string) *fakeNode {
	t.Helper()
	f := &fakeNode{Name: name}
	f.Srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Srv.Close)
	return f
}

func (f *fakeNode) serve(w http.ResponseWriter, r *http.Request) {
	if websocket.IsWebSocketUpgrade(r) {
		f.serveWS(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.hits++
	f.seen = append(f.seen, seenRequest{r.URL.Path, r.Host, string(body), r.Method})
	drop := f.drop
	f.mu.Unlock()
	if drop && r.Method == http.MethodPost {
		// A node that dies after it got the call: the connection closes without an answer.
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
	}
	var req struct {
		ID json.RawMessage `json:"id"`
	}
	_ = json.Unmarshal(body, &req)
	if len(req.ID) == 0 {
		req.ID = json.RawMessage("null")
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":%q}`, req.ID, f.Name)
}

func (f *fakeNode) port() int { return f.Srv.Listener.Addr().(*net.TCPAddr).Port }

func (f *fakeNode) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits
}

// posts counts the POST requests the node got (HAProxy's health checks are GETs).
func (f *fakeNode) posts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, r := range f.seen {
		if r.Method == http.MethodPost {
			n++
		}
	}
	return n
}

func (f *fakeNode) last() seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) == 0 {
		return seenRequest{}
	}
	return f.seen[len(f.seen)-1]
}

// responders sends n eth_blockNumber calls and returns how many each responder (by result) answered.
func responders(t *testing.T, url string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		r, err := call(url, "eth_blockNumber")
		if err != nil {
			got["failed: "+err.Error()]++
			continue
		}
		if r.Error != nil {
			got["error: "+r.Error.Message]++
			continue
		}
		var s string
		_ = json.Unmarshal(r.Result, &s)
		got[s]++
	}
	return got
}

// only reports an error unless exactly the named responders (and every one of them) answered.
func only(got map[string]int, names ...string) error {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		if got[n] == 0 {
			return fmt.Errorf("%s never answered: %v", n, got)
		}
	}
	for k := range got {
		if !want[k] {
			return fmt.Errorf("unexpected responder %q: %v", k, got)
		}
	}
	return nil
}

func newPost(ctx context.Context, url, body string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return req, nil
}

// serveWS answers every JSON-RPC message on a WebSocket with the node's name, as a node's 8546-style endpoint.
func (f *fakeNode) serveWS(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	c, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		var req struct {
			ID json.RawMessage `json:"id"`
		}
		if err := c.ReadJSON(&req); err != nil {
			return
		}
		f.mu.Lock()
		f.hits++
		f.seen = append(f.seen, seenRequest{r.URL.Path, r.Host, "websocket", r.Method})
		f.mu.Unlock()
		if err := c.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":%q}`, req.ID, f.Name))); err != nil {
			return
		}
	}
}
