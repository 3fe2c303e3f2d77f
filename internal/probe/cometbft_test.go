package probe

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// cometStatusJSON is /status of a synced CometBFT v0.38 node, as its RPC renders it (int64 as strings, UTC times).
const cometStatusJSON = `{
  "node_info": {
    "protocol_version": {"p2p": "8", "block": "11", "app": "1"},
    "id": "2b4f4e6a1c35a8c4e0e9e4c2d1b0a9f8e7d6c5b4",
    "listen_addr": "tcp://0.0.0.0:26656",
    "network": "irita-hub",
    "version": "0.38.19",
    "channels": "40202122233038606100",
    "moniker": "node0",
    "other": {"tx_index": "on", "rpc_address": "tcp://127.0.0.1:26657"}
  },
  "sync_info": {
    "latest_block_hash": "9F4E1B2C3D4E5F60718293A4B5C6D7E8F9011121314151617181920212223242",
    "latest_app_hash": "0000000000000000",
    "latest_block_height": "123456",
    "latest_block_time": "2024-03-14T10:00:00.123456789Z",
    "earliest_block_hash": "A1B2",
    "earliest_app_hash": "",
    "earliest_block_height": "1",
    "earliest_block_time": "2024-01-01T00:00:00Z",
    "catching_up": false
  },
  "validator_info": {
    "address": "5D6A1F0E2C3B4A5968778695A4B3C2D1E0F1A2B3",
    "pub_key": {"type": "tendermint/PubKeyEd25519", "value": "bm9kZTAtcHVia2V5LWJ5dGVzLTMyLWxvbmctZXhhbXBsZQ=="},
    "voting_power": "10"
  }
}`

const cometNetInfoJSON = `{
  "listening": true,
  "listeners": ["Listener(@tcp://0.0.0.0:26656)"],
  "n_peers": "3",
  "peers": [{"node_info": {"id": "a1", "network": "irita-hub", "moniker": "node1"}, "is_outbound": true,
    "connection_status": {"Duration": "1234567", "SendMonitor": {"Active": true}}, "remote_ip": "10.0.0.2"}]
}`

// cometNode is a fake CometBFT RPC: JSON-RPC 2.0 over HTTP POST, answering {"jsonrpc":"2.0","id":<the request's>,
// "result":...} (or an "error" member) per method.
type cometNode struct {
	t       testing.TB
	members map[string]string // method -> `"result":...` or `"error":...`
}

func newCometNode(t testing.TB, edit func(status, netInfo string) (string, string)) *cometNode {
	status, netInfo := cometStatusJSON, cometNetInfoJSON
	if edit != nil {
		status, netInfo = edit(status, netInfo)
	}
	return &cometNode{t: t, members: map[string]string{"status": `"result":` + status, "net_info": `"result":` + netInfo}}
}

func (n *cometNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var q struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Method  string          `json:"method"`
	}
	if r.Method != http.MethodPost {
		http.Error(w, "want POST", http.StatusMethodNotAllowed)
		return
	}
	if err := json.NewDecoder(r.Body).Decode(&q); err != nil || q.JSONRPC != "2.0" {
		n.t.Errorf("bad JSON-RPC request: %v %+v", err, q)
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	member, ok := n.members[q.Method]
	if !ok {
		member = `"error":{"code":-32601,"message":"Method not found"}`
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(q.ID)+`,`+member+`}`)
}

