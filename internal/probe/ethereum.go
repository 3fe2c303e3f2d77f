package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/rpc"
)

// clientKey identifies a cached RPC client: one per node URL and shared HTTP client, so the keep-alive connections
// of the HTTP client's transport are reused from one probe to the next.
type clientKey struct {
	url  string
	http *http.Client
}

// ethClients caches *rpc.Client by clientKey. An HTTP rpc.Client holds no goroutine or connection of its own
// (the http.Client's transport does), so an entry for a node that went away costs a few hundred bytes.
var ethClients sync.Map

func ethClient(ctx context.Context, hc *http.Client, rawURL string) (*rpc.Client, error) {
	key := clientKey{rawURL, hc}
	if c, ok := ethClients.Load(key); ok {
		return c.(*rpc.Client), nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("node URL: %w", tidy(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		// ws:// and IPC would bypass the shared HTTP client and its response cap.
		return nil, fmt.Errorf("node URL scheme %q: only http and https are probed", u.Scheme)
	}
	c, err := rpc.DialOptions(ctx, rawURL, rpc.WithHTTPClient(hc))
	if err != nil {
		return nil, fmt.Errorf("rpc client: %w", tidy(err))
	}
	if prev, loaded := ethClients.LoadOrStore(key, c); loaded {
		c.Close()
		return prev.(*rpc.Client), nil
	}
	return c, nil
}

// ethBlock is the part of eth_getBlockByNumber's answer a probe needs.
type ethBlock struct {
	Number    *hexutil.Uint64 `json:"number"`
	Timestamp *hexutil.Uint64 `json:"timestamp"`
}

// latestBlockArgs are the (read-only) arguments of eth_getBlockByNumber: the latest block, without transactions.
var latestBlockArgs = []any{"latest", false}

// ethCalls is the batch a probe sends, with the values its answers decode into. Probes reuse them through a pool:
// at one probe a second for up to a thousand nodes, the allocations add up.
type ethCalls struct {
	height, peers hexutil.Uint64
	syncing       json.RawMessage
	chainID       hexutil.Big
	block         ethBlock
	version       string
	batch         [6]rpc.BatchElem
}

// Positions in ethCalls.batch. web3_clientVersion is last: it is the only optional call.
const (
	callHeight = iota
	callSyncing
	callPeers
	callChainID
	callBlock
	callVersion
)

var ethCallsPool = sync.Pool{New: func() any {
	c := new(ethCalls)
	c.batch = [...]rpc.BatchElem{
		callHeight:  {Method: "eth_blockNumber", Result: &c.height},
		callSyncing: {Method: "eth_syncing", Result: &c.syncing},
		callPeers:   {Method: "net_peerCount", Result: &c.peers},
		callChainID: {Method: "eth_chainId", Result: &c.chainID},
		callBlock:   {Method: "eth_getBlockByNumber", Args: latestBlockArgs, Result: &c.block},
		callVersion: {Method: "web3_clientVersion", Result: &c.version},
	}
	return c
}}

func getEthCalls() *ethCalls {
	c := ethCallsPool.Get().(*ethCalls)
	c.height, c.peers, c.syncing, c.block, c.version = 0, 0, c.syncing[:0], ethBlock{}, ""
	(*big.Int)(&c.chainID).SetUint64(0)
	for i := range c.batch {
		c.batch[i].Error = nil
	}
	return c
}

func putEthCalls(c *ethCalls) {
	if cap(c.syncing) > 4<<10 { // don't keep a large answer alive in the pool
		c.syncing = nil
	}
	ethCallsPool.Put(c)
}

// probeEthereum asks an Ethereum execution client (geth, Nethermind, Erigon, Besu, OpenEthereum, or a provider such
// as Infura) for its head, sync state, peers, chain id and version in one JSON-RPC batch.
func probeEthereum(ctx context.Context, hc *http.Client, t Target) Result {
	var r Result
	client, err := ethClient(ctx, hc, t.URL)
	if err != nil {
		r.Err = err
		return r
	}

	c := getEthCalls()
	defer putEthCalls(c)
	if err := client.BatchCallContext(ctx, c.batch[:]); err != nil {
		r.Err = fmt.Errorf("json-rpc batch: %w", batchError(err))
		return r
	}

	// Every call but web3_clientVersion is needed for a verdict; report each one that failed.
	var errs [callVersion]error
	for i := range errs {
		if e := c.batch[i].Error; e != nil {
			errs[i] = callError(c.batch[i].Method, e)
		}
	}
	var syncing bool
	if errs[callSyncing] == nil {
		syncing, errs[callSyncing] = decodeSyncing(c.syncing)
	}
	if errs[callBlock] == nil {
		errs[callBlock] = checkBlock(&c.block)
	}
	if err := joinErrors(errs[:]...); err != nil {
		r.Err = err
		return r
	}

	r.Height = uint64(c.height)
	r.HasHeight = true
	r.Syncing = syncing
	r.Peers = uint64(c.peers)
	r.ChainID = (*big.Int)(&c.chainID).String()
	r.BlockTime = time.Unix(int64(*c.block.Timestamp), 0).UTC()
	// Some providers disable web3_clientVersion: then the node simply has no version to show.
	if c.batch[callVersion].Error == nil && c.version != "" {
		r.Version = clip(c.version, 256)
		name, _, _ := strings.Cut(r.Version, "/")
		r.Client = strings.ToLower(name)
	}
	return r
}

// decodeSyncing reads eth_syncing: false when synced, an object of progress fields while syncing.
func decodeSyncing(raw json.RawMessage) (bool, error) {
	v := bytes.TrimSpace(raw)
	switch {
	case bytes.Equal(v, []byte("false")):
		return false, nil
	case bytes.Equal(v, []byte("true")):
		return true, nil
	case len(v) > 0 && v[0] == '{':
		// geth keeps answering with a progress object while it only indexes transactions at the chain head
		// (txIndexRemainingBlocks); its blocks are in sync then. Syncing means currentBlock < highestBlock.
		var p struct {
			Current *hexutil.Uint64 `json:"currentBlock"`
			Highest *hexutil.Uint64 `json:"highestBlock"`
		}
		if err := json.Unmarshal(v, &p); err != nil {
			return false, fmt.Errorf("eth_syncing: %w", tidy(err))
		}
		if p.Current != nil && p.Highest != nil && *p.Current >= *p.Highest {
			return false, nil
		}
		return true, nil
	}
	return false, fmt.Errorf("eth_syncing: want false or an object, got %s", clip(string(v), 64))
}

func checkBlock(b *ethBlock) error {
	switch {
	case b.Number == nil && b.Timestamp == nil:
		return errors.New("eth_getBlockByNumber: no latest block in the answer")
	case b.Timestamp == nil:
		return errors.New("eth_getBlockByNumber: latest block has no timestamp")
	case b.Number == nil:
		return errors.New("eth_getBlockByNumber: latest block has no number")
	}
	return nil
}

// callError names the call that failed and, for a JSON-RPC error object, its code.
func callError(method string, err error) error {
	var re rpc.Error
	if errors.As(err, &re) {
		return fmt.Errorf("%s: json-rpc error %d: %w", method, re.ErrorCode(), tidy(err))
	}
	return fmt.Errorf("%s: %w", method, tidy(err))
}

// batchError makes a transport-level batch error readable: an HTTP error status keeps only the start of its body.
func batchError(err error) error {
	var he rpc.HTTPError
	if errors.As(err, &he) {
		if body := strings.TrimSpace(string(he.Body)); body != "" {
			return fmt.Errorf("http %s: %s", he.Status, clip(body, 200))
		}
		return fmt.Errorf("http %s", he.Status)
	}
	return tidy(err)
}
