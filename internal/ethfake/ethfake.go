// Package ethfake is an Ethereum JSON-RPC node for tests and benchmarks where a real one can't be driven precisely
// (a settable height, a node that fails on demand, a thousand of them): it speaks the real wire format, batches
// included, for the calls chainwarden's prober makes.
package ethfake

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Node answers as one Ethereum node. Height is what eth_blockNumber says unless HeightFunc is set.
type Node struct {
	Height  atomic.Uint64
	ChainID atomic.Uint64
	Peers   atomic.Uint64
	Down    atomic.Bool // answer 502 to everything

	// Branch says which chain the blocks are on: nodes with one Branch have the same block hashes (0 by default).
	Branch atomic.Uint64
	// Finalized is the finalized block; 0: every 32nd block, as geth --dev finalizes. NoFinality answers the
	// "finalized" tag as a chain without finality does (an error, as geth's Clique).
	Finalized  atomic.Uint64
	NoFinality atomic.Bool
	// Safe is the safe block; 0: none yet (the "safe" tag answers null).
	Safe atomic.Uint64
	// MadeAt, when set (unix nanoseconds), is when the head block was made; else one second before Now.
	MadeAt atomic.Int64

	// HeightFunc, when set, gives the height and its block time (a chain that advances with the clock).
	HeightFunc func() (uint64, time.Time)
	// Now stamps the latest block one second before it when HeightFunc is nil.
	Now func() time.Time
	// ClientVersion is what web3_clientVersion answers; default a geth v1.16.7's. Set it before serving.
	ClientVersion string
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
	Params []any           `json:"params"`
}

// Hash is the hash of block height on a branch: the same on every node of that branch.
func Hash(branch, height uint64) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%d/%d", branch, height))
	return "0x" + hex.EncodeToString(sum[:])
}

// block is eth_getBlockByNumber's answer for block number h of a chain whose head is height, made at blockTime.
func (n *Node) block(h, height uint64, blockTime time.Time) map[string]string {
	branch := n.Branch.Load()
	parent := "0x" + strings.Repeat("0", 64)
	if h > 0 {
		parent = Hash(branch, h-1)
	}
	return map[string]string{"number": fmt.Sprintf("0x%x", h), "hash": Hash(branch, h), "parentHash": parent,
		"timestamp": fmt.Sprintf("0x%x", blockTime.Unix()-int64(height-h))}
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
			tag, _ := firstParam(q.Params)
			switch h, err := strconv.ParseUint(strings.TrimPrefix(tag, "0x"), 16, 64); {
			case tag == "latest" || tag == "":
				res = n.block(height, height, blockTime)
			case tag == "finalized" && n.NoFinality.Load():
				out = append(out, map[string]any{"jsonrpc": "2.0", "id": q.ID,
					"error": map[string]any{"code": -39001, "message": "finalized block not found"}})
				continue
			case tag == "finalized":
				f := n.Finalized.Load()
				if f == 0 {
					f = height / 32 * 32
				}
				res = n.block(min(f, height), height, blockTime)
			case tag == "safe" && n.Safe.Load() > 0:
				res = n.block(min(n.Safe.Load(), height), height, blockTime)
			case err == nil && strings.HasPrefix(tag, "0x") && h <= height:
				res = n.block(h, height, blockTime)
			default:
				res = nil // a block the node doesn't have
			}
		case "web3_clientVersion":
			res = "Geth/v1.16.7-stable/linux-amd64/go1.26"
			if n.ClientVersion != "" {
				res = n.ClientVersion
			}
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

func firstParam(params []any) (string, bool) {
	if len(params) == 0 {
		return "", false
	}
	s, ok := params[0].(string)
	return s, ok
}

func (n *Node) head() (uint64, time.Time) {
	if n.HeightFunc != nil {
		return n.HeightFunc()
	}
	now := time.Now
	if n.Now != nil {
		now = n.Now
	}
	if t := n.MadeAt.Load(); t != 0 {
		return n.Height.Load(), time.Unix(0, t)
	}
	return n.Height.Load(), now().Add(-time.Second)
}

// SetHead sets the head and when its block was made: a node that lags holds a block made a while ago.
func (n *Node) SetHead(height uint64, madeAt time.Time) {
	n.Height.Store(height)
	n.MadeAt.Store(madeAt.UnixNano())
}
