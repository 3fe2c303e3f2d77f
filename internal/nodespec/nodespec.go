// Package nodespec is what chainwarden knows about a chain node it watches, wherever that came from — a node block
// of the agent's configuration file or the meta of a Nomad task — and the one set of rules that checks it and
// fills in the per-kind defaults. The configuration loader decodes node and reference blocks straight into these
// types (hence the hcl tags) and points the field errors Normalize returns at their file and line.
package nodespec

import (
	"fmt"
	"math/big"
	"net/url"
	"regexp"
	"strconv"
	"time"

	"github.com/chainwarden/chainwarden/internal/fielderr"
	"github.com/chainwarden/chainwarden/internal/networkhead"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// Sources of nodes.
const (
	SourceConfig = "config" // a node block of the configuration file
	SourceNomad  = "nomad"  // a task of an allocation on the local Nomad client
)

// MaxReorgDepth is the deepest reorg_depth a node may set: hashes are compared within networkhead.Window blocks of
// a source's head, and a comparison needs a few of them.
const MaxReorgDepth = networkhead.Window / 2

// Node is one chain node an agent watches.
type Node struct {
	Name    string     `hcl:"name,label"`
	Kind    probe.Kind `hcl:"kind"`
	RPC     string     `hcl:"rpc"`
	Service string     `hcl:"service"`
	// Address and Port registered in Consul; default: the host and port of RPC.
	Address string   `hcl:"address,optional"`
	Port    int      `hcl:"port,optional"`
	Tags    []string `hcl:"tags,optional"`
	Client  string   `hcl:"client,optional"`
	Role    string   `hcl:"role,optional"`
	// WS is the node's WebSocket endpoint: when set, its new heads arrive by push (eth_subscribe newHeads on
	// ws://host:8546; CometBFT's NewBlock event on ws://host:26657/websocket) and polling relaxes to the agent's
	// push_poll_interval while the subscription is up.
	WS string `hcl:"ws,optional"`

	ChainID *uint64 `hcl:"chain_id,optional"` // ethereum
	Network string  `hcl:"network,optional"`  // cometbft chain id; chain name for ethereum meta

	// Threshold overrides; Normalize folds them with the kind's defaults into Thresholds.
	WarnLag     *uint64 `hcl:"warn_lag,optional"`
	MaxLag      *uint64 `hcl:"max_lag,optional"`
	MaxBlockAge string  `hcl:"max_block_age,optional"`
	MinPeers    *uint64 `hcl:"min_peers,optional"`
	FailAfter   *int    `hcl:"fail_after,optional"`
	PassAfter   *int    `hcl:"pass_after,optional"`
	// Lag in time: how long the node has been behind the network head. Given without warn_lag and max_lag, the node
	// is judged by time alone.
	WarnBehind string `hcl:"warn_behind,optional"`
	MaxBehind  string `hcl:"max_behind,optional"`
	// MaxFinalizedBehind (ethereum): how long the node's finalized block may stay below the network's; "0s": not
	// judged, and not asked for.
	MaxFinalizedBehind string `hcl:"max_finalized_behind,optional"`
	// MinBlockTime is the fastest the chain makes blocks: what bounds how far ahead a source may be (see
	// networkhead). Default per kind: ethereum 1s, cometbft 250ms.
	MinBlockTime string `hcl:"min_block_time,optional"`
	// ReorgDepth (ethereum): how deep the chain's races for its newest blocks go before they settle. Hashes are
	// compared this far below the lower of two heads; a difference there is a fork. Default 2 (proof of stake);
	// proof-of-authority chains whose signers seal out of turn (Clique, Parlia, Bor) reorganise deeper.
	ReorgDepth *uint64 `hcl:"reorg_depth,optional"`

	// Chainlink: API credentials (from env() or file(), never inline) — a user token (api_key, api_secret), the
	// operator's email and password, or the node's .api file (email and password, one a line) — the wallet and
	// job-run checks, and how often those authenticated checks run.
	APIKey             string `hcl:"api_key,optional"`
	APISecret          string `hcl:"api_secret,optional"`
	APIEmail           string `hcl:"api_email,optional"`
	APIPassword        string `hcl:"api_password,optional"`
	APICredentialsFile string `hcl:"api_credentials_file,optional"`
	MinBalance         string `hcl:"min_balance,optional"` // in ether, e.g. "0.5"
	MaxFailedRuns      *int   `hcl:"max_failed_runs,optional"`
	AuthChecksInterval string `hcl:"auth_checks_interval,optional"` // default DefaultAuthChecksInterval

	// Filled by Normalize.
	Thresholds verdict.Thresholds
	Chain      networkhead.Chain // of the node's network
	AuthEvery  time.Duration     // from auth_checks_interval
	Source     string            // SourceConfig or SourceNomad

	// AllocID and Task name the Nomad allocation and task a discovered node runs as ("" for a node block): the
	// health endpoint answers Nomad's deployment check by allocation, and the restarter restarts that task.
	AllocID string
	Task    string
	// Deploying says the allocation is part of a Nomad deployment that has not found it healthy (still judging it,
	// or failed it): the deployment's healthy_deadline and auto_revert deal with it, not the restarter.
	Deploying bool
}

// Name follows Consul's DNS-safe naming; a dot would break consul-template's tag syntax.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})$`)

// ValidName reports whether s can name a node, a service or a volume.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Normalize checks the node, fills Address and Port from RPC, and folds the kind's default thresholds with the
// node's overrides into Thresholds. Each error's Field is the attribute it is about.
func (n *Node) Normalize() fielderr.List {
	var errs fielderr.List
	bad := func(field, format string, args ...any) {
		errs.Add(field, "node %q: "+format, append([]any{n.Name}, args...)...)
	}
	if n.Source == "" {
		n.Source = SourceConfig
	}
	if !ValidName(n.Name) {
		bad("", "the name must be letters, digits and dashes")
	}
	def, ok := verdict.KindDefaults[n.Kind]
	if !ok {
		bad("kind", "kind %q is not one of ethereum, cometbft, chainlink", n.Kind)
		return errs
	}
	if !ValidName(n.Service) {
		bad("service", "service %q must be letters, digits and dashes (no dots)", n.Service)
	}
	u, err := url.Parse(n.RPC)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("rpc", "rpc %q is not an http(s) URL", RedactURL(n.RPC))
	} else {
		if n.Address == "" {
			n.Address = u.Hostname()
		}
		if n.Port == 0 {
			n.Port = portOf(u)
		}
	}
	if n.WS != "" {
		w, err := url.Parse(n.WS)
		switch {
		case n.Kind == probe.Chainlink:
			bad("ws", "ws is for ethereum and cometbft nodes (new heads by push)")
		case err != nil || (w.Scheme != "ws" && w.Scheme != "wss") || w.Host == "":
			bad("ws", "ws %q is not a ws:// or wss:// URL", RedactURL(n.WS))
		}
	}
	switch n.Kind {
	case probe.Ethereum:
		if n.ChainID == nil {
			bad("", "chain_id is required for an ethereum node (a node on the wrong chain must be caught)")
		}
	case probe.CometBFT:
		if n.Network == "" {
			bad("", "network (the chain id, e.g. \"irishub-1\") is required for a cometbft node")
		}
	}
	t := def
	for _, o := range []struct {
		set *uint64
		to  *uint64
	}{{n.WarnLag, &t.WarnLag}, {n.MaxLag, &t.MaxLag}, {n.MinPeers, &t.MinPeers}} {
		if o.set != nil {
			*o.to = *o.set
		}
	}
	if n.FailAfter != nil {
		t.FailAfter = *n.FailAfter
	}
	if n.PassAfter != nil {
		t.PassAfter = *n.PassAfter
	}
	if n.MaxBlockAge != "" {
		d, err := time.ParseDuration(n.MaxBlockAge)
		if err != nil || d <= 0 {
			bad("max_block_age", "max_block_age: %q is not a positive duration (like \"1s\" or \"2m\")", n.MaxBlockAge)
		} else {
			t.MaxBlockAge = d
		}
	}
	if n.Kind != probe.Chainlink && t.WarnLag > t.MaxLag {
		bad("warn_lag", "warn_lag %d is above max_lag %d", t.WarnLag, t.MaxLag)
	}
	n.Chain = networkhead.KindChain(n.Kind)
	if n.ReorgDepth != nil {
		switch {
		case n.Kind != probe.Ethereum:
			bad("reorg_depth", "reorg_depth is for ethereum nodes (a committed cometbft block is final)")
		case *n.ReorgDepth > MaxReorgDepth:
			bad("reorg_depth", "reorg_depth %d is above %d (the block hashes kept per source reach %d below its head)",
				*n.ReorgDepth, MaxReorgDepth, networkhead.Window)
		default:
			n.Chain.Confirmations = *n.ReorgDepth
		}
	}
	timed := map[string]*time.Duration{"warn_behind": &t.WarnBehind, "max_behind": &t.MaxBehind,
		"max_finalized_behind": &t.MaxFinalizedBehind, "min_block_time": &n.Chain.MinBlockTime}
	for _, f := range []struct {
		field, value string
		zeroOK       bool
	}{{"warn_behind", n.WarnBehind, false}, {"max_behind", n.MaxBehind, false},
		{"max_finalized_behind", n.MaxFinalizedBehind, true}, {"min_block_time", n.MinBlockTime, false}} {
		if f.value == "" {
			continue
		}
		if n.Kind == probe.Chainlink {
			bad(f.field, "%s is for ethereum and cometbft nodes", f.field)
			continue
		}
		d, err := time.ParseDuration(f.value)
		switch {
		case err != nil || d < 0 || d == 0 && !f.zeroOK:
			hint := `like "30s" or "2m"`
			if f.zeroOK {
				hint += `; "0s": off`
			}
			bad(f.field, "%s: %q is not a positive duration (%s)", f.field, f.value, hint)
		default:
			*timed[f.field] = d
		}
	}
	if n.MaxFinalizedBehind != "" && n.Kind == probe.CometBFT {
		bad("max_finalized_behind", "max_finalized_behind is for ethereum nodes (a CometBFT block is final once committed)")
	}
	if t.WarnBehind > 0 && t.MaxBehind > 0 && t.WarnBehind > t.MaxBehind {
		bad("warn_behind", "warn_behind %s is above max_behind %s", t.WarnBehind, t.MaxBehind)
	}
	t.TimeOnly = (n.WarnBehind != "" || n.MaxBehind != "") && n.WarnLag == nil && n.MaxLag == nil
	if t.FailAfter < 1 || t.PassAfter < 1 {
		bad("", "fail_after and pass_after must be at least 1")
	}
	if n.MinBalance != "" {
		wei, err := EtherToWei(n.MinBalance)
		if err != nil {
			bad("min_balance", "min_balance: %v", err)
		}
		t.MinBalanceWei = wei
	}
	if n.MaxFailedRuns != nil {
		t.MaxFailedRuns = *n.MaxFailedRuns
	}
	token := n.APIKey != "" || n.APISecret != ""
	login := n.APIEmail != "" || n.APIPassword != ""
	if n.Kind != probe.Chainlink && (token || login || n.APICredentialsFile != "" || n.MinBalance != "" ||
		n.MaxFailedRuns != nil || n.AuthChecksInterval != "") {
		bad("", "api_key, api_email, api_credentials_file, min_balance, max_failed_runs and auth_checks_interval are for chainlink nodes")
	}
	switch {
	case token && (n.APIKey == "" || n.APISecret == ""):
		bad("", "api_key and api_secret go together (a user token: POST /v2/user/token)")
	case login && (n.APIEmail == "" || n.APIPassword == ""):
		bad("", "api_email and api_password go together")
	case btoi(token)+btoi(login)+btoi(n.APICredentialsFile != "") > 1:
		bad("", "give one of api_key/api_secret, api_email/api_password and api_credentials_file")
	}
	if (n.MinBalance != "" || n.MaxFailedRuns != nil) && !token && !login && n.APICredentialsFile == "" {
		bad("", "min_balance and max_failed_runs need API credentials: api_key and api_secret, api_email and "+
			"api_password (use env() or file()), or api_credentials_file")
	}
	n.AuthEvery = DefaultAuthChecksInterval
	if n.AuthChecksInterval != "" {
		d, err := time.ParseDuration(n.AuthChecksInterval)
		if err != nil || d < 0 {
			bad("auth_checks_interval", "auth_checks_interval: %q is not a duration (like \"1m\"; \"0s\": every probe)",
				n.AuthChecksInterval)
		} else {
			n.AuthEvery = d
		}
	}
	n.Thresholds = t
	return errs
}

