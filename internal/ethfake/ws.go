package ethfake

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/rpc"
)

// Pusher serves a Node's new heads over WebSocket as geth does: eth_subscribe("newHeads") through go-ethereum's own
// rpc server, so subscribers meet the real wire format: a header with every field geth sends (its size included),
// and the same number, hash, parent hash and timestamp the node answers over HTTP.
type Pusher struct {
	node *Node
	srv  *rpc.Server
	ws   http.Handler

	mu   sync.Mutex
	subs map[chan map[string]string]struct{}
	last uint64
}

// NewPusher returns the WebSocket endpoint of n. Publish (or Follow) sends heads to its subscribers.
func NewPusher(n *Node) *Pusher {
	p := &Pusher{node: n, srv: rpc.NewServer(), subs: map[chan map[string]string]struct{}{}}
	if err := p.srv.RegisterName("eth", &ethAPI{p}); err != nil {
		panic(err) // the service's methods are fixed: a failure is a bug here
	}
	p.ws = p.srv.WebsocketHandler([]string{"*"})
	return p
}

// ServeHTTP upgrades to WebSocket.
func (p *Pusher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.node.Down.Load() {
		http.Error(w, "node is down", http.StatusBadGateway)
		return
	}
	p.ws.ServeHTTP(w, r)
}

// Subscribers is how many newHeads subscriptions are open.
func (p *Pusher) Subscribers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.subs)
}

// Publish sends the node's current head to every subscriber.
func (p *Pusher) Publish() {
	height, at := p.node.head()
	h := p.node.Header(height, at)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = height
	for c := range p.subs {
		select {
		case c <- h:
		default: // a subscriber that is that far behind misses a head, as geth's would be dropped
		}
	}
}

// Follow publishes the head whenever it changed, checking every `every`, until ctx ends.
func (p *Pusher) Follow(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		height, _ := p.node.head()
		p.mu.Lock()
		changed := height != p.last
		p.mu.Unlock()
		if changed {
			p.Publish()
		}
	}
}

// Close ends every subscription and connection.
func (p *Pusher) Close() { p.srv.Stop() }

// Header is the head block's header as geth's newHeads sends it: number, hash, parent hash and timestamp as the
// node answers them over HTTP, the other fields of a real header with fixed values.
func (n *Node) Header(height uint64, blockTime time.Time) map[string]string {
	h := n.block(height, height, blockTime)
	zero := "0x" + strings.Repeat("0", 64)
	for k, v := range map[string]string{
		"sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347", "miner": "0x" + strings.Repeat("0", 40),
		"stateRoot": zero, "transactionsRoot": zero, "receiptsRoot": zero, "logsBloom": "0x" + strings.Repeat("0", 512),
		"difficulty": "0x0", "gasLimit": "0x1c9c380", "gasUsed": "0x0", "extraData": "0x", "mixHash": zero,
		"nonce": "0x0000000000000000", "baseFeePerGas": "0x7", "withdrawalsRoot": zero, "blobGasUsed": "0x0",
		"excessBlobGas": "0x0", "parentBeaconBlockRoot": zero, "requestsHash": zero,
	} {
		h[k] = v
	}
	return h
}

// ethAPI is the "eth" namespace of the WebSocket endpoint.
type ethAPI struct{ p *Pusher }

// NewHeads is eth_subscribe("newHeads").
func (a *ethAPI) NewHeads(ctx context.Context) (*rpc.Subscription, error) {
	notifier, ok := rpc.NotifierFromContext(ctx)
	if !ok {
		return nil, rpc.ErrNotificationsUnsupported
	}
	sub := notifier.CreateSubscription()
	c := make(chan map[string]string, 16)
	a.p.mu.Lock()
	a.p.subs[c] = struct{}{}
	a.p.mu.Unlock()
	go func() {
		defer func() {
			a.p.mu.Lock()
			delete(a.p.subs, c)
			a.p.mu.Unlock()
		}()
		for {
			select {
			case h := <-c:
				if err := notifier.Notify(sub.ID, h); err != nil {
					return
				}
			case <-sub.Err():
				return
			}
		}
	}()
	return sub, nil
}

// BlockNumber is eth_blockNumber, so a WebSocket client can also poll.
func (a *ethAPI) BlockNumber() (hexutil.Uint64, error) {
	h, _ := a.p.node.head()
	return hexutil.Uint64(h), nil
}
