package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ethereum/go-ethereum/common/hexutil"

	"github.com/chainwarden/chainwarden/internal/probe"
)

// ethSubscribe is the eth_subscribe call for new heads.
var ethSubscribe = []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`)

// ethMessage is a JSON-RPC message on an Ethereum node's WebSocket: the answer to eth_subscribe (id, result or
// error), then notifications (method eth_subscription, params.subscription, params.result), decoded in one go.
type ethMessage struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Method string `json:"method"`
	Params struct {
		Subscription string  `json:"subscription"`
		Result       ethHead `json:"result"`
	} `json:"params"`
}

// ethHead is the part of a newHeads notification (a block header) a head needs, in go-ethereum's own encodings.
type ethHead struct {
	Number     *hexutil.Uint64 `json:"number"`
	Timestamp  *hexutil.Uint64 `json:"timestamp"`
	Hash       probe.Hash      `json:"hash"`
	ParentHash probe.Hash      `json:"parentHash"`
}

// subscribeEthereum subscribes to an Ethereum node's newHeads (eth_subscribe, the Ethereum JSON-RPC pub/sub API that
// geth, Nethermind, Erigon, Besu and OpenEthereum serve over WebSocket). It speaks the wire format itself over one
// gorilla/websocket connection rather than through go-ethereum's rpc client: that client runs four goroutines and
// keeps a random source and buffers per connection, which at a thousand nodes cost the agent about 90 MiB (measured,
// docs/BENCHMARKS.md); the messages are decoded with go-ethereum's quantity type and our block hash.
func subscribeEthereum(ctx context.Context, url string, timeout time.Duration, s Sink) error {
	w, err := dialWS(ctx, url, timeout)
	if err != nil {
		return err
	}
	defer w.close()
	if err := w.send(ethSubscribe); err != nil {
		return fmt.Errorf("eth_subscribe newHeads: %w", tidy(err, url))
	}
	var sub string // the subscription id, once the node answered
	for {
		data, err := w.next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if sub == "" {
				return fmt.Errorf("eth_subscribe newHeads: %w", tidy(err, url))
			}
			return fmt.Errorf("newHeads subscription: %w", tidy(err, url))
		}
		var m ethMessage
		err = json.Unmarshal(data, &m)
		var typeErr *json.UnmarshalTypeError
		notification := m.Method == "eth_subscription"
		ours := notification && sub != "" && m.Params.Subscription == sub
		switch {
		case errors.As(err, &typeErr) && notification && !ours:
			continue // a notification of no subscription of ours, shaped otherwise
		case typeErr != nil && ours:
			return fmt.Errorf("newHeads: %w", err)
		case err != nil:
			return fmt.Errorf("newHeads subscription: a message that is not JSON-RPC: %w", err)
		}
		switch {
		case sub == "":
			if m.Error != nil {
				return tidy(fmt.Errorf("eth_subscribe newHeads: json-rpc error %d: %s", m.Error.Code, m.Error.Message), url)
			}
			if string(m.ID) != "1" {
				continue // not the answer (a notification of no subscription of ours)
			}
			if err := json.Unmarshal(m.Result, &sub); err != nil || sub == "" {
				return fmt.Errorf("eth_subscribe newHeads: no subscription id in the answer %.80q", m.Result)
			}
			s.Subscribed()
		case m.Method == "eth_subscription" && m.Params.Subscription == sub:
			h := m.Params.Result
			if h.Number == nil {
				return errors.New("newHeads: a head without a number")
			}
			head := Head{Height: uint64(*h.Number), Hash: h.Hash, ParentHash: h.ParentHash}
			if h.Timestamp != nil {
				head.Time = time.Unix(int64(*h.Timestamp), 0).UTC()
			}
			s.Head(head)
		case m.Error != nil: // e.g. the node ended the subscription
			return tidy(fmt.Errorf("newHeads subscription: json-rpc error %d: %s", m.Error.Code, m.Error.Message), url)
		}
	}
}