// WantChain is the chain id (ethereum, decimal) or network (cometbft) the node must report; "" = any.
func (n *Node) WantChain() string {
	switch n.Kind {
	case probe.Ethereum:
		if n.ChainID != nil {
			return strconv.FormatUint(*n.ChainID, 10)
		}
	case probe.CometBFT:
		return n.Network
	}
	return ""
}

// Target is what the prober needs to probe the node.
func (n *Node) Target() probe.Target {
	return probe.Target{Name: n.Name, Kind: n.Kind, URL: n.RPC, APIKey: n.APIKey, APISecret: n.APISecret,
		APIEmail: n.APIEmail, APIPassword: n.APIPassword, APICredentialsFile: n.APICredentialsFile, AuthEvery: n.AuthEvery,
		Finality: n.JudgesFinality()}
}

// JudgesFinality says whether the node is judged on its finalized block (an Ethereum node with max_finalized_behind
// on): its probes ask for it.
func (n *Node) JudgesFinality() bool {
	return n.Kind == probe.Ethereum && n.Thresholds.MaxFinalizedBehind > 0
}

// DefaultAuthChecksInterval is how often a Chainlink node's authenticated checks (keys and balances, job runs)
// run unless auth_checks_interval says otherwise: each /v2/keys/evm call costs the node RPC calls and, without a
// LINK contract, an error with a stack trace in its log.
const DefaultAuthChecksInterval = time.Minute

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Reference is an external head for a service (a provider such as Infura), probed like a node of that service.
type Reference struct {
	Name    string     `hcl:"name,label"`
	Service string     `hcl:"service"`
	RPC     string     `hcl:"rpc"`
	Kind    probe.Kind `hcl:"kind,optional"`
}

