// Package probe asks chain nodes how they are: one prober per node kind, each in a file of its own, looked up by
// kind in a table (as prometheus/blackbox_exporter does). A probe runs under the caller's deadline, reads at most
// MaxResponseBytes of any answer, and returns a Result value, never a bare bool.
package probe

import (
	"context"
	"math/big"
	"net/http"
	"time"
)

// MaxResponseBytes caps every answer a prober reads; a larger one is an error, not an out-of-memory.
const MaxResponseBytes = 4 << 20

// Kind is a kind of chain node: which prober asks it, which thresholds judge it.
type Kind string

// The kinds of node chainwarden probes.
const (
	Ethereum  Kind = "ethereum"  // Ethereum JSON-RPC: geth, OpenEthereum/Parity, Erigon, Nethermind, Ethermint
	CometBFT  Kind = "cometbft"  // CometBFT / Tendermint RPC: CometBFT chains, IRITA
	Chainlink Kind = "chainlink" // a Chainlink node's API
)

// Kinds lists every kind, in the order error messages name them.
var Kinds = []Kind{Ethereum, CometBFT, Chainlink}

// Target is what a prober needs to know about a node.
type Target struct {
	Name string
	Kind Kind
	URL  string // base RPC URL, e.g. http://127.0.0.1:8545 or http://127.0.0.1:26657

	// Chainlink API credentials: a user token (X-API-KEY/X-API-SECRET), or the operator's email and password (a
	// session login, POST /sessions), given as such or as the path of the node's .api file (email, then password,
	// one a line). None: only /health is checked.
	APIKey, APISecret     string
	APIEmail, APIPassword string
	APICredentialsFile    string
	// AuthEvery is how often a Chainlink probe runs the authenticated checks (keys and balances, job runs,
	// version); in between it reuses their last results from Session. 0, or no Session: every probe.
	AuthEvery time.Duration
	Session   *ChainlinkSession

	// Finality asks an Ethereum node for its finalized and safe blocks too (two more calls in the batch; optional:
	// a node without finality answers an error or null and the probe goes on).
	Finality bool
}

// Result is what one probe learned. Fields a kind does not have stay zero; Err says why the probe failed.
type Result struct {
	Height    uint64    // latest block height
	BlockTime time.Time // timestamp of the latest block
	Peers     uint64
	Syncing   bool   // eth_syncing != false, or CometBFT catching_up
	ChainID   string // eth_chainId as decimal, or the CometBFT network (chain id)
	Client    string // client name, e.g. "geth", "cometbft", "chainlink"
	Version   string // client version string as the node reports it
	HasHeight bool   // the kind reports heights (ethereum, cometbft)
	// Hash is the latest block's hash and ParentHash its parent's (ethereum; CometBFT's /status has no parent):
	// what fork detection compares. Zero: unknown.
	Hash, ParentHash Hash
	// Finalized is the node's latest finalized block (Ethereum's "finalized" tag) when HasFinalized.
	Finalized     uint64
	FinalizedHash Hash
	HasFinalized  bool
	// Safe is the node's latest safe block (Ethereum's "safe" tag: unlikely to be reorged) when HasSafe; asked
	// with Finalized.
	Safe    uint64
	HasSafe bool

	// Chainlink.
	FailingChecks []Check       // /health checks that are failing, with their output
	Wallets       []Wallet      // EVM keys and balances, when credentials are configured
	FailedRuns    int           // failed job runs among the most recent ones
	RunsChecked   bool          // FailedRuns is meaningful
	RunFailures   []RunFailure  // the jobs of the failed runs (newest first, one per job, a few at most)
	AuthAge       time.Duration // age of the authenticated results (wallets, runs, version) reused from an earlier probe

	Duration time.Duration
	Err      error
}

// Wallet is one Chainlink EVM key.
type Wallet struct {
	Address  string
	ChainID  string
	Balance  *big.Int // wei
	Disabled bool
}

// Prober probes one target. It must honour ctx's deadline and never panic on bad input from the network.
type Prober func(ctx context.Context, client *http.Client, t Target) Result

// Probers is the lookup table of probers by node kind.
var Probers = map[Kind]Prober{
	Ethereum:  probeEthereum,
	CometBFT:  probeCometBFT,
	Chainlink: probeChainlink,
}

// Run probes t with the prober for its kind, timing it.
func Run(ctx context.Context, client *http.Client, t Target) Result {
	start := time.Now()
	p, ok := Probers[t.Kind]
	var r Result
	if !ok {
		r.Err = errUnknownKind(t.Kind)
	} else {
		r = p(ctx, client, t)
	}
	r.Duration = time.Since(start)
	return r
}
