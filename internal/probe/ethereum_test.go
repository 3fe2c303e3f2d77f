package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// A synced mainnet geth, as it answers each call: the JSON member that follows "id" in its response.
var gethMembers = map[string]string{
	"eth_blockNumber": `"result":"0x12a05f3"`,
	"eth_syncing":     `"result":false`,
	"net_peerCount":   `"result":"0x2f"`,
	"eth_chainId":     `"result":"0x1"`,
	"eth_getBlockByNumber": `"result":{"baseFeePerGas":"0x4a817c800","blobGasUsed":"0x0","difficulty":"0x0",` +
		`"excessBlobGas":"0x0","extraData":"0x6265617665726275696c642e6f7267","gasLimit":"0x1c9c380",` +
		`"gasUsed":"0xf4a5b2","hash":"0x4cbaa9d3b12ea9a2b8f1c7e5c5d1e6a1f0a3d2c9b8e7f6a5d4c3b2a1f0e9d8c7",` +
		`"logsBloom":"0x` + strings.Repeat("00", 256) + `","miner":"0x95222290dd7278aa3ddd389cc1e1d165cc4bafe5",` +
		`"mixHash":"0x6f3c1e2d","nonce":"0x0000000000000000","number":"0x12a05f3",` +
		`"parentHash":"0x1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff001",` +
		`"receiptsRoot":"0x0","sha3Uncles":"0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",` +
		`"size":"0x1d2a3","stateRoot":"0x0","timestamp":"0x65f2a4c7","totalDifficulty":"0xc70d815d562d3cfa955",` +
		`"transactions":["0x1111111111111111111111111111111111111111111111111111111111111111",` +
		`"0x2222222222222222222222222222222222222222222222222222222222222222"],` +
		`"transactionsRoot":"0x0","uncles":[],"withdrawals":[],"withdrawalsRoot":"0x0"}`,
	"web3_clientVersion": `"result":"Geth/v1.13.15-stable-c5ba367e/linux-amd64/go1.21.6"`,
	// eth_getBlockByNumber("finalized", false): answered under this key (the method and its tag).
	"eth_getBlockByNumber/finalized": `"result":{"baseFeePerGas":"0x4a817c800","difficulty":"0x0",` +
		`"hash":"0x9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9","number":"0x12a05b1",` +
		`"parentHash":"0x1111111111111111111111111111111111111111111111111111111111111111","timestamp":"0x65f2a2d7",` +
		`"transactions":["0x3333333333333333333333333333333333333333333333333333333333333333"]}`,
	"eth_getBlockByNumber/safe": `"result":{"baseFeePerGas":"0x4a817c800","difficulty":"0x0",` +
		`"hash":"0x5a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9","number":"0x12a05d1",` +
		`"parentHash":"0x1111111111111111111111111111111111111111111111111111111111111111","timestamp":"0x65f2a2d7",` +
		`"transactions":["0x3333333333333333333333333333333333333333333333333333333333333333"]}`,
}

// Hashes of the latest and finalized blocks in gethMembers.
const (
	gethLatestHash    = "0x4cbaa9d3b12ea9a2b8f1c7e5c5d1e6a1f0a3d2c9b8e7f6a5d4c3b2a1f0e9d8c7"
	gethParentHash    = "0x1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff001"
	gethFinalizedHash = "0x9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"
)

// ethNode is a fake execution client speaking JSON-RPC 2.0 over HTTP: it decodes the batch the client sends and
// answers each call, by id, with members[method] (a "result" or an "error" member); eth_getBlockByNumber for a
// tag or number other than "latest" with members["eth_getBlockByNumber/TAG"] (null when there is none).
type ethNode struct {
	t       testing.TB
	members map[string]string
	drop    string // a method whose answer is left out of the batch
}

func newEthNode(t testing.TB, override map[string]string) *ethNode {
	m := maps.Clone(gethMembers)
	maps.Copy(m, override)
	return &ethNode{t: t, members: m}
}