// Normalize checks the reference; an unset kind is that of the first of nodes in the same service, else ethereum.
func (r *Reference) Normalize(nodes []Node) fielderr.List {
	var errs fielderr.List
	if r.Kind == "" {
		for _, n := range nodes {
			if n.Service == r.Service {
				r.Kind = n.Kind
				break
			}
		}
		if r.Kind == "" {
			r.Kind = probe.Ethereum
		}
	}
	if r.Kind != probe.Ethereum && r.Kind != probe.CometBFT {
		errs.Add("kind", "reference %q: kind %q must be ethereum or cometbft", r.Name, r.Kind)
	}
	u, err := url.Parse(r.RPC)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL may hold an API key: never print it.
		errs.Add("rpc", "reference %q: rpc is not an http(s) URL", r.Name)
	}
	return errs
}

// Target is what the prober needs to probe the reference.
func (r *Reference) Target() probe.Target {
	return probe.Target{Name: r.Name, Kind: r.Kind, URL: r.RPC}
}

// EtherToWei turns a decimal ether amount ("0.5") into a decimal wei string ("500000000000000000").
func EtherToWei(ether string) (string, error) {
	r, ok := new(big.Rat).SetString(ether)
	if !ok || r.Sign() < 0 {
		return "", fmt.Errorf("%q is not a non-negative decimal amount of ether", ether)
	}
	r.Mul(r, new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(18), nil)))
	if !r.IsInt() {
		return "", fmt.Errorf("%q has more than 18 decimals", ether)
	}
	return r.Num().String(), nil
}

// RedactURL drops user info, path and query, which may carry API keys.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "<unparseable>"
	}
	return u.Scheme + "://" + u.Host
}

func portOf(u *url.URL) int {
	if p := u.Port(); p != "" {
		n, _ := strconv.Atoi(p)
		return n
	}
	if u.Scheme == "https" {
		return 443
	}
	return 80
}
