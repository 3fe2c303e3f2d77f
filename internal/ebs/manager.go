package ebs

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/restored"
)

// Tags chainwarden puts on volumes and snapshots. A family (chain/network/client) is what a snapshot can restore:
// a geth mainnet snapshot is never restored for an erigon or a sepolia node.
const (
	TagName          = "Name"
	TagVolume        = "chainwarden:volume"
	TagFamily        = "chainwarden:family"
	TagChain         = "chainwarden:chain"
	TagNetwork       = "chainwarden:network"
	TagClient        = "chainwarden:client"
	TagClientVersion = "chainwarden:client-version"
	TagHeight        = "chainwarden:height"
	TagNode          = "chainwarden:node"
	TagRestoredFrom  = "chainwarden:restored-from"
	// A snapshot taken by `chainwarden job run` before it upgrades a job: the job and the version (and modify
	// index) it was running, the point `chainwarden job revert -restore-volumes` restores.
	TagJob            = "chainwarden:job"
	TagJobVersion     = "chainwarden:job-version"
	TagJobModifyIndex = "chainwarden:job-modify-index"
	TagPurpose        = "chainwarden:purpose"
	PurposePreUpgrade = "pre-upgrade"
	// A volume replaced by a restore: detached and kept, no longer found by ensure (its chainwarden:volume tag
	// becomes "<name>@replaced"), with when and by which snapshot's restore.
	TagReplacedAt = "chainwarden:replaced-at"
	TagReplacedBy = "chainwarden:replaced-by-restore-of"
)

// Family is the snapshot family of a volume: chain/network/client.
func Family(v Volume) string { return v.Chain + "/" + v.Network + "/" + v.Client }

// Paths are the host files chainwarden writes; tests point them into a temp dir.
type Paths struct {
	Fstab          string // default /etc/fstab
	NomadConfigDir string // where the host_volume config files go; default /etc/nomad.d
	LockDir        string // per-volume lock files; default /run/chainwarden
	// StateDir keeps the marks of volumes restored from a snapshot, read by the agent (internal/restored);
	// default /var/lib/chainwarden.
	StateDir string
}

// Timeouts bound every wait; zero values take the defaults.
type Timeouts struct {
	Lock     time.Duration // waiting for another ensure of the same volume on this host (default 15m)
	Create   time.Duration // volume creating -> available (default 10m)
	Attach   time.Duration // attaching -> attached (default 5m)
	Device   time.Duration // attached -> block device present (default 2m)
	Snapshot time.Duration // snapshot pending -> completed (default 8h: a first full mainnet snapshot is slow)
	Call     time.Duration // one EC2 API call, retries included (default 2m)
	Modify   time.Duration // a volume modification to reach "optimizing", the new size seen (default 30m)
	Detach   time.Duration // detaching -> detached (default 5m)
}

// Manager does the volume work for one instance.
type Manager struct {
	EC2     EC2API
	Host    Host
	Log     hclog.Logger
	Devices DeviceFinder
	Consul  ConsulAgent // Snapshot only: the node's check, its service, maintenance
	KV      ConsulKV    // Snapshot only: the node's head, for the height tag
	// Height, when set, is the node's height as the agent of this process last probed it (agent.Agent.Height):
	// the snapshot's height tag, before the head in KV (which only a head publisher has, internal/heads).
	Height func(node string) (uint64, bool)
	// KVLayout is where the agents publish heads (their consul kv_prefix); zero value: the default prefix.
	KVLayout kvlayout.Layout
	Paths    Paths
	Timeouts
	// Clock runs ebs's own waits (attachment, device, lock, drain, the snapshot schedule); nil is the wall clock.
	// The SDK's waiters (volume available, snapshot completed) sleep on the wall clock.
	Clock clock.Clock

	Poll          time.Duration // between polls of ebs's own waits, and the SDK waiters' first pause (default 2s)
	MaxPoll       time.Duration // the SDK waiters back off up to this (default 15 × Poll)
	PageSize      int32         // results per DescribeVolumes/DescribeSnapshots page, 5 to 500 (default 500)
	ProgressEvery time.Duration // between progress lines while waiting (default 10s)
	// BootID makes the CreateVolume ClientToken unique per boot, so two ensures at once create one volume but a
	// volume deleted since the last boot is not "found again" by an old token. Default: the kernel's boot_id.
	BootID string
	// NoNomadConfig skips the static host_volume file (the Nomad dynamic host volume plugin path).
	NoNomadConfig bool
	// Freezer overrides the writer freeze of Snapshot (tests); nil = from the volume's spec.
	Freezer func(vol Volume) Freezer
	// HostFS is the host's filesystems as GrowIfNeeded sees them; nil = the real ones.
	HostFS HostFS
}

