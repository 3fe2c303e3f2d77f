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
	"regexp"
	"strings"
	"sync"
	"time"

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
	Number     *quantity `json:"number"`
	Timestamp  *quantity `json:"timestamp"`
	Hash       Hash      `json:"hash"`
	ParentHash Hash      `json:"parentHash"`
}

// quantity is a JSON-RPC quantity as real clients send it: a hex string ("0x1", the spec, geth) or a JSON number
// (1: Ethermint's net_peerCount, e.g. IRITA). Anything else, a string without 0x included, is an error.
type quantity uint64

func (q *quantity) UnmarshalJSON(b []byte) error {
	var n big.Int
	if err := unmarshalQuantity(b, &n); err != nil {
		return err
	}
	if !n.IsUint64() {
		return fmt.Errorf("quantity %s does not fit in 64 bits", clip(string(b), 80))
	}
	*q = quantity(n.Uint64())
	return nil
}

// bigQuantity is a quantity of any size (eth_chainId), in either encoding.
type bigQuantity big.Int

func (q *bigQuantity) UnmarshalJSON(b []byte) error { return unmarshalQuantity(b, (*big.Int)(q)) }

func unmarshalQuantity(b []byte, n *big.Int) error {
	v := bytes.TrimSpace(b)
	if len(v) > 0 && v[0] == '"' {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return fmt.Errorf("quantity: %w", err)
		}
		digits, ok := strings.CutPrefix(s, "0x")
		if !ok {
			return fmt.Errorf("quantity %q: a hex string without 0x prefix", clip(s, 80))
		}
		if _, ok := n.SetString(digits, 16); !ok || strings.HasPrefix(digits, "-") || strings.HasPrefix(digits, "+") {
			return fmt.Errorf("quantity %q is not a hex number", clip(s, 80))
		}
	} else if _, ok := n.SetString(string(v), 10); !ok { // a JSON number: whole and non-negative
		return fmt.Errorf("quantity %s is not a whole number", clip(string(v), 80))
	}
	if n.Sign() < 0 {
		return fmt.Errorf("quantity %s is negative", clip(string(v), 80))
	}
	return nil
}

// latestBlockArgs, finalizedBlockArgs and safeBlockArgs are the (read-only) arguments of eth_getBlockByNumber: the
// latest, the finalized and the safe block, without transactions.
var (
	latestBlockArgs    = []any{"latest", false}
	finalizedBlockArgs = []any{"finalized", false}
	safeBlockArgs      = []any{"safe", false}
)

// ethCalls is the batch a probe sends, with the values its answers decode into. Probes reuse them through a pool:
// at one probe a second for up to a thousand nodes, the allocations add up.
type ethCalls struct {
	height, peers quantity
	syncing       json.RawMessage
	chainID       bigQuantity
	block         ethBlock
	version       string
	finalized     json.RawMessage // null before the chain finalized anything
	safe          json.RawMessage // likewise
	batch         [8]rpc.BatchElem
}

// Positions in ethCalls.batch. The optional calls come last: web3_clientVersion (some providers disable it) and
// the finalized and safe blocks (only on chains with finality; left out of the batch unless the target asks for it).
const (
	callHeight = iota
	callSyncing
	callPeers
	callChainID
	callBlock
	callVersion
	callFinalized
	callSafe
)

var ethCallsPool = sync.Pool{New: func() any {
	c := new(ethCalls)
	c.batch = [...]rpc.BatchElem{
		callHeight:    {Method: "eth_blockNumber", Result: &c.height},
		callSyncing:   {Method: "eth_syncing", Result: &c.syncing},
		callPeers:     {Method: "net_peerCount", Result: &c.peers},
		callChainID:   {Method: "eth_chainId", Result: &c.chainID},
		callBlock:     {Method: "eth_getBlockByNumber", Args: latestBlockArgs, Result: &c.block},
		callVersion:   {Method: "web3_clientVersion", Result: &c.version},
		callFinalized: {Method: "eth_getBlockByNumber", Args: finalizedBlockArgs, Result: &c.finalized},
		callSafe:      {Method: "eth_getBlockByNumber", Args: safeBlockArgs, Result: &c.safe},
	}
	return c
}}

func getEthCalls() *ethCalls {
	c := ethCallsPool.Get().(*ethCalls)
	c.height, c.peers, c.syncing, c.block, c.version, c.finalized, c.safe = 0, 0, c.syncing[:0], ethBlock{}, "", c.finalized[:0], c.safe[:0]
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
	if cap(c.finalized) > 64<<10 {
		c.finalized = nil
	}
	if cap(c.safe) > 64<<10 {
		c.safe = nil
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
	batch := c.batch[:callFinalized]
	if t.Finality {
		batch = c.batch[:]
	}
	if err := client.BatchCallContext(ctx, batch); err != nil {
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
	r.Hash, r.ParentHash = c.block.Hash, c.block.ParentHash
	if t.Finality && c.batch[callFinalized].Error == nil {
		r.Finalized, r.FinalizedHash, r.HasFinalized = decodeFinalized(c.finalized)
	}
	if t.Finality && c.batch[callSafe].Error == nil {
		r.Safe, _, r.HasSafe = decodeFinalized(c.safe)
	}
	// Some providers disable web3_clientVersion: then the node simply has no version to show.
	if c.batch[callVersion].Error == nil {
		r.Client, r.Version = parseClientVersion(c.version)
	}
	return r
}

// clientNameRE is what a client name looks like ("Geth", "Nethermind", "erigon", "besu").
var clientNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,31}$`)

// parseClientVersion reads web3_clientVersion. Most clients answer "Name/version/os/runtime"
// ("Geth/v1.13.15-stable-c5ba367e/linux-amd64/go1.21.6"); others don't: Ethermint answers
// "Version dev ()\nCompiled at  using Go go1.26.8 (amd64)". The version is the first line, control characters
// dropped; the client name is the part before the first slash when it looks like a name, else unknown ("").
func parseClientVersion(raw string) (client, version string) {
	line, _, _ := strings.Cut(strings.TrimSpace(raw), "\n")
	line = strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, line))
	version = clip(line, 256)
	if name, _, ok := strings.Cut(line, "/"); ok && clientNameRE.MatchString(name) {
		client = strings.ToLower(name)
	}
	return client, version
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
			Current *quantity `json:"currentBlock"`
			Highest *quantity `json:"highestBlock"`
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

// decodeFinalized reads the finalized (or safe) block. A chain without finality (Clique, pre-merge, Ethermint)
// answers an error or null; an answer without a number is the same: no such block, not a failed probe.
func decodeFinalized(raw json.RawMessage) (uint64, Hash, bool) {
	var b ethBlock
	if len(raw) == 0 || json.Unmarshal(raw, &b) != nil || b.Number == nil {
		return 0, Hash{}, false
	}
	return uint64(*b.Number), b.Hash, true
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
