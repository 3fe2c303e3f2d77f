package push

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"

	"github.com/chainwarden/chainwarden/internal/probe"
)

// cometNewBlock is the query of the event a CometBFT node sends for every block it commits.
const cometNewBlock = "tm.event='NewBlock'"

// cometResponse is a JSON-RPC response as CometBFT sends it on /websocket: the answer to the subscribe call, then
// every event as a further answer to it. It is decoded here rather than by rpctypes.RPCResponse, whose decoder
// panics on a body of `null` (cometbft v0.38.19).
type cometResponse struct {
	Result json.RawMessage    `json:"result"`
	Error  *rpctypes.RPCError `json:"error"`
}

// cometEvent is the part of a NewBlock event a head needs. CometBFT v0.38 sends block_id with the block; v0.34 forks
// (IRITA) send the block alone, so the hash may be absent.
type cometEvent struct {
	Data struct {
		Type  string `json:"type"`
		Value struct {
			Block *struct {
				Header struct {
					Height      cometInt  `json:"height"`
					Time        time.Time `json:"time"`
					LastBlockID struct {
						Hash probe.Hash `json:"hash"`
					} `json:"last_block_id"`
				} `json:"header"`
			} `json:"block"`
			BlockID struct {
				Hash probe.Hash `json:"hash"`
			} `json:"block_id"`
		} `json:"value"`
	} `json:"data"`
}

// cometInt is an int64 as CometBFT writes it (a JSON string), or as a plain number.
type cometInt uint64

func (n *cometInt) UnmarshalJSON(b []byte) error {
	s := string(bytes.Trim(b, `"`))
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("height %.40q is not a whole number", s)
	}
	*n = cometInt(v)
	return nil
}

// cometSubscribe is the subscribe call for NewBlock events, in CometBFT's own request type.
var cometSubscribe = func() []byte {
	b, err := json.Marshal(rpctypes.RPCRequest{JSONRPC: "2.0", ID: rpctypes.JSONRPCIntID(1), Method: "subscribe",
		Params: json.RawMessage(`{"query":"` + cometNewBlock + `"}`)})
	if err != nil {
		panic(err) // a constant request: a failure is a bug here
	}
	return b
}()

// subscribeCometBFT subscribes to a CometBFT node's NewBlock events on its /websocket endpoint, speaking CometBFT's
// JSON-RPC (its request and error types) over one gorilla/websocket connection. CometBFT's own WSClient is not used:
// it reconnects on its own with time.Sleep (not the injected clock), and its read loop ends silently, without a
// reconnect or an error, when the connection is reset, its read deadline passes or the node closes it normally —
// the subscription would look alive while nothing arrives.
func subscribeCometBFT(ctx context.Context, url string, timeout time.Duration, s Sink) error {
	w, err := dialWS(ctx, url, timeout)
	if err != nil {
		return err
	}
	defer w.close()
	if err := w.send(cometSubscribe); err != nil {
		return fmt.Errorf("subscribe: %w", tidy(err, url))
	}
	subscribed := false
	for {
		data, err := w.next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !subscribed {
				return fmt.Errorf("subscribe: %w", tidy(err, url))
			}
			return fmt.Errorf("NewBlock subscription: %w", tidy(err, url))
		}
		var r cometResponse
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("NewBlock subscription: an answer that is not JSON-RPC: %w", err)
		}
		if r.Error != nil {
			msg := r.Error.Message
			if r.Error.Data != "" {
				msg += ": " + r.Error.Data
			}
			return tidy(fmt.Errorf("subscribe %s: json-rpc error %d: %s", cometNewBlock, r.Error.Code, msg), url)
		}
		if !subscribed {
			subscribed = true
			s.Subscribed()
		}
		if len(r.Result) == 0 || bytes.Equal(r.Result, []byte("null")) {
			continue
		}
		var ev cometEvent
		if err := json.Unmarshal(r.Result, &ev); err != nil {
			return fmt.Errorf("NewBlock event: %w", err)
		}
		if ev.Data.Type != "tendermint/event/NewBlock" { // the answer to subscribe ({}), or another event
			continue
		}
		b := ev.Data.Value.Block
		if b == nil || b.Header.Height == 0 {
			return errors.New("NewBlock event: no block height")
		}
		s.Head(Head{Height: uint64(b.Header.Height), Time: b.Header.Time.UTC(), Hash: ev.Data.Value.BlockID.Hash,
			ParentHash: b.Header.LastBlockID.Hash})
	}
}
