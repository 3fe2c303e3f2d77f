package consultemplates

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// TestMethodFilterAgreesWithReference sends thousands of bodies, hand-picked and generated, to
//   - nginx running both the deployed rpc-filter.js, behind the fast-path maps of a config rendered from the
//     template, and the reference (testdata/rpc-filter-reference.js, the filter before its fast paths) on each
//     request: their routes and answers must be identical, for several deny lists;
//   - HAProxy running the deployed rpc-filter.lua on each request next to the fast-path ACLs of a config rendered
//     from the template: whenever the ACLs let a body skip Lua, Lua must have found it a read it lets through.
func TestMethodFilterAgreesWithReference(t *testing.T) {
	bodies := filterCorpus(rand.New(rand.NewPCG(16, 2026)), 2500)

	t.Run("nginx", func(t *testing.T) {
		consul := testenv.StartConsul(t)
		register(t, consul, service, "geth-a", "127.0.0.1", 9, "passing", nil)
		p := startProxy(t, "nginx", consul)
		p.waitConfig(t, "geth-a", expectStates("nginx", map[string]string{"geth-a": "server"}))
		maps := regexp.MustCompile(`(?ms)^map \$request_body \$cw_body_reads_only \{\n.*?^\}\n|^map "\$request_method:\$http_upgrade" \$cw_fast_read \{\n.*?^\}\n`).
			FindAllString(p.liveConfig(t), -1)
		if len(maps) != 2 || !strings.Contains(maps[0], "'~") {
			t.Fatalf("found %d fast-path maps in the rendered config, want 2, the first with a pattern:\n%s", len(maps), strings.Join(maps, ""))
		}
		dir := filepath.Join(t.TempDir(), "nginx")
		copyDir(t, "nginx", dir)
		copyFile(t, filepath.Join("testdata", "rpc-filter-reference.js"), dir)
		copyFile(t, filepath.Join("testdata", "filter-compare.js"), dir)
		port := testenv.FreePort(t)
		conf := fmt.Sprintf("js_import compare from filter-compare.js;\nclient_max_body_size 2m;\nclient_body_buffer_size 2m;\n%s"+
			"server {\n    listen 127.0.0.1:%d;\n    set $cw_service \"svc\";\n    location / {\n        js_content compare.compare;\n    }\n}\n",
			strings.Join(maps, ""), port)
		if err := os.WriteFile(filepath.Join(dir, "rpc-proxy.conf"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		n := testenv.StartNginx(t, testenv.NginxPrefix(t), filepath.Join(dir, "nginx.conf"))
		// The deny lists the template can render, with $cw_deny_spares_reads as it renders it (checked by
		// TestMethodFilterStrictness), plus the default list with the fast path switched off.
		for _, deny := range []struct{ list, spares string }{
			{"admin_,debug_,personal_,miner_", "1"},
			{"admin_,debug_,personal_,miner_", ""},
			{"", "1"},
			{"eth_getBalance,Admin_,NET_", ""},
			{"eth_,web3_", ""},
		} {
			u := fmt.Sprintf("http://127.0.0.1:%d/?deny=%s&spares=%s", port, url.QueryEscape(deny.list), deny.spares)
			outcomes := map[string]int{}
			differ, fast := 0, 0
			for _, body := range bodies {
				status, b, err := post(u, body)
				if err != nil || status != 200 {
					t.Fatalf("harness: status %d, %v: %s\n%s", status, err, b, n.ErrorLog(10))
				}
				var got struct {
					Current, Reference json.RawMessage
					Fast               string
				}
				if err := json.Unmarshal(b, &got); err != nil {
					t.Fatalf("harness answer %s: %v", b, err)
				}
				if got.Fast != "" {
					fast++
				}
				if string(got.Current) != string(got.Reference) {
					if differ++; differ <= 10 {
						t.Errorf("deny %q spares %q: body %q\n  filter:    %s\n  reference: %s", deny.list, deny.spares, body, got.Current, got.Reference)
					}
				}
				outcomes[outcome(got.Current)]++
			}
			t.Logf("deny %q spares %q: %d bodies (%v), %d decided differently; nginx's fast path took %d", deny.list, deny.spares,
				len(bodies), outcomes, differ, fast)
			if deny.spares == "1" && fast < len(bodies)/10 {
				t.Errorf("nginx's fast path took only %d of %d bodies: the corpus does not exercise it", fast, len(bodies))
			}
			if deny.spares == "" && fast != 0 {
				t.Errorf("nginx's fast path took %d bodies while off", fast)
			}
		}
	})

	t.Run("haproxy", func(t *testing.T) {
		consul := testenv.StartConsul(t)
		register(t, consul, service, "geth-a", "127.0.0.1", 9, "passing", nil)
		p := startProxy(t, "haproxy", consul)
		p.waitConfig(t, "geth-a", expectStates("haproxy", map[string]string{"geth-a": "server"}))
		acls := regexp.MustCompile(`(?m)^    (http-request set-var\(txn\.cw_body_len\).*|acl cw_(body_len_known|body_whole|reads_only) .*)$`).
			FindAllString(p.liveConfig(t), -1)
		if len(acls) != 4 {
			t.Fatalf("found %d fast-path lines in the rendered config, want 4:\n%s", len(acls), strings.Join(acls, "\n"))
		}
		dir := filepath.Join(t.TempDir(), "haproxy")
		copyDir(t, "haproxy", dir)
		port := testenv.FreePort(t)
		conf := fmt.Sprintf("frontend compare\n    bind 127.0.0.1:%d\n"+
			"    http-request set-var-fmt(txn.cw_deny) \"admin_,debug_,personal_,miner_\"\n%s\n"+
			"    http-request set-var(txn.cw_fast) bool(true) if METH_POST cw_body_len_known cw_body_whole cw_reads_only\n"+
			"    http-request lua.cw_rpc_filter\n"+
			"    http-request return status 200 content-type text/plain hdr x-fast \"%%[var(txn.cw_fast)]\" hdr x-write \"%%[var(txn.cw_write)]\" lf-string \"%%[var(txn.cw_reply)]\"\n",
			port, strings.Join(acls, "\n"))
		if err := os.WriteFile(filepath.Join(dir, "compare.cfg"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		testenv.StartHAProxy(t, dir, filepath.Join(dir, "haproxy.pid"), "haproxy.cfg", "compare.cfg")
		u := fmt.Sprintf("http://127.0.0.1:%d/", port)
		testenv.WaitHTTP(t, nil, u, 20*time.Second)
		fast, reads, wrong := 0, 0, 0
		for _, body := range bodies {
			resp, err := httpClient.Post(u, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			reply := readAll(t, resp)
			read := resp.Header.Get("x-write") == "0" && reply == ""
			if read {
				reads++
			}
			if resp.Header.Get("x-fast") != "1" {
				continue
			}
			fast++
			if !read {
				if wrong++; wrong <= 10 {
					t.Errorf("the fast path took a body the Lua filter does not let through as a read: %q (write %q, reply %s)",
						body, resp.Header.Get("x-write"), reply)
				}
			}
		}
		t.Logf("%d bodies: the Lua filter let %d through as reads, the fast path took %d of them, %d it should not have", len(bodies), reads, fast, wrong)
		if fast < len(bodies)/10 {
			t.Errorf("the fast path took only %d of %d bodies: the corpus does not exercise it", fast, len(bodies))
		}
	})
}

// outcome names what the harness says a filter did.
func outcome(record json.RawMessage) string {
	s := string(record)
	for _, o := range []string{"_read", "_write", "not allowed", "parse error", "too large"} {
		if strings.Contains(s, o) {
			return strings.Trim(o, "_")
		}
	}
	return s
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// filterCorpus returns hand-picked bodies and n generated ones: JSON-RPC calls and batches whose method keys come in
// every letter case and escape, with methods that are reads, writes, denied, escaped, non-strings; duplicate keys;
// nesting around the fast path's depth limit; JSON whitespace and not-quite-whitespace; broken numbers, literals and
// strings; invalid UTF-8; and random corruption of all that.
func filterCorpus(r *rand.Rand, n int) []string {
	bodies := []string{
		``, ` `, `{}`, `[]`, `[[]]`, `null`, `1`, `"eth_call"`, `true`, `{"method":"eth_call"}`, `[{"method":"eth_call"}]`,
		`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`,
		`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}` + strings.Repeat(" ", 70<<10),
		`{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["` + strings.Repeat("ab", 40<<10) + `"]}`,
		`{"method":"eth_call\n"}`, `{"method":"eth_call\u000a"}`, `{"method":"eth_getBlock_ByNumber"}`, `{"method":"eth_get1"}`,
		`{"method":"net_"}`, `{"method":"eth_get"}`, `{"method":"web3_sha3 "}`, `{"method":" admin_peers"}`, `{"method":"admin"}`,
		`{"__proto__":{"method":"admin_peers"},"method":"eth_call"}`, `{"constructor":1,"method":"eth_call"}`,
		`{"method":"eth_call","params":[[[[[[[[[1]]]]]]]]]}`, `{"method":"eth_call","params":[[[[[[[[1]]]]]]]]}`,
		`{"method":"eth_call","id":NaN}`, `{"method":"eth_call","id":Infinity}`, `{"method":"eth_call","id":0x10}`,
		`{"method":"eth_call","id":01}`, `{"method":"eth_call","id":1.}`, `{"method":"eth_call","id":-0}`, `{"method":"eth_call","id":1e400}`,
		"{\"method\":\"eth_call\"}\x00", "\xef\xbb\xbf{\"method\":\"eth_call\"}", "{\"method\":\"eth_call\"}\v", "\f{\"method\":\"eth_call\"}",
		`{"method":"eth_call","id":"a\"}`, `{"method":"eth_call","id":"\"","method":"admin_peers"}`, `{"id":"\\","method":"eth_call"}`,
		`{"method":"eth_call","params":["\"],\"method\":\"admin_peers"]}`, `[{"method":"eth_call"},{"method":"eth_call","x":"\\"}]`,
		"{\"method\":\"admın_peers\"}", "{\"method\":\"ADMİN_peers\"}", "{\"\u212aey\":1,\"method\":\"eth_call\"}", "{\"method\":\"eth_c\xc3\xa4ll\"}",
	}
	for len(bodies) < n {
		bodies = append(bodies, genBody(r))
	}
	return bodies
}

// genBody makes one body: mostly JSON-RPC-shaped, sometimes corrupted.
func genBody(r *rand.Rand) string {
	var b strings.Builder
	g := &bodyGen{r: r, b: &b, clean: r.IntN(3) == 0}
	switch x := r.IntN(10); {
	case x < 6:
		g.call()
	case x < 9:
		g.ws()
		b.WriteString("[")
		for i, k := 0, r.IntN(5); i < k; i++ {
			if i > 0 {
				g.comma()
			}
			if r.IntN(8) == 0 {
				g.value(2)
			} else {
				g.call()
			}
		}
		g.ws()
		b.WriteString("]")
	default:
		g.value(3)
	}
	g.ws()
	s := b.String()
	if !g.clean && r.IntN(4) == 0 {
		s = corrupt(r, s)
	}
	return s
}

type bodyGen struct {
	r     *rand.Rand
	b     *strings.Builder
	clean bool // only what the fast paths take: plain JSON, method keys without escapes, reads
}

func (g *bodyGen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }

// ws writes JSON whitespace, mostly none; rarely something JSON does not count as whitespace.
func (g *bodyGen) ws() {
	switch g.r.IntN(12) {
	case 0:
		g.b.WriteString(g.pick(" ", "\n", "\t", "\r\n", "  \t"))
	case 1:
		g.b.WriteString(g.pick(" ", "\n "))
	case 2:
		if !g.clean && g.r.IntN(10) == 0 {
			g.b.WriteString(g.pick("\v", "\f", "\u00a0", "\x00"))
		}
	}
}

func (g *bodyGen) comma() { g.ws(); g.b.WriteString(","); g.ws() }

// call writes an object with a method key most of the time, JSON-RPC's other keys, sometimes others and duplicates.
func (g *bodyGen) call() {
	type member struct{ key, value string }
	var ms []member
	// sub returns what f writes.
	sub := func(f func()) string {
		var b strings.Builder
		old := g.b
		g.b = &b
		f()
		g.b = old
		return b.String()
	}
	if g.r.IntN(10) < 9 {
		ms = append(ms, member{g.methodKey(), sub(g.method)})
	}
	if g.r.IntN(6) == 0 && !g.clean {
		ms = append(ms, member{g.methodKey(), sub(g.method)})
	}
	if g.r.IntN(5) < 4 {
		ms = append(ms, member{`"jsonrpc"`, `"2.0"`})
	}
	if g.r.IntN(5) < 4 {
		ms = append(ms, member{`"id"`, sub(func() { g.value(1) })})
	}
	if g.r.IntN(4) < 3 {
		ms = append(ms, member{`"params"`, sub(func() { g.array(g.r.IntN(10)) })})
	}
	if g.r.IntN(8) == 0 {
		ms = append(ms, member{g.pick(`"tag"`, `"__proto__"`, `"constructor"`, `""`, `"methods"`, `"Params"`, `"ID"`), sub(func() { g.value(2) })})
	}
	g.r.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
	g.ws()
	g.b.WriteString("{")
	for i, m := range ms {
		if i > 0 {
			g.comma()
		}
		g.ws()
		g.b.WriteString(m.key)
		g.ws()
		g.b.WriteString(":")
		g.ws()
		g.b.WriteString(m.value)
	}
	g.ws()
	g.b.WriteString("}")
}

func (g *bodyGen) methodKey() string {
	if g.r.IntN(3) > 0 {
		return `"method"`
	}
	if g.clean {
		return g.pick(`"METHOD"`, `"Method"`, `"mEtHoD"`)
	}
	return g.pick(`"METHOD"`, `"Method"`, `"mEtHoD"`, `"\u006dethod"`, `"m\u0065thod"`, `"\u004DETHOD"`, `"method "`,
		`"méthod"`, `"metho"`, `"\u212aethod"`, "\"meth\xffod\"")
}

// method writes a method value.
func (g *bodyGen) method() {
	x := g.r.IntN(10)
	if g.clean {
		x = g.r.IntN(5)
	}
	switch x {
	case 0, 1, 2, 3:
		g.b.WriteString(g.pick(`"eth_blockNumber"`, `"eth_call"`, `"eth_getBalance"`, `"eth_getLogs"`, `"eth_chainId"`,
			`"net_version"`, `"web3_clientVersion"`, `"eth_getProof"`, `"eth_getFooBar"`, `"net_peerCount"`, `"web3_sha3"`,
			`"eth_syncing"`, `"eth_feeHistory"`, `"eth_get_1"`, `"net_x2"`, `"eth_getBlock_ByNumber"`))
	case 4, 5:
		g.b.WriteString(g.pick(`"eth_sendRawTransaction"`, `"eth_sendTransaction"`, `"eth_sign"`, `"eth_subscribe"`,
			`"foo"`, `""`, `"Eth_call"`, `"ETH_BLOCKNUMBER"`, `"eth_blocknumber"`, `"eth_call "`, `" eth_call"`, `"eth_call\n"`,
			`"eth_call\u0000"`, `"eth_c\u0061ll"`, `"net_\t"`))
	case 6, 7:
		g.b.WriteString(g.pick(`"admin_peers"`, `"debug_traceTransaction"`, `"personal_unlockAccount"`, `"miner_start"`,
			`"ADMIN_peers"`, `"Admin_addPeer"`, `"aDmIn_x"`, `"admin_"`, `"admin"`, `"\u0061dmin_peers"`, `"admin\u005fpeers"`,
			`"\u0041DMIN_peers"`, `"Debug_x"`, `"MINER_"`, `"personal"`, `"admın_peers"`, "\"admin_\xff\""))
	case 8:
		g.b.WriteString(g.pick(`1`, `null`, `true`, `[]`, `["admin_peers"]`, `{"method":"admin_peers"}`, `-0`, `"\ud800"`))
	default:
		g.b.WriteString(`"` + g.pick("eth_", "net_", "web3_", "admin_", "", "eth_get", "Net_") + g.pick("blockNumber", "x", "getBalance", "", "1", "_", "Peers") + `"`)
	}
}

// value writes any JSON value, nested at most depth deep, with the odd invalid token.
func (g *bodyGen) value(depth int) {
	x := g.r.IntN(12)
	switch {
	case depth > 0 && x < 2:
		g.array(depth - 1)
	case depth > 0 && x < 4:
		g.b.WriteString("{")
		for i, k := 0, g.r.IntN(3); i < k; i++ {
			if i > 0 {
				g.comma()
			}
			if g.clean {
				g.b.WriteString(g.pick(`"to"`, `"data"`, `"method"`, `"topics"`))
			} else {
				g.b.WriteString(g.pick(`"to"`, `"data"`, `"method"`, `"topics"`, `"a\"b"`, `"\u0041"`))
			}
			g.ws()
			g.b.WriteString(":")
			g.ws()
			g.value(depth - 1)
		}
		g.b.WriteString("}")
	case !g.clean && x == 4:
		// Not JSON, or not as JSON.parse and lua-cjson agree.
		g.b.WriteString(g.pick(`01`, `1.`, `.5`, `+1`, `0x1`, `NaN`, `-`, `Infinity`, `True`, `nul`, `undefined`, "\"raw\ttab\"", `'x'`))
	case x < 7 && g.clean:
		g.b.WriteString(g.pick(`"0x0000000000000000000000000000000000000000"`, `"latest"`, `"0x1b4"`, `""`, `"admin_peers"`, `"{[:,]}"`))
	case x < 7:
		g.b.WriteString(g.pick(`"0x0000000000000000000000000000000000000000"`, `"latest"`, `"0x1b4"`, `""`, `"a\"b"`, `"\\"`,
			`"\u00e9"`, `"é"`, `"tab\there"`, `"\/"`, `"admin_peers"`, `"\ud800"`))
	case x < 10:
		g.b.WriteString(g.pick(`0`, `1`, `-1`, `1.5`, `1e3`, `-0.0E+2`, `123456789012345678901234567890`, `1e400`))
	default:
		g.b.WriteString(g.pick(`true`, `false`, `null`))
	}
}

// array writes an array of up to 3 values, each nested at most depth deep.
func (g *bodyGen) array(depth int) {
	g.b.WriteString("[")
	for i, k := 0, g.r.IntN(4); i < k; i++ {
		if i > 0 {
			g.comma()
		}
		g.value(depth)
	}
	if !g.clean && g.r.IntN(40) == 0 {
		g.b.WriteString(",")
	}
	g.b.WriteString("]")
}

// corrupt deletes, inserts or duplicates a few bytes, or cuts the body short.
func corrupt(r *rand.Rand, s string) string {
	if s == "" {
		return "{"
	}
	i := r.IntN(len(s))
	switch r.IntN(4) {
	case 0:
		return s[:i]
	case 1:
		return s[:i] + s[min(len(s), i+1+r.IntN(3)):]
	case 2:
		ins := []string{"{", "}", "[", "]", `"`, ",", ":", `\`, "\x00", "\xff", "\n", "a", "0", " "}
		return s[:i] + ins[r.IntN(len(ins))] + s[i:]
	default:
		j := min(len(s), i+1+r.IntN(8))
		return s[:j] + s[i:j] + s[j:]
	}
}
