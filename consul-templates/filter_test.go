package consultemplates

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// The method filter's fast paths (docs/PROXY.md, "JSON-RPC method filter") must leave it exactly as strict as it
// was: these tests send requests built to slip past it through the deployed configs, check that reads that took a
// fast path are still retried and writes still never replayed, and compare the filters' decisions on thousands of
// generated bodies with the reference (testdata/rpc-filter-reference.js; for HAProxy, rpc-filter.lua itself).

// filterCase is a request and what the filter must do with it, per proxy kind.
type filterCase struct {
	name    string
	body    string
	chunked bool              // sent without Content-Length
	large   bool              // the proxy may answer, and close, before it has read the whole body
	refused string            // "": proxied to the node; else the start of the error message ("*": any refusal)
	per     map[string]string // overrides refused for one proxy kind
}

// send posts tc.body and checks the outcome: refused requests never reach the node and get a JSON-RPC error (or an
// HTTP error status); the others reach it and get its answer.
func (tc filterCase) check(t *testing.T, kind, url string, node *fakeNode) {
	t.Helper()
	want := tc.refused
	if w, ok := tc.per[kind]; ok {
		want = w
	}
	before := node.posts()
	var body io.Reader = strings.NewReader(tc.body)
	if tc.chunked {
		body = io.MultiReader(body) // unknown length: Go sends it chunked
	}
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil && tc.large && want != "" {
		// The proxy refused the request before the client had sent it all (broken pipe, reset).
		if node.posts() != before {
			t.Fatalf("a request that must be refused reached the node (%v)", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	reached := node.posts() != before
	answer := strings.TrimSpace(string(b))
	if len(answer) > 300 {
		answer = answer[:300] + "..."
	}
	if want == "" {
		if !reached || resp.StatusCode != 200 || !strings.Contains(answer, `"result":"geth-a"`) {
			t.Errorf("not proxied: status %d, %s", resp.StatusCode, answer)
		}
		return
	}
	if reached {
		t.Fatalf("a request that must be refused reached the node (status %d, %s)", resp.StatusCode, answer)
	}
	if resp.StatusCode != 200 {
		if want != "*" {
			t.Errorf("status %d (%s), want a JSON-RPC error starting %q", resp.StatusCode, answer, want)
		}
		return
	}
	if !strings.Contains(answer, `"error"`) || (want != "*" && !strings.Contains(answer, `"message":"`+want)) {
		t.Errorf("answer %s, want a JSON-RPC error starting %q", answer, want)
	}
}

// readCall is a call in the shape the fast paths take: the JSON-RPC keys only, a common read.
func readCall(id int) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"eth_getBalance","params":["0x0000000000000000000000000000000000000000","latest"]}`, id)
}

func readBatch(n int, last string) string {
	calls := make([]string, 0, n+1)
	for i := 1; i <= n; i++ {
		calls = append(calls, readCall(i))
	}
	if last != "" {
		calls = append(calls, last)
	}
	return "[" + strings.Join(calls, ",") + "]"
}

func TestMethodFilterStrictness(t *testing.T) {
	consul := testenv.StartConsul(t)
	node := newFakeNode(t, "geth-a")
	register(t, consul, service, "geth-a", "127.0.0.1", node.port(), "passing", nil)
	var proxies []*proxy
	for _, kind := range proxyKinds {
		p := startProxy(t, kind, consul)
		p.waitConfig(t, "geth-a", expectStates(kind, map[string]string{"geth-a": "server"}))
		proxies = append(proxies, p)
	}
	// With the default deny list both templates render the fast paths.
	for _, p := range proxies {
		if err := fastPath(p.kind, p.liveConfig(t)); err != nil {
			t.Fatalf("%s: %v", p.kind, err)
		}
	}

	const notAllowed = "method admin_peers is not allowed"
	spaces := strings.Repeat(" ", 70<<10)
	cases := []filterCase{
		// Refused, however written.
		{name: "escaped method", body: `{"jsonrpc":"2.0","id":1,"method":"\u0061dmin_peers","params":[]}`, refused: notAllowed},
		{name: "escaped underscore", body: `{"jsonrpc":"2.0","id":1,"method":"personal\u005funlockAccount"}`,
			refused: "method personal_unlockAccount is not allowed"},
		{name: "escaped key", body: `{"jsonrpc":"2.0","id":1,"\u006dethod":"admin_peers","params":[]}`, refused: notAllowed},
		{name: "key in mixed case", body: `{"jsonrpc":"2.0","id":1,"Method":"admin_peers"}`, refused: notAllowed},
		{name: "method in upper case", body: `{"jsonrpc":"2.0","id":1,"method":"ADMIN_PEERS"}`,
			refused: "method ADMIN_PEERS is not allowed"},
		{name: "read, then denied under another spelling", body: `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","METHOD":"admin_peers"}`,
			refused: notAllowed},
		{name: "denied, then read under another spelling", body: `{"jsonrpc":"2.0","id":1,"METHOD":"admin_peers","method":"eth_blockNumber"}`,
			refused: notAllowed},
		{name: "same key twice, denied last", body: `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","method":"admin_peers"}`,
			refused: notAllowed},
		{name: "whitespace everywhere", body: "\n\t{ \"jsonrpc\" : \"2.0\" ,\r\n \"id\" : 1 , \"method\"\t:\n\"debug_traceTransaction\" }\n",
			refused: "method debug_traceTransaction is not allowed"},
		{name: "batch of reads, denied last", body: readBatch(20, `{"jsonrpc":"2.0","id":21,"method":"miner_start"}`),
			refused: "batch refused"},
		{name: "batch of reads, denied under an escaped key", body: readBatch(3, `{"jsonrpc":"2.0","id":4,"\u004dETHOD":"admin_peers"}`),
			refused: "batch refused"},
		{name: "batch in whitespace", body: " \n[ " + readCall(1) + " ,\n" + `{"method":"admin_peers"}` + " ]\n", refused: "batch refused"},
		{name: "non-UTF-8 byte next to a denied method", body: "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"admin_peers\",\"x\":\"\xff\"}",
			refused: notAllowed},
		{name: "denied method in a 100 KB body", large: true, body: `{"jsonrpc":"2.0","id":1,"method":"admin_peers","params":["` + strings.Repeat("0", 100<<10) + `"]}`,
			refused: notAllowed, per: map[string]string{"haproxy": "request body too large"}},
		{name: "over 2 MB", large: true, body: `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":["` + strings.Repeat("0", 3<<20) + `"]}`,
			refused: "*", per: map[string]string{"haproxy": "request body too large"}},
		{name: "chunked denied method", body: `{"jsonrpc":"2.0","id":1,"method":"admin_peers"}`, chunked: true, refused: notAllowed},
		{name: "not JSON: truncated read", body: `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"`, refused: "parse error"},
		{name: "not JSON: a read, then a denied call", body: `{"method":"eth_blockNumber"}{"method":"admin_peers"}`, refused: "parse error"},
		{name: "not JSON: trailing comma", body: `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber",}`, refused: "parse error"},
		// lua-cjson takes raw control characters in strings (geth does not); JSON.parse does not.
		{name: "not JSON: raw tab in a string", body: "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_block\tNumber\"}", refused: "parse error",
			per: map[string]string{"haproxy": ""}},
		{name: "not JSON: empty", body: ``, refused: "parse error"},
		{name: "not JSON: a read after a form feed (not JSON whitespace)", body: "\f" + readCall(1), refused: "parse error"},
		// nginx's fast path matches whole bodies with a pattern: these are far longer than what a backtracking match
		// could keep on its stack, and must be decided as the short ones (HAProxy refuses them for their size).
		{name: "batch of 10,000 reads, denied last (1.1 MB)", large: true, body: readBatch(10000, `{"jsonrpc":"2.0","id":10001,"method":"admin_peers"}`),
			refused: "batch refused", per: map[string]string{"haproxy": "request body too large"}},
		{name: "batch of 10,000 reads, denied under an escape last (1.1 MB)", large: true,
			body:    readBatch(10000, `{"jsonrpc":"2.0","id":10001,"method":"\u0061dmin_peers"}`),
			refused: "batch refused", per: map[string]string{"haproxy": "request body too large"}},

		// Proxied.
		{name: "read", body: readCall(1)},
		{name: "read, METHOD key", body: `{"jsonrpc":"2.0","id":1,"METHOD":"eth_blockNumber"}`},
		{name: "read with a denied name inside its params", body: `{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"method":"admin_peers","data":"admin_"},"latest"]}`},
		{name: "same key twice, read last (geth reads the last too)", body: `{"jsonrpc":"2.0","id":1,"method":"admin_peers","method":"eth_blockNumber"}`},
		{name: "batch of reads", body: readBatch(20, "")},
		{name: "batch of 10,000 reads (1.1 MB)", large: true, body: readBatch(10000, ""), per: map[string]string{"haproxy": "request body too large"}},
		{name: "read, method with an escape", body: `{"jsonrpc":"2.0","id":1,"method":"eth_blockN\u0075mber","params":[]}`},
		{name: "read, params nested 12 deep", body: `{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[[[[[[[[[[[[1]]]]]]]]]]]]}`},
		{name: "read in whitespace", body: "\r\n\t " + `{ "jsonrpc" : "2.0" , "id" : 1 , "method" : "eth_blockNumber" , "params" : [ ] }` + " \n"},
		{name: "chunked read", body: readCall(1), chunked: true},
		{name: "write", body: `{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x00"]}`},
		// HAProxy's fast path must not take a body it has not got whole: this one is more than its buffer.
		{name: "read padded past HAProxy's buffer", large: true, body: readCall(1) + spaces, per: map[string]string{"haproxy": "request body too large"}},
	}
	for _, p := range proxies {
		for _, tc := range cases {
			t.Run(p.kind+"/"+tc.name, func(t *testing.T) { tc.check(t, p.kind, p.URL+"/"+service, node) })
		}
		// A pattern match that failed (its stack exhausted, say) is only a slower path, but nginx logs the whole
		// body with it: there must be none.
		if p.Nginx != nil {
			if l := p.Nginx.ErrorLog(1 << 20); strings.Contains(l, "pcre2_match() failed") {
				t.Errorf("nginx could not match a body with the fast path's pattern:\n%.2000s", l)
			}
		}
	}

	// A deny list that can match reads: the fast paths step aside, and a common read is refused like any method.
	if _, err := consul.Client.KV().Put(&consulapi.KVPair{Key: "chainwarden/proxy/deny_methods", Value: []byte("eth_getBalance,Admin_")}, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range proxies {
		p.waitConfig(t, "deny list with a read", func(conf string) error {
			if !strings.Contains(conf, "eth_getBalance,Admin_") {
				return fmt.Errorf("new deny list not rendered yet")
			}
			if fastPath(p.kind, conf) == nil {
				return fmt.Errorf("the fast path is still rendered")
			}
			return nil
		})
		for _, tc := range []filterCase{
			{name: "denied read", body: readCall(1), refused: "method eth_getBalance is not allowed"},
			{name: "denied read in a batch", body: `[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},` + readCall(2) + `]`, refused: "batch refused"},
			{name: "other read", body: `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`},
			{name: "admin, upper case", body: `{"jsonrpc":"2.0","id":1,"method":"ADMIN_peers"}`, refused: "method ADMIN_peers is not allowed"},
			{name: "debug, no longer denied", body: `{"jsonrpc":"2.0","id":1,"method":"debug_traceTransaction"}`},
		} {
			// The old worker may answer one more request on a kept-alive connection: retry until the new config
			// does, then check.
			t.Run(p.kind+"/custom deny list/"+tc.name, func(t *testing.T) {
				testenv.Eventually(t, 10*time.Second, "new deny list in force", func() error {
					r, err := call(p.URL+"/"+service, "eth_getBalance", "0x0", "latest")
					if err != nil {
						return err
					}
					if r.Error == nil {
						return fmt.Errorf("eth_getBalance still passes")
					}
					return nil
				})
				tc.check(t, p.kind, p.URL+"/"+service, node)
			})
		}
	}
}