func TestCometBFTProbe(t *testing.T) {
	replace := func(old, new string) func(string, string) (string, string) {
		return func(s, n string) (string, string) {
			if !strings.Contains(s+n, old) {
				t.Fatalf("fixture has no %q", old)
			}
			return strings.Replace(s, old, new, 1), strings.Replace(n, old, new, 1)
		}
	}
	blockTime := time.Date(2024, 3, 14, 10, 0, 0, 123456789, time.UTC)
	cases := []struct {
		name    string
		edit    func(status, netInfo string) (string, string)
		members map[string]string
		handler http.HandlerFunc
		check   func(t *testing.T, r Result)
	}{
		{name: "healthy node", check: func(t *testing.T, r Result) {
			noErr(t, r)
			want := Result{Height: 123456, BlockTime: blockTime, Peers: 3, Syncing: false, ChainID: "irita-hub",
				Client: "cometbft", Version: "0.38.19", HasHeight: true}
			if !equalResult(r, want) {
				t.Errorf("got  %+v\nwant %+v", r, want)
			}
			if r.Hash.String() != "0x9f4e1b2c3d4e5f60718293a4b5c6d7e8f9011121314151617181920212223242" {
				t.Errorf("hash %s", r.Hash)
			}
		}},
		{name: "odd hash leaves it unknown", edit: replace(`"9F4E1B2C3D4E5F60718293A4B5C6D7E8F9011121314151617181920212223242"`, `"9F4E"`),
			check: func(t *testing.T, r Result) {
				noErr(t, r)
				if !r.Hash.IsZero() {
					t.Errorf("hash %s", r.Hash)
				}
			}},
		{name: "catching up", edit: replace(`"catching_up": false`, `"catching_up": true`),
			check: func(t *testing.T, r Result) {
				noErr(t, r)
				if !r.Syncing {
					t.Error("catching_up true but Syncing false")
				}
			}},
		{name: "IRITA validator with an SM2 key", edit: replace(`"type": "tendermint/PubKeyEd25519"`,
			`"type": "tendermint/PubKeySm2"`), check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Height != 123456 {
				t.Errorf("height %d", r.Height)
			}
		}},
		{name: "wrong network is reported, not judged", edit: replace(`"network": "irita-hub"`, `"network": "irita-test"`),
			check: func(t *testing.T, r Result) {
				noErr(t, r)
				if r.ChainID != "irita-test" {
					t.Errorf("ChainID %q", r.ChainID)
				}
			}},
		{name: "height 0, not catching up, is a valid result", edit: replace(`"latest_block_height": "123456"`,
			`"latest_block_height": "0"`), check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Height != 0 || !r.HasHeight || r.Syncing {
				t.Errorf("got %+v", r)
			}
		}},
		{name: "height as a JSON number", edit: replace(`"latest_block_height": "123456"`, `"latest_block_height": 123456`),
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "status:", "invalid 64-bit integer encoding") }},
		{name: "malformed height", edit: replace(`"latest_block_height": "123456"`, `"latest_block_height": "12x"`),
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "status:", "invalid character 'x'") }},
		{name: "negative height", edit: replace(`"latest_block_height": "123456"`, `"latest_block_height": "-5"`),
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "latest_block_height -5 is negative") }},
		{name: "block time not UTC", edit: replace(`"2024-03-14T10:00:00.123456789Z"`, `"2024-03-14T10:00:00+02:00"`),
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "status:", "must be UTC") }},
		{name: "sync_info missing", edit: func(s, n string) (string, string) {
			return `{"node_info":{"network":"irita-hub","version":"0.38.19"}}`, n
		}, check: func(t *testing.T, r Result) { wantErr(t, r.Err, "status: sync_info.latest_block_height missing") }},
		{name: "null result", members: map[string]string{"status": `"result":null`},
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "status: node_info.network missing") }},
		{name: "json-rpc error object", members: map[string]string{
			"status": `"error":{"code":-32603,"message":"Internal error","data":"node is shutting down"}`,
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "status: json-rpc error -32603: Internal error: node is shutting down")
		}},
		{name: "net_info fails after a good status", members: map[string]string{
			"net_info": `"error":{"code":-32601,"message":"Method not found"}`,
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "net_info: json-rpc error -32601: Method not found")
			if r.HasHeight {
				t.Error("a failed probe must not claim a height")
			}
		}},
		{name: "n_peers missing", edit: replace(`"n_peers": "3",`, ``),
			check: func(t *testing.T, r Result) { wantErr(t, r.Err, "net_info: n_peers missing") }},
		{name: "non-JSON body", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html><h1>502 Bad Gateway</h1></html>")
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "status:", "502 Bad Gateway", "invalid character '<'")
		}},
		{name: "body is null", handler: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "null") // panicked in CometBFT's RPCResponse.UnmarshalJSON (found by FuzzCometBFT)
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "status: the cometbft client could not decode the answer")
		}},
		{name: "answer for another request id", handler: func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"jsonrpc":"2.0","id":9999,"result":`+cometStatusJSON+`}`)
		}, check: func(t *testing.T, r Result) { wantErr(t, r.Err, "status:", "wrong ID") }},
	}
	client := NewHTTPClient()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h http.Handler = tc.handler
			if tc.handler == nil {
				n := newCometNode(t, tc.edit)
				for k, v := range tc.members {
					n.members[k] = v
				}
				h = n
			}
			srv := newServer(t, h)
			tc.check(t, runProbe(t, client, Target{Name: "irita-0", Kind: "cometbft", URL: srv.URL}))
		})
	}
}

// BenchmarkCometBFTProbe is one probe (status + net_info) of a synced node over a keep-alive connection.
func BenchmarkCometBFTProbe(b *testing.B) {
	srv := newServer(b, newCometNode(b, nil))
	client := NewHTTPClient()
	tg := Target{Name: "irita-0", Kind: "cometbft", URL: srv.URL}
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		r := Run(ctx, client, tg)
		cancel()
		if r.Err != nil {
			b.Fatal(r.Err)
		}
	}
}

// BlockHashes reads /blockchain: one call for a short span of heights.
func TestCometBFTBlockHashes(t *testing.T) {
	var calls []string
	srv := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var q struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params struct {
				Min string `json:"minHeight"`
				Max string `json:"maxHeight"`
			} `json:"params"`
		}
		if err := json.NewDecoder(r.Body).Decode(&q); err != nil || q.Method != "blockchain" {
			t.Errorf("request %+v: %v", q, err)
		}
		calls = append(calls, q.Params.Min+"-"+q.Params.Max)
		io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(q.ID)+`,"result":{"last_height":"12","block_metas":[`+
			`{"block_id":{"hash":"AA`+strings.Repeat("01", 31)+`","parts":{"total":1,"hash":"00"}},"block_size":"500","header":{"height":"11"},"num_txs":"0"},`+
			`{"block_id":{"hash":"BB`+strings.Repeat("01", 31)+`","parts":{"total":1,"hash":"00"}},"block_size":"500","header":{"height":"10"},"num_txs":"0"}]}}`)
	}))
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	hs, err := BlockHashes(ctx, NewHTTPClient(), Target{Name: "c", Kind: CometBFT, URL: srv.URL}, []uint64{11, 10, 9})
	if err != nil {
		t.Fatal(err)
	}
	if hs[0].String() != "0xaa"+strings.Repeat("01", 31) || hs[1].String() != "0xbb"+strings.Repeat("01", 31) || !hs[2].IsZero() {
		t.Fatalf("hashes %v", hs)
	}
	if len(calls) != 1 || calls[0] != "9-11" {
		t.Fatalf("calls %v", calls)
	}
}
