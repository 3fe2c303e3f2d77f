// Package config loads the chainwarden agent's HCL configuration: defaults, then the file, then Validate, with
// every error naming the file and line it is about.
package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/chainwarden/chainwarden/internal/ebs"
)

// Node kinds the agent can probe.
const (
	KindEthereum  = "ethereum"
	KindCometBFT  = "cometbft"
	KindChainlink = "chainlink"
)

// Config is the whole agent configuration.
type Config struct {
	Consul     Consul      `hcl:"consul,block"`
	Nomad      *Nomad      `hcl:"nomad,block"`
	Listen     string      `hcl:"listen,optional"`
	Interval   string      `hcl:"interval,optional"`
	Timeout    string      `hcl:"timeout,optional"`
	HeadMaxAge string      `hcl:"head_max_age,optional"`
	LogLevel   string      `hcl:"log_level,optional"`
	Nodes      []Node      `hcl:"node,block"`
	References []Reference `hcl:"reference,block"`
	// VolumeBlocks are the volume blocks as written; Validate turns them into Volumes.
	VolumeBlocks []VolumeBlock `hcl:"volume,block"`
	Volumes      []ebs.Volume

	// Parsed forms, filled by Validate.
	IntervalDur   time.Duration
	TimeoutDur    time.Duration
	HeadMaxAgeDur time.Duration

	// File is the path the configuration came from ("" for one built in code).
	File string
	src  *hclsyntax.Body
}

// Consul says how to reach the local Consul agent. Token and TLS also come from the standard CONSUL_* environment
// variables (CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_CACERT, ...), so no secret needs to sit in the file.
type Consul struct {
	Address         string `hcl:"address,optional"`
	KVPrefix        string `hcl:"kv_prefix,optional"`
	DeregisterAfter string `hcl:"deregister_after,optional"`
	CheckTTL        string `hcl:"check_ttl,optional"`

	DeregisterAfterDur time.Duration
	CheckTTLDur        time.Duration
}

// Nomad turns on discovery of chain nodes from the allocations on the local Nomad client. NOMAD_* environment
// variables (NOMAD_TOKEN, NOMAD_CACERT, ...) are honoured.
type Nomad struct {
	Address string `hcl:"address,optional"`
	Enabled *bool  `hcl:"enabled,optional"`
}

// Node is one chain node this agent watches.
type Node struct {
	Name    string `hcl:"name,label"`
	Kind    string `hcl:"kind"`
	RPC     string `hcl:"rpc"`
	Service string `hcl:"service"`
	// Address and Port registered in Consul; default: the host and port of RPC.
	Address string   `hcl:"address,optional"`
	Port    int      `hcl:"port,optional"`
	Tags    []string `hcl:"tags,optional"`
	Client  string   `hcl:"client,optional"`
	Role    string   `hcl:"role,optional"`

	ChainID *uint64 `hcl:"chain_id,optional"` // ethereum
	Network string  `hcl:"network,optional"`  // cometbft chain id; chain name for ethereum meta

	WarnLag     *uint64 `hcl:"warn_lag,optional"`
	MaxLag      *uint64 `hcl:"max_lag,optional"`
	MaxBlockAge string  `hcl:"max_block_age,optional"`
	MinPeers    *uint64 `hcl:"min_peers,optional"`
	FailAfter   *int    `hcl:"fail_after,optional"`
	PassAfter   *int    `hcl:"pass_after,optional"`

	// Chainlink: API credentials (from env() or file(), never inline) and the wallet and job-run checks.
	APIKey        string `hcl:"api_key,optional"`
	APISecret     string `hcl:"api_secret,optional"`
	MinBalance    string `hcl:"min_balance,optional"` // in ether, e.g. "0.5"
	MaxFailedRuns *int   `hcl:"max_failed_runs,optional"`

	// Filled by Validate.
	Thresholds Thresholds
	Source     string // "config" or "nomad"
	Range      hcl.Range
}

// Thresholds are a node's verdict limits after per-kind defaults were applied.
type Thresholds struct {
	WarnLag       uint64
	MaxLag        uint64
	MaxBlockAge   time.Duration
	MinPeers      uint64
	FailAfter     int
	PassAfter     int
	MinBalanceWei string // decimal wei; "" = no wallet check
	MaxFailedRuns int    // failed Chainlink job runs among the recent ones; -1 = no check
}