func (n *ethNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var reqs []struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Method  string          `json:"method"`
		Params  json.RawMessage `json:"params"`
	}
	if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		http.Error(w, "want a JSON POST", http.StatusUnsupportedMediaType)
		return
	}
	if err := json.NewDecoder(r.Body).Decode(&reqs); err != nil {
		http.Error(w, "want a batch: "+err.Error(), http.StatusBadRequest)
		return
	}
	var out bytes.Buffer
	out.WriteByte('[')
	for i, q := range reqs {
		if q.JSONRPC != "2.0" {
			n.t.Errorf("request %d: jsonrpc %q", i, q.JSONRPC)
		}
		method := q.Method
		if method == "eth_getBlockByNumber" && string(q.Params) != `["latest",false]` {
			var args []any
			if err := json.Unmarshal(q.Params, &args); err != nil || len(args) != 2 || args[1] != false {
				n.t.Errorf("eth_getBlockByNumber params %s, want [tag or number, false]", q.Params)
			}
			tag, _ := args[0].(string)
			method += "/" + tag
		}
		if method == n.drop {
			continue
		}
		member, ok := n.members[method]
		if !ok && strings.HasPrefix(method, "eth_getBlockByNumber/") {
			member, ok = `"result":null`, true
		}
		if !ok {
			member = `"error":{"code":-32601,"message":"the method ` + q.Method + ` does not exist/is not available"}`
		}
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		out.WriteString(`{"jsonrpc":"2.0","id":` + string(q.ID) + `,` + member + `}`)
	}
	out.WriteByte(']')
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out.Bytes())
}

