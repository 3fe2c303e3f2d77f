// Package config loads the chainwarden agent's HCL configuration: defaults, then the file, then validation, with
// every error naming the file and line it is about. The file is decoded into raw blocks (durations as text); Load
// turns them into a Config of typed values. Node, reference and volume specs belong to the packages that use them
// (nodespec, ebs): this package only decodes them and points their field errors at the file and line.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/fielderr"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/restart"
	"github.com/chainwarden/chainwarden/internal/restored"
)

// Config is the agent's configuration, validated, with defaults applied.
type Config struct {
	Consul     Consul
	Nomad      *Nomad // nil: no discovery
	Listen     string
	Interval   time.Duration
	Timeout    time.Duration // a probe's deadline
	HeadMaxAge time.Duration
	LogLevel   string
	StateDir   string // local state shared with `chainwarden volume` (restore marks); default /var/lib/chainwarden
	Nodes      []nodespec.Node
	References []nodespec.Reference
	Volumes    []ebs.Volume
	// Restart turns on the restarts of stalled nodes through Nomad; nil: off (the default).
	Restart *restart.Policy

	// PushPollInterval is how often a node whose heads arrive by push (its ws subscription is up) is still probed:
	// the probe checks what push does not say (peers, sync state, chain id) and that the node answers at all.
	PushPollInterval time.Duration

	// File is the path the configuration came from ("" for one built in code).
	File string
}

// Consul says how to reach the local Consul agent. Token and TLS also come from the standard CONSUL_* environment
// variables (CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_CACERT, ...), so no secret needs to sit in the file.
type Consul struct {
	Address         string
	KVPrefix        string
	DeregisterAfter time.Duration
	CheckTTL        time.Duration
	// HeadPublishers is how many nodes per service publish their head to KV (bounded publishers, internal/heads).
	HeadPublishers int
}

// Nomad turns on discovery of chain nodes from the allocations on the local Nomad client. NOMAD_* environment
// variables (NOMAD_TOKEN, NOMAD_CACERT, ...) are honoured.
type Nomad struct {
	Address string `hcl:"address,optional"`
	Enabled *bool  `hcl:"enabled,optional"`
}

// raw is the file as written.
type raw struct {
	Consul     rawConsul            `hcl:"consul,block"`
	Nomad      *Nomad               `hcl:"nomad,block"`
	Listen     string               `hcl:"listen,optional"`
	Interval   string               `hcl:"interval,optional"`
	Timeout    string               `hcl:"timeout,optional"`
	HeadMaxAge string               `hcl:"head_max_age,optional"`
	LogLevel   string               `hcl:"log_level,optional"`
	StateDir   string               `hcl:"state_dir,optional"`
	Nodes      []nodespec.Node      `hcl:"node,block"`
	References []nodespec.Reference `hcl:"reference,block"`
	Volumes    []VolumeBlock        `hcl:"volume,block"`
	Restart    *RestartBlock        `hcl:"restart,block"`

	PushPollInterval string `hcl:"push_poll_interval,optional"`
}

type rawConsul struct {
	Address         string `hcl:"address,optional"`
	KVPrefix        string `hcl:"kv_prefix,optional"`
	DeregisterAfter string `hcl:"deregister_after,optional"`
	CheckTTL        string `hcl:"check_ttl,optional"`
	HeadPublishers  *int   `hcl:"head_publishers,optional"`
}

// Defaults for the top level.
const (
	DefaultListen     = "127.0.0.1:9464"
	DefaultInterval   = time.Second
	DefaultHeadMaxAge = time.Minute
	DefaultDeregister = 10 * time.Minute
	// MinCheckTTL is check_ttl's default floor: three rounds of figures (registry.DefaultFreshEvery, 10 s), each of
	// which refreshes every check, so a dead agent's nodes go critical within 30 s and a big host makes one call per
	// check per 10 s (a 10 s TTL would need one per 3.3 s).
	MinCheckTTL = 30 * time.Second
)

// DefaultPushPollInterval is push_poll_interval's default (never below the interval).
const DefaultPushPollInterval = 10 * time.Second

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
	var r raw
	if diags := gohcl.DecodeBody(file.Body, evalContext(), &r); diags.HasErrors() {
		return nil, diagError(diags)
	}
	v := &validator{file: filename, src: file.Body.(*hclsyntax.Body)}
	cfg := v.config(&r)
	if len(v.errs) > 0 {
		return nil, errors.New(strings.Join(v.errs, "\n"))
	}
	return cfg, nil
}

// diagError renders HCL diagnostics as one error of "file:line,col: summary; detail" lines, in file order: gohcl
// reports a body's blocks and attributes in map order, and the same file must give the same error every time.
func diagError(diags hcl.Diagnostics) error {
	diags = slices.Clone(diags)
	slices.SortStableFunc(diags, func(a, b *hcl.Diagnostic) int { return cmpSubject(a.Subject, b.Subject) })
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
	return errors.New(strings.Join(lines, "\n"))
}

// cmpSubject orders diagnostic subjects by file and place; no subject goes last.
func cmpSubject(a, b *hcl.Range) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return cmp.Or(strings.Compare(a.Filename, b.Filename), cmp.Compare(a.Start.Byte, b.Start.Byte))
}

// validator turns the raw file into a Config, collecting every error with the file and line it is about.
type validator struct {
	file string
	src  *hclsyntax.Body
	errs []string
}