// Reference is an external head for a service (a provider such as Infura), probed like a node of that service.
type Reference struct {
	Name    string `hcl:"name,label"`
	Service string `hcl:"service"`
	RPC     string `hcl:"rpc"`
	Kind    string `hcl:"kind,optional"`

	Range hcl.Range
}

// Defaults for the top level.
const (
	DefaultListen     = "127.0.0.1:9464"
	DefaultInterval   = time.Second
	DefaultHeadMaxAge = time.Minute
	DefaultKVPrefix   = "chainwarden"
	DefaultDeregister = 10 * time.Minute
	MinCheckTTL       = 10 * time.Second
)

// KindDefaults are the per-kind thresholds used where a node block sets none.
var KindDefaults = map[string]Thresholds{
	KindEthereum:  {WarnLag: 2, MaxLag: 10, MaxBlockAge: 2 * time.Minute, MinPeers: 1, FailAfter: 2, PassAfter: 3, MaxFailedRuns: -1},
	KindCometBFT:  {WarnLag: 2, MaxLag: 10, MaxBlockAge: 2 * time.Minute, MinPeers: 1, FailAfter: 2, PassAfter: 3, MaxFailedRuns: -1},
	KindChainlink: {FailAfter: 2, PassAfter: 3, MaxFailedRuns: -1},
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(src, path)
}

// Parse decodes and validates configuration source; filename is used in error messages.
func Parse(src []byte, filename string) (*Config, error) {
	file, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diagError(diags)
	}
	cfg := &Config{File: filename}
	if diags := gohcl.DecodeBody(file.Body, evalContext(), cfg); diags.HasErrors() {
		return nil, diagError(diags)
	}
	cfg.src = file.Body.(*hclsyntax.Body)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// diagError renders HCL diagnostics as one error of "file:line,col: summary; detail" lines.
func diagError(diags hcl.Diagnostics) error {
	var lines []string
	seen := map[hcl.Pos]bool{}
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		// One error per place: HCL follows a failed function call with an "unknown value" error at the same spot.
		if d.Subject != nil {
			if seen[d.Subject.Start] {
				continue
			}
			seen[d.Subject.Start] = true
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += "; " + d.Detail
		}
		if d.Subject != nil {
			msg = fmt.Sprintf("%s:%d,%d: %s", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column, msg)
		}
		lines = append(lines, msg)
	}
	return fmt.Errorf("%s", strings.Join(lines, "\n"))
}

// Validate applies defaults and checks every value, naming the file and line of the first bad one.
func (c *Config) Validate() error {
	v := &validator{cfg: c}
	v.top()
	seen := map[string]bool{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		n.Range = v.blockRange("node", n.Name)
		if seen[n.Name] {
			v.errf(n.Range, "duplicate node %q", n.Name)
		}
		seen[n.Name] = true
		if n.Source == "" {
			n.Source = "config"
		}
		v.node(n)
	}
	for i := range c.References {
		r := &c.References[i]
		r.Range = v.blockRange("reference", r.Name)
		v.reference(r)
	}
	v.volumes()
	if len(v.errs) > 0 {
		return fmt.Errorf("%s", strings.Join(v.errs, "\n"))
	}
	return nil
}

type validator struct {
	cfg  *Config
	errs []string
}

func (v *validator) errf(r hcl.Range, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if r.Filename != "" {
		msg = fmt.Sprintf("%s:%d,%d: %s", r.Filename, r.Start.Line, r.Start.Column, msg)
	} else if v.cfg.File != "" {
		msg = v.cfg.File + ": " + msg
	}
	v.errs = append(v.errs, msg)
}

// blockRange finds where a labelled block is declared in the source.
func (v *validator) blockRange(typ, label string) hcl.Range {
	if v.cfg.src == nil {
		return hcl.Range{}
	}
	for _, b := range v.cfg.src.Blocks {
		if b.Type == typ && len(b.Labels) > 0 && b.Labels[0] == label {
			return b.DefRange()
		}
	}
	return hcl.Range{}
}