func TestEthereumProbe(t *testing.T) {
	blockTime := time.Unix(0x65f2a4c7, 0)
	cases := []struct {
		name     string
		override map[string]string
		drop     string
		handler  http.HandlerFunc // replaces the fake node entirely
		check    func(t *testing.T, r Result)
	}{
		{name: "healthy geth", check: func(t *testing.T, r Result) {
			noErr(t, r)
			want := Result{Height: 19531251, BlockTime: blockTime, Peers: 47, Syncing: false, ChainID: "1",
				Client: "geth", Version: "Geth/v1.13.15-stable-c5ba367e/linux-amd64/go1.21.6", HasHeight: true}
			r.Duration = 0
			if !r.BlockTime.Equal(want.BlockTime) {
				t.Errorf("BlockTime %v, want %v", r.BlockTime, want.BlockTime)
			}
			r.BlockTime = want.BlockTime
			if !equalResult(r, want) {
				t.Errorf("got  %+v\nwant %+v", r, want)
			}
			if r.Hash.String() != gethLatestHash || r.ParentHash.String() != gethParentHash {
				t.Errorf("hash %s parent %s", r.Hash, r.ParentHash)
			}
			if r.HasFinalized {
				t.Error("finalized block reported though the target did not ask for it")
			}
		}},
		{name: "nethermind client name", override: map[string]string{
			"web3_clientVersion": `"result":"Nethermind/v1.25.4+20b10b35/linux-x64/dotnet8.0.2"`,
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Client != "nethermind" || r.Version != "Nethermind/v1.25.4+20b10b35/linux-x64/dotnet8.0.2" {
				t.Errorf("client %q version %q", r.Client, r.Version)
			}
		}},
		{name: "malformed hex chain id", override: map[string]string{"eth_chainId": `"result":"1"`},
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "eth_chainId", `quantity "1": a hex string without 0x prefix`)
			}},
		{name: "malformed hex height", override: map[string]string{"eth_blockNumber": `"result":"0xzz"`},
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "eth_blockNumber", `quantity "0xzz" is not a hex number`)
			}},
		{name: "null height", override: map[string]string{"eth_blockNumber": `"result":null`},
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "eth_blockNumber", "null")
			}},
		{name: "null peer count", override: map[string]string{"net_peerCount": `"result":null`},
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "net_peerCount", "null")
			}},
		{name: "null chain id", override: map[string]string{"eth_chainId": `"result":null`},
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "eth_chainId", "null")
			}},
		{name: "height is a fraction", override: map[string]string{"eth_blockNumber": `"result":12.5`},
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "eth_blockNumber", "quantity 12.5 is not a whole number")
			}},
		{name: "negative peer count", override: map[string]string{"net_peerCount": `"result":-1`},
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "net_peerCount", "quantity -1 is negative") }},
		{name: "height beyond 64 bits", override: map[string]string{"eth_blockNumber": `"result":"0x10000000000000000"`},
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "eth_blockNumber", "does not fit in 64 bits") }},
		// IRITA v4.0.0's Ethermint JSON-RPC, as a real node answered: net_peerCount a JSON number, and a
		// web3_clientVersion without a slash, over two lines.
		{name: "ethermint (IRITA): quantities as JSON numbers, clientVersion without a name", override: map[string]string{
			"net_peerCount":      `"result":1`,
			"eth_blockNumber":    `"result":19531251`,
			"eth_chainId":        `"result":"0x4c7"`,
			"web3_clientVersion": `"result":"Version dev ()\nCompiled at  using Go go1.26.8 (amd64)"`,
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Peers != 1 || r.Height != 19531251 || r.ChainID != "1223" {
				t.Errorf("peers %d height %d chain %q", r.Peers, r.Height, r.ChainID)
			}
			if r.Client != "" || r.Version != "Version dev ()" {
				t.Errorf("client %q version %q: want no client name and the first line as the version", r.Client, r.Version)
			}
		}},
		{name: "json-rpc error object", override: map[string]string{
			"net_peerCount": `"error":{"code":-32601,"message":"the method net_peerCount does not exist/is not available"}`,
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "net_peerCount: json-rpc error -32601: the method net_peerCount does not exist")
			if r.HasHeight {
				t.Error("a failed probe must not claim a height")
			}
		}},
		{name: "two calls fail, both are named", override: map[string]string{
			"eth_chainId": `"result":"0x"`,
			"eth_syncing": `"error":{"code":-32000,"message":"boom"}`,
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "eth_chainId:", "eth_syncing: json-rpc error -32000: boom")
		}},
		{name: "web3_clientVersion disabled is not fatal", override: map[string]string{
			"web3_clientVersion": `"error":{"code":-32601,"message":"Method not found"}`,
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Client != "" || r.Version != "" || r.Height != 19531251 {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "wrong chain id is reported, not judged", override: map[string]string{"eth_chainId": `"result":"0xaa36a7"`},
			check: func(t *testing.T, r Result) {
				noErr(t, r)
				if r.ChainID != "11155111" {
					t.Errorf("ChainID %q, want 11155111 (sepolia)", r.ChainID)
				}
			}},
		{name: "height 0 and not syncing is a valid result", override: map[string]string{
			"eth_blockNumber":      `"result":"0x0"`,
			"eth_getBlockByNumber": `"result":{"number":"0x0","timestamp":"0x0","hash":"0xd4e5"}`,
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Height != 0 || !r.HasHeight || r.Syncing || r.BlockTime.Unix() != 0 {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "eth_syncing object means syncing", override: map[string]string{
			"eth_syncing": `"result":{"currentBlock":"0x11d1b5a","healedBytecodeBytes":"0x0","highestBlock":"0x12a05f3",` +
				`"startingBlock":"0x0","syncedAccounts":"0x0","txIndexRemainingBlocks":"0x1"}`,
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if !r.Syncing {
				t.Error("Syncing false for an eth_syncing object")
			}
		}},
		{name: "only indexing transactions at the head is not syncing", override: map[string]string{
			"eth_syncing": `"result":{"currentBlock":"0x12a05f3","highestBlock":"0x12a05f3","startingBlock":"0x0",` +
				`"txIndexFinishedBlocks":"0x100","txIndexRemainingBlocks":"0x2f00"}`,
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Syncing {
				t.Error("Syncing true for a node at its highest block that only indexes transactions")
			}
		}},
		{name: "eth_syncing null is wrong content", override: map[string]string{"eth_syncing": `"result":null`},
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "eth_syncing: want false or an object, got null") }},
		{name: "no latest block", override: map[string]string{"eth_getBlockByNumber": `"result":null`},
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "eth_getBlockByNumber: no latest block") }},
		{name: "block without timestamp", override: map[string]string{
			"eth_getBlockByNumber": `"result":{"number":"0x12a05f3","hash":"0x01"}`,
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "eth_getBlockByNumber: latest block has no timestamp")
		}},
		{name: "answer missing from the batch", drop: "eth_chainId",
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "eth_chainId: response batch did not contain a response to this call")
			}},
		{name: "non-JSON body", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html><body>It works!</body></html>")
		}, check: func(t *testing.T, r Result) { wantErr(t, r.Err, "json-rpc batch", "invalid character '<'") }},
		{name: "single object instead of a batch", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch not supported"}}`)
		}, check: func(t *testing.T, r Result) { wantErr(t, r.Err, "json-rpc batch", "cannot unmarshal object") }},
		{name: "http error status", handler: func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "upstream connect error "+strings.Repeat("x", 10000), http.StatusServiceUnavailable)
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "json-rpc batch: http 503 Service Unavailable: upstream connect error", "(truncated)")
			if len(r.Err.Error()) > 400 {
				t.Errorf("error is %d bytes long", len(r.Err.Error()))
			}
		}},
	}
	client := NewHTTPClient()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h http.Handler = tc.handler
			if tc.handler == nil {
				n := newEthNode(t, tc.override)
				n.drop = tc.drop
				h = n
			}
			srv := newServer(t, h)
			tc.check(t, runProbe(t, client, Target{Name: "geth-a", Kind: "ethereum", URL: srv.URL}))
		})
	}
}

