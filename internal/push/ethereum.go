package push

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/rpc"
	"github.com/gorilla/websocket"
)

// ethHead is the part of a newHeads notification (a block header) a head needs.
type ethHead struct {
	Number    *hexutil.Uint64 `json:"number"`
	Timestamp *hexutil.Uint64 `json:"timestamp"`
	Hash      *common.Hash    `json:"hash"`
}

// ethDialer dials without HTTP(S)_PROXY (node RPC is never proxied, as for probes) and with small buffers: an
// agent keeps one connection per node. Write buffers are shared between connections.
var ethDialer = websocket.Dialer{ReadBufferSize: 1024, WriteBufferSize: 1024, WriteBufferPool: &sync.Pool{}}

// subscribeEthereum subscribes to an Ethereum node's newHeads through go-ethereum's rpc client over WebSocket
// (which pings an idle connection every 30 s and drops it when the pong is 30 s late).
func subscribeEthereum(ctx context.Context, url string, timeout time.Duration, s Sink) error {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := rpc.DialOptions(dctx, url, rpc.WithWebsocketMessageSizeLimit(MaxMessageBytes), rpc.WithWebsocketDialer(ethDialer))
	if err != nil {
		return fmt.Errorf("dial %s: %w", redactURL(url), tidy(err, url))
	}
	defer c.Close()
	heads := make(chan ethHead, 16)
	sub, err := c.EthSubscribe(dctx, heads, "newHeads")
	if err != nil {
		return fmt.Errorf("eth_subscribe newHeads: %w", tidy(err, url))
	}
	cancel()
	s.Subscribed()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-sub.Err():
			if err == nil {
				err = errors.New("closed")
			}
			return fmt.Errorf("newHeads subscription: %w", tidy(err, url))
		case h := <-heads:
			if h.Number == nil {
				return errors.New("newHeads: a head without a number")
			}
			head := Head{Height: uint64(*h.Number)}
			if h.Timestamp != nil {
				head.Time = time.Unix(int64(*h.Timestamp), 0).UTC()
			}
			if h.Hash != nil {
				head.Hash = h.Hash.Hex()
			}
			s.Head(head)
		}
	}
}
