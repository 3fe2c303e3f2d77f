package push_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
	"github.com/gorilla/websocket"

	"github.com/chainwarden/chainwarden/internal/ethfake"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/push"
)

// recSink records what a subscriber hands over.
type recSink struct {
	up    chan struct{}
	heads chan push.Head
}

func newRecSink() *recSink {
	return &recSink{up: make(chan struct{}, 1), heads: make(chan push.Head, 16)}
}

func (s *recSink) Subscribed()      { s.up <- struct{}{} }
func (s *recSink) Head(h push.Head) { s.heads <- h }

func wsURL(httpURL, path string) string { return "ws" + strings.TrimPrefix(httpURL, "http") + path }

// run starts kind's subscriber on url and returns its sink and the channel of its end.
func run(t *testing.T, kind probe.Kind, url string) (*recSink, <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := newRecSink()
	errc, done := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(done)
		errc <- push.Subscribers[kind](ctx, url, 5*time.Second, s)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s, errc
}

func wait[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

func TestEthereumNewHeads(t *testing.T) {
	node := ethfake.New(100, 1, nil)
	p := ethfake.NewPusher(node)
	srv := httptest.NewServer(p)
	defer srv.Close()

	s, errc := run(t, probe.Ethereum, wsURL(srv.URL, ""))
	wait(t, s.up, "subscribed")
	at := time.Unix(1_700_000_123, 0).UTC()
	node.HeightFunc = func() (uint64, time.Time) { return 101, at }
	p.Publish()
	h := wait(t, s.heads, "a head")
	if h.Height != 101 || !h.Time.Equal(at) || h.Hash.String() != ethfake.Hash(0, 101) || h.ParentHash.String() != ethfake.Hash(0, 100) {
		t.Fatalf("head %+v, want 101 at %s hash %s parent %s", h, at, ethfake.Hash(0, 101), ethfake.Hash(0, 100))
	}

	// The node drops the connection: the subscriber ends with an error.
	p.Close()
	if err := wait(t, errc, "the end of the subscription"); err == nil || !strings.Contains(err.Error(), "newHeads subscription") {
		t.Fatalf("ended with %v", err)
	}
}

// A notification of another subscription, shaped otherwise, is passed over; a head of ours that cannot be read
// ends the subscription (the manager subscribes again).
func TestEthereumOddMessages(t *testing.T) {
	c := newScriptServer(t, "/", `{"jsonrpc":"2.0","id":1,"result":"0xabc"}`)
	s, errc := run(t, probe.Ethereum, wsURL(c.srv.URL, "/"))
	wait(t, s.up, "subscribed")
	hash := func(b byte) string { return "0x" + strings.Repeat(fmt.Sprintf("%02x", b), 32) }
	c.send <- []byte(`{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xother","result":"0x1"}}`)
	c.send <- []byte(`{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xabc","result":{"number":"0x65",` +
		`"timestamp":"0x5","hash":"` + hash(1) + `","parentHash":"` + hash(2) + `","logsBloom":"0x00"}}}`)
	if h := wait(t, s.heads, "a head"); h.Height != 101 || h.Hash.String() != hash(1) || h.ParentHash.String() != hash(2) || h.Time.Unix() != 5 {
		t.Fatalf("head %+v", h)
	}
	c.send <- []byte(`{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xabc","result":{"number":{"x":1}}}}`)
	if err := wait(t, errc, "the end"); err == nil || !strings.HasPrefix(err.Error(), "newHeads: ") {
		t.Fatalf("ended with %v, want a newHeads error", err)
	}
	select {
	case h := <-s.heads:
		t.Fatalf("a head from bad input: %+v", h)
	default:
	}
}

func TestEthereumNoWebSocket(t *testing.T) {
	// An HTTP-only endpoint (a node with WebSocket off, or the wrong port).
	srv := httptest.NewServer(ethfake.New(1, 1, nil))
	defer srv.Close()
	_, errc := run(t, probe.Ethereum, wsURL(srv.URL, "/v3/SECRETKEY"))
	err := wait(t, errc, "the failure")
	if err == nil || !strings.Contains(err.Error(), "dial ws://127.0.0.1") || strings.Contains(err.Error(), "SECRETKEY") {
		t.Fatalf("want a dial error without the URL's path, got %v", err)
	}
}

// cometServer is a CometBFT /websocket endpoint: it answers the subscribe call, then writes what the test sends.
type cometServer struct {
	srv    *httptest.Server
	query  chan string
	send   chan []byte
	closed chan struct{}
}

func newCometServer(t *testing.T) *cometServer {
	return newScriptServer(t, "/websocket", `{"jsonrpc":"2.0","id":1,"result":{}}`)
}

// newScriptServer is a WebSocket endpoint at path that answers the first call with answer, then writes what the
// test sends (nil: drop the connection).
func newScriptServer(t *testing.T, path, answer string) *cometServer {
	c := &cometServer{query: make(chan string, 1), send: make(chan []byte, 16), closed: make(chan struct{})}
	up := websocket.Upgrader{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			http.NotFound(w, r)
			return
		}
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		var req rpctypes.RPCRequest
		if err := conn.ReadJSON(&req); err != nil {
			return
		}
		var p struct {
			Query string `json:"query"`
		}
		_ = json.Unmarshal(req.Params, &p)
		c.query <- req.Method + " " + p.Query
		_ = conn.WriteMessage(websocket.TextMessage, []byte(answer))
		for {
			select {
			case b := <-c.send:
				if b == nil {
					return // drop the connection
				}
				if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
					return
				}
			case <-c.closed:
				return
			}
		}
	}))
	t.Cleanup(func() {
		close(c.closed)
		c.srv.Close()
	})
	return c
}