func TestEthereumProbeRejectsNonHTTP(t *testing.T) {
	r := runProbe(t, NewHTTPClient(), Target{Name: "n", Kind: "ethereum", URL: "ws://127.0.0.1:8546"})
	wantErr(t, r.Err, `scheme "ws"`)
}

func TestEthereumClientReused(t *testing.T) {
	srv := newServer(t, newEthNode(t, nil))
	hc := NewHTTPClient()
	a, err := ethClient(context.Background(), hc, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ethClient(context.Background(), hc, srv.URL)
	c, _ := ethClient(context.Background(), NewHTTPClient(), srv.URL)
	if a != b {
		t.Error("same URL and HTTP client gave two rpc clients")
	}
	if a == c {
		t.Error("another HTTP client shared the rpc client")
	}
}

func equalResult(a, b Result) bool {
	return a.Height == b.Height && a.BlockTime.Equal(b.BlockTime) && a.Peers == b.Peers && a.Syncing == b.Syncing &&
		a.ChainID == b.ChainID && a.Client == b.Client && a.Version == b.Version && a.HasHeight == b.HasHeight &&
		len(a.FailingChecks) == len(b.FailingChecks) && len(a.Wallets) == len(b.Wallets) &&
		a.FailedRuns == b.FailedRuns && a.RunsChecked == b.RunsChecked && errors.Is(a.Err, b.Err)
}

// BenchmarkEthereumProbe is one probe of a synced geth (canned batch answer) over a keep-alive connection, with the
// finalized block as the agent asks for it by default.
func BenchmarkEthereumProbe(b *testing.B) { benchmarkEthereumProbe(b, true) }

// BenchmarkEthereumProbeNoFinality is the same probe without the finalized block (max_finalized_behind = "0s").
func BenchmarkEthereumProbeNoFinality(b *testing.B) { benchmarkEthereumProbe(b, false) }

func benchmarkEthereumProbe(b *testing.B, finality bool) {
	srv := newServer(b, cannedBatch(b, finality))
	client := NewHTTPClient()
	tg := Target{Name: "geth-a", Kind: "ethereum", URL: srv.URL, Finality: finality}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(ctx, probeTimeout)
		r := Run(ctx, client, tg)
		cancel()
		if r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// cannedBatch answers the prober's batch with gethMembers, doing as little work as it can (it runs in the
// benchmark's process, so its allocations count too): it copies the ids out of the request by scanning, in order.
func cannedBatch(tb testing.TB, finality bool) http.HandlerFunc {
	order := []string{"eth_blockNumber", "eth_syncing", "net_peerCount", "eth_chainId", "eth_getBlockByNumber",
		"web3_clientVersion"}
	if finality {
		order = append(order, "eth_getBlockByNumber/finalized", "eth_getBlockByNumber/safe")
	}
	var parts [][]byte
	for i, m := range order {
		sep := ","
		if i == 0 {
			sep = "["
		}
		parts = append(parts, []byte(sep+`{"jsonrpc":"2.0","id":`), []byte(","+gethMembers[m]+"}"))
	}
	idKey := []byte(`"id":`)
	bufs := sync.Pool{New: func() any { return new([2][8 << 10]byte) }}
	return func(w http.ResponseWriter, r *http.Request) {
		buf := bufs.Get().(*[2][8 << 10]byte)
		defer bufs.Put(buf)
		n, _ := io.ReadFull(r.Body, buf[0][:])
		req, resp := buf[0][:n], buf[1][:0]
		for i := range order {
			at := bytes.Index(req, idKey)
			if at < 0 {
				tb.Errorf("request has %d ids, want %d", i, len(order))
				return
			}
			req = req[at+len(idKey):]
			end := bytes.IndexAny(req, ",}")
			resp = append(resp, parts[2*i]...)
			resp = append(resp, req[:end]...)
			resp = append(resp, parts[2*i+1]...)
		}
		resp = append(resp, ']')
		w.Header()["Content-Type"] = []string{"application/json"}
		_, _ = w.Write(resp)
	}
}

// TestEthereumProbeConcurrent probes two nodes from many goroutines at once, as the agent does, and checks that no
// answer ends up in another node's result (the decode buffers are pooled, the rpc clients shared).
func TestEthereumProbeConcurrent(t *testing.T) {
	a := newServer(t, newEthNode(t, map[string]string{"eth_chainId": `"result":"0x1"`, "eth_blockNumber": `"result":"0x10"`}))
	b := newServer(t, newEthNode(t, map[string]string{"eth_chainId": `"result":"0x5"`, "eth_blockNumber": `"result":"0x20"`,
		"web3_clientVersion": `"error":{"code":-32601,"message":"disabled"}`}))
	client := NewHTTPClient()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				srv, chain, height, name := a, "1", uint64(16), "geth"
				if (g+i)%2 == 1 {
					srv, chain, height, name = b, "5", 32, ""
				}
				ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
				r := Run(ctx, client, Target{Name: "n", Kind: "ethereum", URL: srv.URL})
				cancel()
				if r.Err != nil || r.ChainID != chain || r.Height != height || r.Client != name {
					t.Errorf("%s: got chain %q height %d client %q err %v", srv.URL, r.ChainID, r.Height, r.Client, r.Err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestQuantity(t *testing.T) {
	cases := []struct {
		in   string
		want uint64
		err  string
	}{
		{in: `"0x1"`, want: 1},
		{in: `1`, want: 1}, // Ethermint's net_peerCount
		{in: `"0x0"`, want: 0},
		{in: `0`, want: 0},
		{in: `"0xffffffffffffffff"`, want: 1<<64 - 1},
		{in: `18446744073709551615`, want: 1<<64 - 1},
		{in: `"0X1"`, err: "without 0x prefix"},
		{in: `"1"`, err: "without 0x prefix"},
		{in: `""`, err: "without 0x prefix"},
		{in: `"0x"`, err: "not a hex number"},
		{in: `"0x-1"`, err: "not a hex number"},
		{in: `1e3`, err: "not a whole number"},
		{in: `1.0`, err: "not a whole number"},
		{in: `-3`, err: "negative"},
		{in: `18446744073709551616`, err: "does not fit in 64 bits"},
		{in: `true`, err: "not a whole number"},
		{in: `null`, err: "not a whole number"},
	}
	for _, tc := range cases {
		var q quantity
		err := json.Unmarshal([]byte(tc.in), &q)
		switch {
		case tc.err == "" && (err != nil || uint64(q) != tc.want):
			t.Errorf("%s: got %d, %v; want %d", tc.in, q, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: got %d, %v; want an error containing %q", tc.in, q, err, tc.err)
		}
	}
}

func TestParseClientVersion(t *testing.T) {
	cases := []struct{ in, client, version string }{
		{"Geth/v1.16.7-stable-b9f3a3d9/linux-amd64/go1.25.1", "geth", "Geth/v1.16.7-stable-b9f3a3d9/linux-amd64/go1.25.1"},
		{"Nethermind/v1.25.4+20b10b35/linux-x64/dotnet8.0.2", "nethermind", "Nethermind/v1.25.4+20b10b35/linux-x64/dotnet8.0.2"},
		{"erigon/2.60.1/linux-amd64/go1.21.5", "erigon", "erigon/2.60.1/linux-amd64/go1.21.5"},
		// IRITA v4.0.0 (Ethermint), exactly as a real node answered.
		{"Version dev ()\nCompiled at  using Go go1.26.8 (amd64)", "", "Version dev ()"},
		{"", "", ""},
		{"  \n", "", ""},
		{"/v1.0", "", "/v1.0"},
		{"Some Client/v1", "", "Some Client/v1"},
		{"Geth/v1\x00\x1b[31m", "geth", "Geth/v1[31m"},
	}
	for _, tc := range cases {
		client, version := parseClientVersion(tc.in)
		if client != tc.client || version != tc.version {
			t.Errorf("%q: got client %q version %q, want %q %q", tc.in, client, version, tc.client, tc.version)
		}
	}
}

// The finalized and safe blocks are asked for only when the target wants them, and are optional: a chain without
// finality answers an error (geth's Clique) or null, and the probe goes on without them.
func TestEthereumProbeFinality(t *testing.T) {
	cases := []struct {
		name     string
		override map[string]string
		want     uint64
		has      bool
		safe     uint64 // 0: none
	}{
		{name: "finalized block", want: 0x12a05b1, has: true, safe: 0x12a05d1},
		{name: "no safe block", want: 0x12a05b1, has: true, override: map[string]string{
			"eth_getBlockByNumber/safe": `"error":{"code":-39001,"message":"safe block not found"}`}},
		{name: "no finality (clique)", override: map[string]string{
			"eth_getBlockByNumber/finalized": `"error":{"code":-39001,"message":"unknown block"}`,
			"eth_getBlockByNumber/safe":      `"error":{"code":-39001,"message":"unknown block"}`}},
		{name: "null before anything was finalized", safe: 0x12a05d1, override: map[string]string{
			"eth_getBlockByNumber/finalized": `"result":null`}},
		{name: "a finalized answer without a number", safe: 0x12a05d1, override: map[string]string{
			"eth_getBlockByNumber/finalized": `"result":{"hash":"0x01"}`}},
		{name: "garbage", safe: 0x12a05d1, override: map[string]string{"eth_getBlockByNumber/finalized": `"result":"finalized"`}},
	}
	client := NewHTTPClient()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t, newEthNode(t, tc.override))
			r := runProbe(t, client, Target{Name: "geth-a", Kind: "ethereum", URL: srv.URL, Finality: true})
			noErr(t, r)
			if r.HasFinalized != tc.has || r.Finalized != tc.want {
				t.Fatalf("finalized %d (%v), want %d (%v)", r.Finalized, r.HasFinalized, tc.want, tc.has)
			}
			if r.HasSafe != (tc.safe != 0) || r.Safe != tc.safe {
				t.Fatalf("safe %d (%v), want %d", r.Safe, r.HasSafe, tc.safe)
			}
			if tc.has && r.FinalizedHash.String() != gethFinalizedHash {
				t.Errorf("finalized hash %s", r.FinalizedHash)
			}
			if r.Height != 19531251 || r.Hash.String() != gethLatestHash {
				t.Errorf("height %d hash %s", r.Height, r.Hash)
			}
		})
	}
}

// BlockHashes asks for blocks by number in one batch; a block the node doesn't have is the zero hash.
func TestEthereumBlockHashes(t *testing.T) {
	srv := newServer(t, newEthNode(t, map[string]string{
		"eth_getBlockByNumber/0x64": `"result":{"number":"0x64","hash":"` + gethParentHash + `","timestamp":"0x1"}`,
		// A node answering another block than asked is not believed.
		"eth_getBlockByNumber/0x65": `"result":{"number":"0x66","hash":"` + gethLatestHash + `","timestamp":"0x1"}`,
		"eth_getBlockByNumber/0x67": `"error":{"code":-32000,"message":"header not found"}`,
	}))
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	tg := Target{Name: "geth-a", Kind: "ethereum", URL: srv.URL}
	hs, err := BlockHashes(ctx, NewHTTPClient(), tg, []uint64{100, 101, 102})
	if err != nil {
		t.Fatal(err)
	}
	if hs[0].String() != gethParentHash || !hs[1].IsZero() || !hs[2].IsZero() {
		t.Fatalf("hashes %v", hs)
	}
	_, err = BlockHashes(ctx, NewHTTPClient(), tg, []uint64{100, 103})
	wantErr(t, err, "eth_getBlockByNumber(103): json-rpc error -32000: header not found")
}

func TestParseHash(t *testing.T) {
	const hex64 = "9f4e1b2c3d4e5f60718293a4b5c6d7e8f9011121314151617181920212223242"
	for in, want := range map[string]string{
		"0x" + hex64:                  "0x" + hex64,
		strings.ToUpper(hex64):        "0x" + hex64, // CometBFT
		"0x01":                        "",
		"0x" + hex64 + "00":           "",
		"0x" + hex64[:62] + "zz":      "",
		"":                            "",
		"0X" + strings.ToUpper(hex64): "0x" + hex64,
	} {
		if got := ParseHash(in).String(); got != want {
			t.Errorf("ParseHash(%q) = %q, want %q", in, got, want)
		}
		var h Hash
		if err := json.Unmarshal([]byte(`"`+in+`"`), &h); err != nil || h.String() != want {
			t.Errorf("json %q: %q, %v; want %q", in, h, err, want)
		}
	}
	var h Hash
	for _, in := range []string{`null`, `12`, `{}`, `"`} {
		if err := json.Unmarshal([]byte(in), &h); err != nil && in != `"` {
			t.Errorf("json %s: %v", in, err)
		}
	}
	b, _ := json.Marshal(struct {
		H Hash `json:"h,omitzero"`
	}{ParseHash("0x" + hex64)})
	if string(b) != `{"h":"0x`+hex64+`"}` {
		t.Errorf("marshal %s", b)
	}
}