// attrRange finds an attribute of a labelled block (label "" for a top-level attribute, or an unlabelled block).
func (v *validator) attrRange(typ, label, attr string) hcl.Range {
	if v.cfg.src == nil {
		return hcl.Range{}
	}
	if typ == "" {
		if a, ok := v.cfg.src.Attributes[attr]; ok {
			return a.SrcRange
		}
		return hcl.Range{}
	}
	for _, b := range v.cfg.src.Blocks {
		if b.Type != typ || (label != "" && (len(b.Labels) == 0 || b.Labels[0] != label)) {
			continue
		}
		if a, ok := b.Body.Attributes[attr]; ok {
			return a.SrcRange
		}
		return b.DefRange()
	}
	return hcl.Range{}
}

func (v *validator) duration(s string, def time.Duration, r hcl.Range, name string) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		v.errf(r, "%s: %q is not a positive duration (like \"1s\" or \"2m\")", name, s)
		return def
	}
	return d
}

func (v *validator) top() {
	c := v.cfg
	if c.Listen == "" {
		c.Listen = DefaultListen
	} else if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		v.errf(v.attrRange("", "", "listen"), "listen: %q is not host:port", c.Listen)
	}
	c.IntervalDur = v.duration(c.Interval, DefaultInterval, v.attrRange("", "", "interval"), "interval")
	if c.IntervalDur < 100*time.Millisecond {
		v.errf(v.attrRange("", "", "interval"), "interval: %s is shorter than 100ms", c.IntervalDur)
	}
	// A probe's deadline defaults to the interval, so one pass never takes longer than one interval.
	c.TimeoutDur = v.duration(c.Timeout, c.IntervalDur, v.attrRange("", "", "timeout"), "timeout")
	c.HeadMaxAgeDur = v.duration(c.HeadMaxAge, DefaultHeadMaxAge, v.attrRange("", "", "head_max_age"), "head_max_age")
	switch strings.ToLower(c.LogLevel) {
	case "", "trace", "debug", "info", "warn", "error":
	default:
		v.errf(v.attrRange("", "", "log_level"), "log_level: %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if c.Consul.KVPrefix == "" {
		c.Consul.KVPrefix = DefaultKVPrefix
	}
	c.Consul.KVPrefix = strings.Trim(c.Consul.KVPrefix, "/")
	c.Consul.DeregisterAfterDur = v.duration(c.Consul.DeregisterAfter, DefaultDeregister,
		v.attrRange("consul", "", "deregister_after"), "deregister_after")
	// A check's TTL must outlast one pass plus one interval. Three intervals, but not under MinCheckTTL: with many
	// nodes, a pass that registers them all can take seconds (Consul writes each new service to its servers), and
	// checks expiring then would flap every node.
	c.Consul.CheckTTLDur = v.duration(c.Consul.CheckTTL, max(3*c.IntervalDur, MinCheckTTL), v.attrRange("consul", "", "check_ttl"), "check_ttl")
	if c.Consul.CheckTTLDur <= c.IntervalDur {
		v.errf(v.attrRange("consul", "", "check_ttl"), "check_ttl: %s must be longer than the interval %s", c.Consul.CheckTTLDur, c.IntervalDur)
	}
	if c.Consul.DeregisterAfterDur < time.Minute {
		v.errf(v.attrRange("consul", "", "deregister_after"), "deregister_after: Consul's minimum is 1m")
	}
}

