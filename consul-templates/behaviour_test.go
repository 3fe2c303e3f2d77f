package consultemplates

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

func TestMethodFilter(t *testing.T) {
	consul := testenv.StartConsul(t)
	node := newFakeNode(t, "geth-a")
	register(t, consul, service, "geth-a", "127.0.0.1", node.port(), "passing", nil)
	proxies := startProxies(t, consul, map[string]string{"geth-a": "server"})

	cases := []struct {
		name    string
		body    string
		refused []string // per call: "" passes, else the message's start; nil: proxied to the node
	}{
		{"read", `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`, nil},
		{"write", `{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x00"]}`, nil},
		{"admin", `{"jsonrpc":"2.0","id":7,"method":"admin_addPeer","params":["enode://x"]}`,
			[]string{"method admin_addPeer is not allowed"}},
		{"debug", `{"jsonrpc":"2.0","id":7,"method":"debug_traceTransaction","params":[]}`,
			[]string{"method debug_traceTransaction is not allowed"}},
		{"personal upper-case key", `{"jsonrpc":"2.0","id":7,"METHOD":"personal_unlockAccount"}`,
			[]string{"method personal_unlockAccount is not allowed"}},
		{"miner mixed case", `{"jsonrpc":"2.0","id":7,"method":"Miner_start"}`,
			[]string{"method Miner_start is not allowed"}},
		{"batch of reads", `[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":2,"method":"eth_chainId"}]`, nil},
		{"batch with admin", `[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":2,"method":"admin_peers"}]`,
			[]string{"batch refused", "method admin_peers is not allowed"}},
		{"not json", `{"jsonrpc":`, []string{"parse error"}},
	}
	for _, p := range proxies {
		for _, tc := range cases {
			t.Run(p.kind+"/"+tc.name, func(t *testing.T) {
				before := node.count()
				status, body, err := post(p.URL+"/"+service, tc.body)
				if err != nil {
					t.Fatal(err)
				}
				if status != 200 {
					t.Fatalf("status %d, body %s", status, body)
				}
				var resps []rpcResponse
				if strings.HasPrefix(strings.TrimSpace(string(body)), "[") {
					err = json.Unmarshal(body, &resps)
				} else {
					var r rpcResponse
					err = json.Unmarshal(body, &r)
					resps = []rpcResponse{r}
				}
				if err != nil {
					t.Fatalf("body %s: %v", body, err)
				}
				if tc.refused == nil {
					if node.count() == before || resps[0].Error != nil {
						t.Fatalf("not proxied: %s", body)
					}
					return
				}
				if node.count() != before {
					t.Fatalf("a refused request reached the node")
				}
				if len(resps) != len(tc.refused) {
					t.Fatalf("%d responses, want %d: %s", len(resps), len(tc.refused), body)
				}
				for i, want := range tc.refused {
					if resps[i].Error == nil || !strings.HasPrefix(resps[i].Error.Message, want) {
						t.Errorf("response %d: %s, want an error starting %q", i, body, want)
					}
				}
				if tc.name == "admin" && string(resps[0].ID) != "7" {
					t.Errorf("error id %s, want the request's 7", resps[0].ID)
				}
			})
		}
	}

	// The deny list is configurable: "none" turns the filter off.
	if _, err := consul.Client.KV().Put(&consulapi.KVPair{Key: "chainwarden/proxy/deny_methods", Value: []byte("none")}, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range proxies {
		p.waitConfig(t, "no deny list", func(conf string) error {
			if strings.Contains(conf, "admin_,") {
				return fmt.Errorf("deny list still there")
			}
			return nil
		})
		// A keep-alive connection the old worker still holds gets one more answer from the old config.
		testenv.Eventually(t, 10*time.Second, p.kind+" admin_peers with the filter off", func() error {
			r, err := call(p.URL+"/"+service, "admin_peers")
			if err != nil {
				return err
			}
			if r.Error != nil {
				return fmt.Errorf("%s", r.Error.Message)
			}
			return nil
		})
	}
}

func TestDefaultService(t *testing.T) {
	consul := testenv.StartConsul(t)
	node := newFakeNode(t, "geth-a")
	register(t, consul, service, "geth-a", "127.0.0.1", node.port(), "passing", nil)
	proxies := startProxies(t, consul, map[string]string{"geth-a": "server"})
	put := func(v string) {
		if _, err := consul.Client.KV().Put(&consulapi.KVPair{Key: "chainwarden/proxy/default_service", Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A default naming no chainwarden service is ignored: "/" stays unrouted, the config valid.
	put("nope")
	for _, p := range proxies {
		p.waitConfig(t, "default nope", func(conf string) error { return nil })
		testenv.Eventually(t, 10*time.Second, p.kind+" / unrouted", func() error {
			return only(responders(t, p.URL+"/", 3), "error: no such chainwarden service; use /<service>")
		})
	}
	put(service)
	for _, p := range proxies {
		testenv.Eventually(t, 20*time.Second, p.kind+" / routed to "+service, func() error {
			return only(responders(t, p.URL+"/", 3), "geth-a")
		})
	}
}

func TestBadRenderNeverReplacesGoodConfig(t *testing.T) {
	consul := testenv.StartConsul(t)
	a, b := newFakeNode(t, "geth-a"), newFakeNode(t, "geth-b")
	register(t, consul, service, "geth-a", "127.0.0.1", a.port(), "passing", nil)
	proxies := startProxies(t, consul, map[string]string{"geth-a": "server"})
	// A node whose metadata makes an invalid config: its WebSocket port is not a number.
	register(t, consul, service, "geth-b", "127.0.0.1", b.port(), "passing", map[string]string{"ws_port": "not-a-port"})
	for _, p := range proxies {
		rejected := filepath.Join(p.Dir, "staging", map[string]string{"nginx": "rejected.conf", "haproxy": "rejected.cfg"}[p.kind])
		testenv.Eventually(t, 30*time.Second, p.kind+" rejects the bad render", func() error {
			if p.CT.Count("rejected the new render") == 0 {
				return fmt.Errorf("no rejection logged yet")
			}
			return nil
		})
		if b, err := os.ReadFile(rejected); err != nil || !strings.Contains(string(b), "not-a-port") {
			t.Errorf("%s: rejected render not kept in %s: %v", p.kind, rejected, err)
		}
		if st := serverState(p.kind, p.liveConfig(t), "geth-b"); st != "absent" {
			t.Errorf("%s: the bad render replaced the live config (geth-b %s)", p.kind, st)
		}
		if p.CT.Proc.Exited() {
			t.Fatalf("%s: consul-template exited after a rejected render", p.kind)
		}
		if err := only(responders(t, p.URL+"/"+service, 10), "geth-a"); err != nil {
			t.Errorf("%s: after the rejected render: %v", p.kind, err)
		}
	}
	// Fixing the data applies the next render.
	register(t, consul, service, "geth-b", "127.0.0.1", b.port(), "passing", map[string]string{"ws_port": fmt.Sprint(b.port())})
	for _, p := range proxies {
		p.waitConfig(t, "geth-b fixed", expectStates(p.kind, map[string]string{"geth-a": "server", "geth-b": "server"}))
		testenv.Eventually(t, 10*time.Second, p.kind+" both serve", func() error {
			return only(responders(t, p.URL+"/"+service, 20), "geth-a", "geth-b")
		})
	}
}

// A node flapping between passing and warning every 200 ms for 9 s (45 changes) reloads each proxy at most once
// per quiescence window (wait max = 3 s in consul-template.hcl), not once per change.
func TestFlappingNodeReloadsOncePerQuiescenceWindow(t *testing.T) {
	const (
		flapFor   = 9 * time.Second
		every     = 200 * time.Millisecond
		waitMax   = 3 * time.Second
		tolerance = 2 // the render that ends the flapping, and the one adding the last node
	)
	consul := testenv.StartConsul(t)
	a, b := newFakeNode(t, "geth-a"), newFakeNode(t, "geth-b")
	register(t, consul, service, "geth-a", "127.0.0.1", a.port(), "passing", nil)
	register(t, consul, service, "geth-b", "127.0.0.1", b.port(), "passing", nil)
	proxies := startProxies(t, consul, map[string]string{"geth-a": "server", "geth-b": "server"})
	before := map[string]int{}
	for _, p := range proxies {
		before[p.kind] = p.reloads()
	}
	changes := 0
	start := time.Now()
	for time.Since(start) < flapFor {
		st := "warning"
		if changes%2 == 1 {
			st = "passing"
		}
		setStatus(t, consul, "geth-b", st)
		changes++
		// The stimulus: a change every 200 ms of real time, since consul-template's quiescence window is real time
		// too. Not a wait for anything.
		time.Sleep(every)
	}
	setStatus(t, consul, "geth-b", "passing")
	// A last change after the flapping: renders apply in order, so once it is live every render the flapping caused
	// has been applied and counted.
	c := newFakeNode(t, "geth-c")
	register(t, consul, service, "geth-c", "127.0.0.1", c.port(), "passing", nil)
	for _, p := range proxies {
		p.waitConfig(t, "settled", expectStates(p.kind, map[string]string{"geth-a": "server", "geth-b": "server", "geth-c": "server"}))
	}
	limit := int(flapFor/waitMax) + 1 + tolerance
	for _, p := range proxies {
		n := p.reloads() - before[p.kind]
		t.Logf("%s: %d status changes in %s, %d reloads (limit %d)", p.kind, changes, flapFor, n, limit)
		if n > limit {
			t.Errorf("%s reloaded %d times for %d changes in %s; want at most %d", p.kind, n, changes, flapFor, limit)
		}
	}
}

// TestWebSocket: a WebSocket upgrade on /<service> reaches a passing node (on its ws_port when the node declares
// one) and carries several calls; a critical node gets none.
func TestWebSocket(t *testing.T) {
	consul := testenv.StartConsul(t)
	a, ws, c := newFakeNode(t, "geth-a"), newFakeNode(t, "geth-a-ws"), newFakeNode(t, "geth-c")
	// geth-a serves HTTP on one port and WebSocket on another (meta ws_port); geth-c is critical.
	register(t, consul, service, "geth-a", "127.0.0.1", a.port(), "passing", map[string]string{"ws_port": fmt.Sprint(ws.port())})
	register(t, consul, service, "geth-c", "127.0.0.1", c.port(), "critical", nil)
	for _, kind := range proxyKinds {
		p := startProxy(t, kind, consul)
		p.waitConfig(t, "geth-a", expectStates(kind, map[string]string{"geth-a": "server", "geth-c": "absent"}))
		url := "ws" + strings.TrimPrefix(p.URL, "http") + "/" + service
		conn, resp, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			t.Fatalf("%s: websocket dial %s: %v (%+v)", kind, url, err, resp)
		}
		for i := 1; i <= 3; i++ {
			if err := conn.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"eth_blockNumber","params":[]}`, i))); err != nil {
				t.Fatalf("%s: write: %v", kind, err)
			}
			var r rpcResponse
			if err := conn.ReadJSON(&r); err != nil {
				t.Fatalf("%s: read: %v", kind, err)
			}
			if string(r.Result) != `"geth-a-ws"` || string(r.ID) != fmt.Sprint(i) {
				t.Errorf("%s: websocket answer %s id %s, want geth-a-ws id %d", kind, r.Result, r.ID, i)
			}
		}
		conn.Close()
		if c.count() != 0 {
			t.Errorf("%s: the critical node got %d requests", kind, c.count())
		}
	}
}

// TestReadsRetriedWritesNotReplayed: a node takes calls and dies without answering. eth_sendRawTransaction that
// reached it is never sent to another node; a read that reached it is sent again to the next node and succeeds.
func TestReadsRetriedWritesNotReplayed(t *testing.T) {
	consul := testenv.StartConsul(t)
	bad, good := newFakeNode(t, "bad"), newFakeNode(t, "good")
	bad.mu.Lock()
	bad.drop = true
	bad.mu.Unlock()
	register(t, consul, service, "bad", "127.0.0.1", bad.port(), "passing", nil)
	register(t, consul, service, "good", "127.0.0.1", good.port(), "passing", nil)
	for _, kind := range proxyKinds {
		p := startProxy(t, kind, consul)
		p.waitConfig(t, "both", expectStates(kind, map[string]string{"bad": "server", "good": "server"}))
		// Writes until one reached the dying node: each must have been delivered exactly once.
		for i := 0; bad.received(kind+"-write-") == 0; i++ {
			if i == 6 {
				t.Fatalf("%s: no write reached the dying node", kind)
			}
			tag := fmt.Sprintf("%s-write-%d", kind, i)
			_, _, _ = post(p.URL+"/"+service, `{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x00"],"tag":"`+tag+`"}`)
			if n := bad.received(tag) + good.received(tag); n != 1 {
				t.Errorf("%s: write %d delivered %d times (dying node %d, good node %d); want exactly once", kind, i, n,
					bad.received(tag), good.received(tag))
			}
		}
		// Reads until one reached the dying node: each must be answered by the good one. nginx stops choosing a
		// failed server for fail_timeout (3 s), so the first reads all go to the good node.
		i := 0
		testenv.Eventually(t, 20*time.Second, kind+" a read reaching the dying node", func() error {
			tag := fmt.Sprintf("%s-read-%d", kind, i)
			i++
			_, body, err := post(p.URL+"/"+service, `{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0x0","latest"],"tag":"`+tag+`"}`)
			if err != nil || !strings.Contains(string(body), `"good"`) {
				t.Errorf("%s: read %s not answered by the good node: %v %s", kind, tag, err, body)
			}
			if bad.received(kind+"-read-") == 0 {
				return fmt.Errorf("%d reads, none reached the dying node", i)
			}
			return nil
		})
	}
}