// Init fills in the defaults. Every method does it too; call Init before one Manager is shared by goroutines
// (the agent's snapshot scheduler, grower and volume operations), so they only ever read it.
func (m *Manager) Init() { m.defaults() }

func (m *Manager) defaults() {
	if m.Log == nil {
		m.Log = hclog.NewNullLogger()
	}
	if m.Devices == nil {
		m.Devices = NVMe{}
	}
	if m.Clock == nil {
		m.Clock = clock.Real
	}
	if m.KVLayout == (kvlayout.Layout{}) {
		m.KVLayout = kvlayout.New("")
	}
	if m.Paths.Fstab == "" {
		m.Paths.Fstab = "/etc/fstab"
	}
	if m.Paths.NomadConfigDir == "" {
		m.Paths.NomadConfigDir = "/etc/nomad.d"
	}
	if m.Paths.LockDir == "" {
		m.Paths.LockDir = "/run/chainwarden"
	}
	if m.Paths.StateDir == "" {
		m.Paths.StateDir = restored.DefaultStateDir
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&m.Timeouts.Lock, 15*time.Minute)
	def(&m.Timeouts.Create, 10*time.Minute)
	def(&m.Timeouts.Attach, 5*time.Minute)
	def(&m.Timeouts.Device, 2*time.Minute)
	def(&m.Timeouts.Snapshot, 8*time.Hour)
	def(&m.Timeouts.Call, 2*time.Minute)
	def(&m.Timeouts.Modify, 30*time.Minute)
	def(&m.Timeouts.Detach, 5*time.Minute)
	def(&m.Poll, 2*time.Second)
	def(&m.MaxPoll, 15*m.Poll)
	if m.MaxPoll < m.Poll {
		m.MaxPoll = m.Poll
	}
	def(&m.ProgressEvery, 10*time.Second)
	switch { // what EC2 accepts as MaxResults; written only when off, as defaults() runs again and again
	case m.PageSize <= 0 || m.PageSize > 500:
		m.PageSize = 500 // the most DescribeVolumes returns per page
	case m.PageSize < 5:
		m.PageSize = 5
	}
	if m.BootID == "" {
		b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err == nil {
			m.BootID = strings.TrimSpace(string(b))
		}
	}
}

// call bounds one EC2 call (the SDK retries inside it) and turns its error into a sentinel.
func call[T any](ctx context.Context, m *Manager, op string, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, m.Timeouts.Call)
	defer cancel()
	out, err := f(ctx)
	if err != nil {
		var zero T
		return zero, awsErr(op, err)
	}
	return out, nil
}

// progress logs a line every ProgressEvery (on the Manager's clock) while something is awaited.
type progress struct {
	m           *Manager
	what        string
	timeout     time.Duration
	start, last time.Time
}

func (m *Manager) progress(what string, timeout time.Duration) *progress {
	now := m.Clock.Now()
	return &progress{m: m, what: what, timeout: timeout, start: now, last: now}
}

