// Package ethfake is an Ethereum JSON-RPC node for tests and benchmarks where a real one can't be driven precisely
// (a settable height, a node that fails on demand, a thousand of them): it speaks the real wire format, batches
// included, for the calls chainwarden's prober makes.
package ethfake

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// Node answers as one Ethereum node. Height is what eth_blockNumber says unless HeightFunc is set.
type Node struct {
	Height  atomic.Uint64
	ChainID atomic.Uint64
	Peers   atomic.Uint64
	Down    atomic.Bool // answer 502 to everything

	// HeightFunc, when set, gives the height and its block time (a chain that advances with the clock).
	HeightFunc func() (uint64, time.Time)
	// Now stamps the latest block one second before it when HeightFunc is nil.
	Now func() time.Time
}

// New returns a node at height on chainID with 5 peers.
func New(height, chainID uint64, now func() time.Time) *Node {
	n := &Node{Now: now}
	n.Height.Store(height)
	n.ChainID.Store(chainID)
	n.Peers.Store(5)
	return n
}

type request struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
}

func (n *Node) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if n.Down.Load() {
		http.Error(w, "node is down", http.StatusBadGateway)
		return
	}
	var batch []request
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&batch); err != nil {
		http.Error(w, "a JSON-RPC batch is expected", http.StatusBadRequest)
		return
	}
	height, blockTime := n.head()
	out := make([]map[string]any, 0, len(batch))
	for _, q := range batch {
		var res any
		switch q.Method {
		case "eth_blockNumber":
			res = fmt.Sprintf("0x%x", height)
		case "eth_syncing":
			res = false
		case "net_peerCount":
			res = fmt.Sprintf("0x%x", n.Peers.Load())
		case "eth_chainId":
			res = fmt.Sprintf("0x%x", n.ChainID.Load())
		case "eth_getBlockByNumber":
			res = map[string]string{"number": fmt.Sprintf("0x%x", height), "timestamp": fmt.Sprintf("0x%x", blockTime.Unix())}
		case "web3_clientVersion":
			res = "Geth/v1.16.7-stable/linux-amd64/go1.26"
		default:
			out = append(out, map[string]any{"jsonrpc": "2.0", "id": q.ID,
				"error": map[string]any{"code": -32601, "message": "the method " + q.Method + " does not exist/is not available"}})
			continue
		}
		out = append(out, map[string]any{"jsonrpc": "2.0", "id": q.ID, "result": res})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (n *Node) head() (uint64, time.Time) {
	if n.HeightFunc != nil {
		return n.HeightFunc()
	}
	now := time.Now
	if n.Now != nil {
		now = n.Now
	}
	return n.Height.Load(), now().Add(-time.Second)
}