func (v *validator) config(r *raw) *Config {
	c := &Config{File: v.file, Nomad: r.Nomad, LogLevel: r.LogLevel, Listen: r.Listen, StateDir: r.StateDir,
		Nodes: r.Nodes, References: r.References}
	if c.StateDir == "" {
		c.StateDir = restored.DefaultStateDir
	} else if !filepath.IsAbs(c.StateDir) {
		v.errf(v.attrRange("", "", "state_dir"), "state_dir: %q is not an absolute path", c.StateDir)
	}
	top := func(attr string) hcl.Range { return v.attrRange("", "", attr) }
	consul := func(attr string) hcl.Range { return v.attrRange("consul", "", attr) }
	if c.Listen == "" {
		c.Listen = DefaultListen
	} else if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		v.errf(top("listen"), "listen: %q is not host:port", c.Listen)
	}
	c.Interval = v.duration(r.Interval, DefaultInterval, top("interval"), "interval")
	if c.Interval < 100*time.Millisecond {
		v.errf(top("interval"), "interval: %s is shorter than 100ms", c.Interval)
	}
	c.PushPollInterval = v.duration(r.PushPollInterval, max(DefaultPushPollInterval, c.Interval), top("push_poll_interval"), "push_poll_interval")
	if c.PushPollInterval < c.Interval {
		v.errf(top("push_poll_interval"), "push_poll_interval: %s is shorter than the interval %s", c.PushPollInterval, c.Interval)
	}
	// A probe's deadline defaults to the interval, so one pass never takes longer than one interval.
	c.Timeout = v.duration(r.Timeout, c.Interval, top("timeout"), "timeout")
	c.HeadMaxAge = v.duration(r.HeadMaxAge, DefaultHeadMaxAge, top("head_max_age"), "head_max_age")
	switch strings.ToLower(c.LogLevel) {
	case "", "trace", "debug", "info", "warn", "error":
	default:
		v.errf(top("log_level"), "log_level: %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	c.Consul.Address = r.Consul.Address
	c.Consul.KVPrefix = kvlayout.New(r.Consul.KVPrefix).Prefix()
	c.Consul.DeregisterAfter = v.duration(r.Consul.DeregisterAfter, DefaultDeregister, consul("deregister_after"), "deregister_after")
	// A check's TTL must outlast one pass plus one interval. Three intervals, but not under MinCheckTTL: with many
	// nodes, a pass that registers them all can take seconds (Consul writes each new service to its servers), and
	// checks expiring then would flap every node.
	c.Consul.CheckTTL = v.duration(r.Consul.CheckTTL, max(3*c.Interval, MinCheckTTL), consul("check_ttl"), "check_ttl")
	if c.Consul.CheckTTL <= c.Interval {
		v.errf(consul("check_ttl"), "check_ttl: %s must be longer than the interval %s", c.Consul.CheckTTL, c.Interval)
	}
	c.Consul.HeadPublishers = heads.DefaultPublishers
	if r.Consul.HeadPublishers != nil {
		c.Consul.HeadPublishers = *r.Consul.HeadPublishers
		if c.Consul.HeadPublishers < 2 {
			v.errf(consul("head_publishers"), "head_publishers: %d is below 2 (one publisher alone cannot be corroborated)", c.Consul.HeadPublishers)
		}
	}
	if c.Consul.DeregisterAfter < time.Minute {
		v.errf(consul("deregister_after"), "deregister_after: Consul's minimum is 1m")
	}

	seen := map[string]bool{}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		if seen[n.Name] {
			v.errf(v.blockRange("node", n.Name), "duplicate node %q", n.Name)
		}
		seen[n.Name] = true
		n.Source = nodespec.SourceConfig
		v.fieldErrs("node", n.Name, n.Normalize())
	}
	for i := range c.References {
		r := &c.References[i]
		v.fieldErrs("reference", r.Name, r.Normalize(c.Nodes))
	}
	c.Volumes = v.volumes(r.Volumes)
	c.Restart = v.restart(r.Restart, c)
	return c
}

// fieldErrs records a block's field errors at the attribute each names, or at the block.
func (v *validator) fieldErrs(typ, label string, errs fielderr.List) {
	for _, e := range errs {
		r := v.blockRange(typ, label)
		if e.Field != "" {
			r = v.attrRange(typ, label, e.Field)
		}
		v.errf(r, "%s", e.Msg)
	}
}

func (v *validator) errf(r hcl.Range, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if r.Filename != "" {
		msg = fmt.Sprintf("%s:%d,%d: %s", r.Filename, r.Start.Line, r.Start.Column, msg)
	} else if v.file != "" {
		msg = v.file + ": " + msg
	}
	v.errs = append(v.errs, msg)
}

// blockRange finds where a labelled block is declared in the source.
func (v *validator) blockRange(typ, label string) hcl.Range {
	for _, b := range v.src.Blocks {
		if b.Type == typ && len(b.Labels) > 0 && b.Labels[0] == label {
			return b.DefRange()
		}
	}
	return hcl.Range{}
}

// attrRange finds an attribute of a labelled block (label "" for a top-level attribute, or an unlabelled block);
// the block itself when the attribute is not written.
func (v *validator) attrRange(typ, label, attr string) hcl.Range {
	if typ == "" {
		if a, ok := v.src.Attributes[attr]; ok {
			return a.SrcRange
		}
		return hcl.Range{}
	}
	for _, b := range v.src.Blocks {
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