// fastPath returns nil when a rendered config has the filter's fast path on.
func fastPath(kind, conf string) error {
	switch kind {
	case "nginx":
		if !strings.Contains(conf, `set $cw_deny_spares_reads "1";`) {
			return fmt.Errorf("$cw_deny_spares_reads is not 1")
		}
		if !regexp.MustCompile(`(?m)^map \$request_body \$cw_body_reads_only \{\n    default "";\n    '~`).MatchString(conf) {
			return fmt.Errorf("no pattern in the $cw_body_reads_only map")
		}
	case "haproxy":
		if !strings.Contains(conf, "http-request lua.cw_rpc_filter unless METH_POST cw_body_len_known cw_body_whole cw_reads_only") {
			return fmt.Errorf("no fast path in front of the Lua filter")
		}
	}
	return nil
}

// TestMethodFilterFastPathRetries: reads that take the fast path are still sent again to the next node when the
// first dies with them, and writes in the same shape are still delivered exactly once.
func TestMethodFilterFastPathRetries(t *testing.T) {
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
		if err := fastPath(kind, p.liveConfig(t)); err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		// The id tags each call: an extra key would take it off the fast path.
		for i := 0; bad.received(`"`+kind+`-write-`) == 0; i++ {
			if i == 6 {
				t.Fatalf("%s: no write reached the dying node", kind)
			}
			tag := fmt.Sprintf(`"%s-write-%d"`, kind, i)
			_, _, _ = post(p.URL+"/"+service, `{"jsonrpc":"2.0","id":`+tag+`,"method":"eth_sendRawTransaction","params":["0x00"]}`)
			if n := bad.received(tag) + good.received(tag); n != 1 {
				t.Errorf("%s: write %d delivered %d times; want exactly once", kind, i, n)
			}
		}
		// nginx skips a failed server for fail_timeout (3 s): wait it out so that reads reach it again.
		time.Sleep(4500 * time.Millisecond)
		for i := 0; bad.received(`"`+kind+`-read-`) == 0; i++ {
			if i == 30 {
				t.Fatalf("%s: no read reached the dying node", kind)
			}
			tag := fmt.Sprintf(`"%s-read-%d"`, kind, i)
			_, body, err := post(p.URL+"/"+service, `{"jsonrpc":"2.0","id":`+tag+`,"method":"eth_getBalance","params":["0x0","latest"]}`)
			if err != nil || !strings.Contains(string(body), `"good"`) {
				t.Errorf("%s: read %d not answered by the good node: %v %s", kind, i, err, body)
			}
		}
	}
}

// copyFile copies src into dir.
func copyFile(t *testing.T, src, dir string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(src)), b, 0o600); err != nil {
		t.Fatal(err)
	}
}