// serviceName follows Consul's DNS-safe naming; a dot would break consul-template's tag syntax.
var serviceName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})$`)

func (v *validator) node(n *Node) {
	at := func(attr string) hcl.Range { return v.attrRange("node", n.Name, attr) }
	if n.Range.Filename == "" && n.Source != "config" {
		at = func(string) hcl.Range { return hcl.Range{} }
	}
	if !serviceName.MatchString(n.Name) {
		v.errf(n.Range, "node %q: the name must be letters, digits and dashes", n.Name)
	}
	def, ok := KindDefaults[n.Kind]
	if !ok {
		v.errf(at("kind"), "node %q: kind %q is not one of ethereum, cometbft, chainlink", n.Name, n.Kind)
		return
	}
	if !serviceName.MatchString(n.Service) {
		v.errf(at("service"), "node %q: service %q must be letters, digits and dashes (no dots)", n.Name, n.Service)
	}
	u, err := url.Parse(n.RPC)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.errf(at("rpc"), "node %q: rpc %q is not an http(s) URL", n.Name, redactURL(n.RPC))
	} else {
		if n.Address == "" {
			n.Address = u.Hostname()
		}
		if n.Port == 0 {
			n.Port = portOf(u)
		}
	}
	switch n.Kind {
	case KindEthereum:
		if n.ChainID == nil {
			v.errf(n.Range, "node %q: chain_id is required for an ethereum node (a node on the wrong chain must be caught)", n.Name)
		}
	case KindCometBFT:
		if n.Network == "" {
			v.errf(n.Range, "node %q: network (the chain id, e.g. \"irishub-1\") is required for a cometbft node", n.Name)
		}
	}
	t := def
	if n.WarnLag != nil {
		t.WarnLag = *n.WarnLag
	}
	if n.MaxLag != nil {
		t.MaxLag = *n.MaxLag
	}
	if n.MinPeers != nil {
		t.MinPeers = *n.MinPeers
	}
	if n.FailAfter != nil {
		t.FailAfter = *n.FailAfter
	}
	if n.PassAfter != nil {
		t.PassAfter = *n.PassAfter
	}
	t.MaxBlockAge = v.duration(n.MaxBlockAge, def.MaxBlockAge, at("max_block_age"), "node \""+n.Name+"\": max_block_age")
	if n.Kind != KindChainlink && t.WarnLag > t.MaxLag {
		v.errf(at("warn_lag"), "node %q: warn_lag %d is above max_lag %d", n.Name, t.WarnLag, t.MaxLag)
	}
	if t.FailAfter < 1 || t.PassAfter < 1 {
		v.errf(n.Range, "node %q: fail_after and pass_after must be at least 1", n.Name)
	}
	if n.MinBalance != "" {
		wei, err := EtherToWei(n.MinBalance)
		if err != nil {
			v.errf(at("min_balance"), "node %q: min_balance: %v", n.Name, err)
		}
		t.MinBalanceWei = wei
	}
	if n.MaxFailedRuns != nil {
		t.MaxFailedRuns = *n.MaxFailedRuns
	}
	if n.Kind != KindChainlink && (n.APIKey != "" || n.MinBalance != "" || n.MaxFailedRuns != nil) {
		v.errf(n.Range, "node %q: api_key, min_balance and max_failed_runs are for chainlink nodes", n.Name)
	}
	if (n.MinBalance != "" || n.MaxFailedRuns != nil) && (n.APIKey == "" || n.APISecret == "") {
		v.errf(n.Range, "node %q: min_balance and max_failed_runs need api_key and api_secret (use env() or file())", n.Name)
	}
	n.Thresholds = t
}

func (v *validator) reference(r *Reference) {
	at := func(attr string) hcl.Range { return v.attrRange("reference", r.Name, attr) }
	if r.Kind == "" {
		for _, n := range v.cfg.Nodes {
			if n.Service == r.Service {
				r.Kind = n.Kind
				break
			}
		}
		if r.Kind == "" {
			r.Kind = KindEthereum
		}
	}
	if r.Kind != KindEthereum && r.Kind != KindCometBFT {
		v.errf(at("kind"), "reference %q: kind %q must be ethereum or cometbft", r.Name, r.Kind)
	}
	u, err := url.Parse(r.RPC)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The URL may hold an API key: never print it.
		v.errf(at("rpc"), "reference %q: rpc is not an http(s) URL", r.Name)
	}
}

func portOf(u *url.URL) int {
	if p := u.Port(); p != "" {
		var n int
		fmt.Sscanf(p, "%d", &n)
		return n
	}
	if u.Scheme == "https" {
		return 443
	}
	return 80
}

// redactURL drops user info, path and query, which may carry API keys.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "<unparseable>"
	}
	return u.Scheme + "://" + u.Host
}

// NormalizeNode validates a node that did not come from the file (one discovered from Nomad task meta), applying
// the same defaults and rules as a node block.
func NormalizeNode(n *Node) error {
	v := &validator{cfg: &Config{}}
	if n.Source == "" {
		n.Source = "nomad"
	}
	v.node(n)
	if len(v.errs) > 0 {
		return fmt.Errorf("%s", strings.Join(v.errs, "\n"))
	}
	return nil
}