func (p *progress) waiting(status string) {
	now := p.m.Clock.Now()
	if now.Sub(p.last) >= p.m.ProgressEvery {
		p.m.Log.Info("waiting", "for", p.what, "status", status, "elapsed", now.Sub(p.start).Round(time.Second),
			"timeout", p.timeout)
		p.last = now
	}
}

func (p *progress) done() {
	if elapsed := p.m.Clock.Now().Sub(p.start); elapsed > p.m.ProgressEvery {
		p.m.Log.Info("done waiting", "for", p.what, "elapsed", elapsed.Round(time.Second))
	}
}

// waitFor polls check every Poll on the Manager's clock until it reports done, logging progress, failing with
// ErrTimeout once timeout has passed. check returns a short status for the progress line.
func (m *Manager) waitFor(ctx context.Context, what string, timeout time.Duration,
	check func(ctx context.Context) (done bool, status string, err error)) error {
	return m.poll(ctx, what, timeout, func() time.Duration { return m.Poll }, check)
}

// waitBackoff is waitFor with pauses that grow from Poll to MaxPoll (for waits that may take many minutes, where
// polling every Poll would only spend API calls).
func (m *Manager) waitBackoff(ctx context.Context, what string, timeout time.Duration,
	check func(ctx context.Context) (done bool, status string, err error)) error {
	b := backoff.New(m.Poll, m.MaxPoll)
	return m.poll(ctx, what, timeout, b.Next, check)
}

func (m *Manager) poll(ctx context.Context, what string, timeout time.Duration, pause func() time.Duration,
	check func(ctx context.Context) (done bool, status string, err error)) error {
	p := m.progress(what, timeout)
	deadline := p.start.Add(timeout)
	for {
		done, status, err := check(ctx)
		if err != nil {
			return err
		}
		if done {
			p.done()
			return nil
		}
		p.waiting(status)
		left := deadline.Sub(m.Clock.Now())
		if left <= 0 {
			return fmt.Errorf("waiting for %s (last status %q): %w after %s", what, status, ErrTimeout, timeout)
		}
		if err := clock.Sleep(ctx, m.Clock, min(pause(), left)); err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
	}
}

// waiterErr reports how an SDK waiter ended: stop is the error its Retryable gave (already wrapped), else the
// caller's context ended, else the waiter ran out of time.
func waiterErr(ctx context.Context, what string, timeout time.Duration, status string, stop, err error) error {
	switch {
	case err == nil:
		return nil
	case stop != nil:
		return stop
	case ctx.Err() != nil:
		return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
	default:
		return fmt.Errorf("waiting for %s (last status %q): %w after %s", what, status, ErrTimeout, timeout)
	}
}

// lock takes an exclusive flock on LockDir/name.lock, waiting at most the lock timeout.
func (m *Manager) lock(ctx context.Context, name string) (unlock func(), err error) {
	if err := os.MkdirAll(m.Paths.LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("create lock dir: %w", err)
	}
	path := filepath.Join(m.Paths.LockDir, name+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	err = m.waitFor(ctx, "lock "+path+" (another chainwarden volume command holds it)", m.Timeouts.Lock,
		func(context.Context) (bool, string, error) {
			err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			if err == nil {
				return true, "", nil
			}
			if err == syscall.EWOULDBLOCK {
				return false, "held", nil
			}
			return false, "", fmt.Errorf("lock %s: %w", path, err)
		})
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func tagsOf(tags []types.Tag) map[string]string {
	out := map[string]string{}
	for _, t := range tags {
		out[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return out
}

func ec2Tags(m map[string]string) []types.Tag {
	var out []types.Tag
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out
}

func familyTags(v Volume) map[string]string {
	return map[string]string{
		TagVolume: v.Name, TagFamily: Family(v), TagChain: v.Chain, TagNetwork: v.Network, TagClient: v.Client,
	}
}

func filter(name string, values ...string) types.Filter {
	return types.Filter{Name: aws.String(name), Values: values}
}