// newBlockEvent is a NewBlock event as CometBFT v0.38.19 writes it (the shape of one read from a real node,
// abridged: one transaction, the commit's signatures left out).
func newBlockEvent(height int64, at time.Time, parent, hash string) []byte {
	return []byte(fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"result":{"query":"tm.event='NewBlock'","data":{"type":"tendermint/event/NewBlock",`+
		`"value":{"block":{"header":{"version":{"block":"11"},"chain_id":"test-chain","height":"%d","time":%q,`+
		`"last_block_id":{"hash":"%s","parts":{"total":1,"hash":"AA"}},"last_commit_hash":"","data_hash":"","validators_hash":"",`+
		`"next_validators_hash":"","consensus_hash":"","app_hash":"0000000000000000","last_results_hash":"","evidence_hash":"",`+
		`"proposer_address":"C0FFEE"},"data":{"txs":["az12"]},"evidence":{"evidence":[]},"last_commit":{"height":"%d",`+
		`"round":0,"block_id":{"hash":"0F1E","parts":{"total":1,"hash":"AA"}},"signatures":[]}},`+
		`"block_id":{"hash":%q,"parts":{"total":1,"hash":"BB"}},"result_finalize_block":{"events":[],"tx_results":[{"code":0}],`+
		`"validator_updates":[],"consensus_param_updates":null,"app_hash":"AAAA"}}},"events":{"tm.event":["NewBlock"]}}}`,
		height, at.Format(time.RFC3339Nano), parent, height-1, hash))
}

func TestCometBFTNewBlock(t *testing.T) {
	c := newCometServer(t)
	s, errc := run(t, probe.CometBFT, wsURL(c.srv.URL, "/websocket"))
	if q := wait(t, c.query, "the subscribe call"); q != "subscribe tm.event='NewBlock'" {
		t.Fatalf("subscribed with %q", q)
	}
	wait(t, s.up, "subscribed")

	at := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	c.send <- []byte(`null`) // ignored
	hash, parent := strings.Repeat("AB", 32), strings.Repeat("0F", 32)
	c.send <- newBlockEvent(42, at, parent, hash)
	h := wait(t, s.heads, "a head")
	if h.Height != 42 || !h.Time.Equal(at) || h.Hash != probe.ParseHash(hash) || h.ParentHash != probe.ParseHash(parent) {
		t.Fatalf("head %+v", h)
	}

	// A Tendermint v0.34 fork (IRITA) sends the block without block_id: a head without a hash.
	c.send <- []byte(`{"jsonrpc":"2.0","id":"1#event","result":{"query":"tm.event='NewBlock'","data":{"type":"tendermint/event/NewBlock",` +
		`"value":{"block":{"header":{"version":{"block":"11"},"chain_id":"irita","height":"43","time":"2026-01-02T03:04:10.5Z"},` +
		`"data":{"txs":[]},"evidence":{"evidence":[]},"last_commit":null},"result_begin_block":{},"result_end_block":{}}},` +
		`"events":{"tm.event":["NewBlock"]}}}`)
	h = wait(t, s.heads, "a v0.34 head")
	if h.Height != 43 || !h.Hash.IsZero() || !h.Time.Equal(time.Date(2026, 1, 2, 3, 4, 10, 5e8, time.UTC)) {
		t.Fatalf("v0.34 head %+v", h)
	}

	// The node cancels the subscription (as it does when it shuts down, or finds the client too slow).
	c.send <- []byte(`{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error","data":"subscription was canceled (reason: CometBFT exited)"}}`)
	if err := wait(t, errc, "the end"); err == nil || !strings.Contains(err.Error(), "subscription was canceled") {
		t.Fatalf("ended with %v", err)
	}
}

func TestCometBFTBadInputEndsTheSubscription(t *testing.T) {
	for name, msg := range map[string]string{
		"not json":     `{"jsonrpc":`,
		"no height":    `{"jsonrpc":"2.0","id":1,"result":{"data":{"type":"tendermint/event/NewBlock","value":{"block":{"header":{}}}}}}`,
		"bad height":   `{"jsonrpc":"2.0","id":1,"result":{"data":{"type":"tendermint/event/NewBlock","value":{"block":{"header":{"height":"-5"}}}}}}`,
		"dropped conn": "",
	} {
		t.Run(name, func(t *testing.T) {
			c := newCometServer(t)
			s, errc := run(t, probe.CometBFT, wsURL(c.srv.URL, "/websocket"))
			wait(t, s.up, "subscribed")
			if msg == "" {
				c.send <- nil
			} else {
				c.send <- []byte(msg)
			}
			if err := wait(t, errc, "the end"); err == nil {
				t.Fatal("the subscription did not end")
			}
			select {
			case h := <-s.heads:
				t.Fatalf("a head from bad input: %+v", h)
			default:
			}
		})
	}
}

func TestCometBFTNoWebSocket(t *testing.T) {
	c := newCometServer(t)
	_, errc := run(t, probe.CometBFT, wsURL(c.srv.URL, "/not-websocket"))
	err := wait(t, errc, "the failure")
	if err == nil || !strings.Contains(err.Error(), "handshake refused: http 404") {
		t.Fatalf("got %v", err)
	}
}
