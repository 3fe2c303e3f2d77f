// Package verdict judges a probe result against the network head and a node's thresholds (critical, warning or
// passing, with the reasons), renders it as the line a person reads in the Consul UI, and damps flapping: N bad
// probes to get worse, M good ones to get better.
package verdict

import (
	"cmp"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"syscall"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
)

// Thresholds are a node's verdict limits, after the per-kind defaults were applied.
type Thresholds struct {
	WarnLag uint64
	MaxLag  uint64
	// WarnBehind and MaxBehind judge lag in time: how long the node has been behind the network head (since the
	// network first had a height the node has not reached). 0: not judged.
	WarnBehind time.Duration
	MaxBehind  time.Duration
	// TimeOnly turns off WarnLag and MaxLag: a node that gives only time thresholds is judged the same on a 1 s and
	// a 12 s chain.
	TimeOnly bool
	// MaxFinalizedBehind: a node whose finalized block has been behind the network's for longer is warning. 0: not
	// judged (and not asked for).
	MaxFinalizedBehind time.Duration
	MaxBlockAge        time.Duration
	MinPeers           uint64
	FailAfter          int
	PassAfter          int
	MinBalanceWei      string // decimal wei; "" = no wallet check
	MaxFailedRuns      int    // failed Chainlink job runs among the recent ones; -1 = no check
}

// KindDefaults are the thresholds of each kind where a node sets none.
var KindDefaults = map[probe.Kind]Thresholds{
	probe.Ethereum: {WarnLag: 2, MaxLag: 10, MaxBlockAge: 2 * time.Minute, MinPeers: 1, FailAfter: 2, PassAfter: 3,
		MaxFinalizedBehind: 2 * time.Minute, MaxFailedRuns: -1},
	probe.CometBFT:  {WarnLag: 2, MaxLag: 10, MaxBlockAge: 2 * time.Minute, MinPeers: 1, FailAfter: 2, PassAfter: 3, MaxFailedRuns: -1},
	probe.Chainlink: {FailAfter: 2, PassAfter: 3, MaxFailedRuns: -1},
}

// Status is a node's health, ordered from best to worst.
type Status int

// The statuses, with Consul's names.
const (
	Passing Status = iota
	Warning
	Critical
)

func (s Status) String() string {
	switch s {
	case Passing:
		return "passing"
	case Warning:
		return "warning"
	default:
		return "critical"
	}
}

// ParseStatus reads a Consul check status.
func ParseStatus(s string) (Status, bool) {
	switch s {
	case "passing":
		return Passing, true
	case "warning":
		return Warning, true
	case "critical":
		return Critical, true
	}
	return Critical, false
}

// Head is the network head a node is compared with.
type Head struct {
	Height   uint64
	Node     string // which node or reference reported it
	Observed time.Time
}

// Input is everything one judgement needs.
type Input struct {
	Kind      probe.Kind
	Result    probe.Result
	Head      Head          // zero Height: unknown
	BehindFor time.Duration // how long the node has been behind Head (0: at or above it)
	// Flag says why the network head does not count this node (not corroborated, on a fork); "": it counts.
	// FlagKey is Flag without figures that change every probe ("": Flag has none).
	Flag, FlagKey string
	// Finalized is the network's finalized block (0: unknown), from FinalizedNode; FinalizedBehindFor how long the
	// node's finalized block has been below it.
	Finalized          uint64
	FinalizedNode      string
	FinalizedBehindFor time.Duration
	WantChain          string // expected chain id (decimal) or CometBFT network; "" = any
	// Standby marks a Chainlink node of an active/standby pair: while the active one holds the database lock the
	// standby does not serve its API, and that is its normal state, not a failure.
	Standby    bool
	Thresholds Thresholds
	Now        time.Time
	// CatchUp is set for a node whose volume was just restored from a snapshot, with this probe already observed:
	// until it has caught up it is critical with a "catching up from snapshot" reason in place of being behind,
	// syncing and having an old newest block. nil: judged as any node.
	CatchUp *CatchUp
}

// Report is a judgement: the status, why it is not passing, and the figures behind it.
type Report struct {
	Status   Status
	Reasons  []string
	Probed   bool // a probe has been made (false: waiting for the first one)
	Height   uint64
	Head     uint64
	HeadNode string
	Lag      uint64
	// Behind is how long the node has been behind the head (0 at the head); it ticks, like BlockAge.
	Behind time.Duration
	// Finalized is the node's finalized block when HasFinalized.
	Finalized    uint64
	HasFinalized bool
	// Safe is the node's safe block when HasSafe (Ethereum's "safe" tag).
	Safe     uint64
	HasSafe  bool
	Peers    uint64
	BlockAge time.Duration // zero when unknown
	Err      string
	// Summary holds the figures of a node without heights (Chainlink: version, wallets, job runs).
	Summary string
	// Holding says why Status is not this probe's own verdict while a Damper holds it, e.g. "recovering: 1 of 3
	// good probes"; "" when the status is the probe's.
	Holding string
	// keys are the Reasons without their ticking figures (for Key); "" where a reason has none.
	keys []string
	// noFigures leaves the figures out of Output (for Key).
	noFigures bool
	// Note is what was done about the node, at the end of the output, e.g. "restarted 2m ago, 1 of 3 this hour";
	// NoteKey is the same without the figures that tick (Key uses it).
	Note, NoteKey string
	// CatchingUp: a node restored from a snapshot that has not caught up yet (Input.CatchUp); CaughtUp: one that
	// has, with this probe (its restore mark can go).
	CatchingUp, CaughtUp bool
}

// Judge decides a node's undamped status from one probe.
func Judge(in Input) Report {
	r := in.Result
	rep := Report{Probed: true, Height: r.Height, Peers: r.Peers, Finalized: r.Finalized, HasFinalized: r.HasFinalized,
		Safe: r.Safe, HasSafe: r.HasSafe}
	// ticking records a reason whose figures change every probe, with key, its form without them.
	ticking := func(s Status, key, format string, args ...any) {
		if s > rep.Status {
			rep.Status = s
		}
		rep.Reasons = append(rep.Reasons, fmt.Sprintf(format, args...))
		rep.keys = append(rep.keys, key)
	}
	bad := func(s Status, format string, args ...any) { ticking(s, "", format, args...) }
	if r.Err != nil {
		rep.Err = r.Err.Error()
		if in.Standby && in.Kind == probe.Chainlink && errors.Is(r.Err, syscall.ECONNREFUSED) {
			bad(Warning, "standby: API not serving (waiting for Chainlink's database lock)")
			return rep
		}
		if in.Kind != probe.Chainlink { // a Chainlink node that answered /health has more to say
			bad(Critical, "probe failed: %s", r.Err)
			return rep
		}
	}
	t := in.Thresholds
	if in.Kind == probe.Chainlink {
		rep.Summary = judgeChainlink(r, t, bad)
		return rep
	}
	// A node restored from a snapshot is behind, syncing and its newest block is old until it has caught up: that
	// is said as one reason, with how fast it goes and when it will be there.
	if in.CatchUp != nil && r.HasHeight {
		if caughtUp(r, in) {
			rep.CaughtUp = true
		} else {
			rep.CatchingUp = true
			rep.Head, rep.HeadNode = in.Head.Height, in.Head.Node
			if in.Head.Height > r.Height {
				rep.Lag = in.Head.Height - r.Height
			}
			bad(Critical, "%s", in.CatchUp.Line(r.Height, in.Head.Height))
		}
	}
	if in.WantChain != "" && r.ChainID != in.WantChain {
		bad(Critical, "wrong chain %s (want %s)", r.ChainID, in.WantChain)
	}
	if r.Syncing && !rep.CatchingUp {
		bad(Critical, "syncing")
	}
	if r.HasHeight && r.Height == 0 {
		bad(Critical, "at height 0, not synced")
	}
	if !r.BlockTime.IsZero() {
		rep.BlockAge = in.Now.Sub(r.BlockTime)
		if rep.BlockAge < 0 {
			rep.BlockAge = 0
		}
		if t.MaxBlockAge > 0 && rep.BlockAge > t.MaxBlockAge && !rep.CatchingUp {
			bad(Critical, "no new block for %s", roundAge(rep.BlockAge))
		}
	}
	if r.Peers < t.MinPeers {
		bad(Critical, "%d peers, want at least %d", r.Peers, t.MinPeers)
	}
	if in.Flag != "" {
		ticking(Critical, in.FlagKey, "%s", in.Flag)
	}
	if in.Head.Height > 0 && !rep.CatchingUp {
		rep.Head, rep.HeadNode = in.Head.Height, in.Head.Node
		if in.Head.Height > r.Height {
			rep.Lag = in.Head.Height - r.Height
			rep.Behind = max(in.BehindFor, 0)
		}
		switch {
		case t.TimeOnly:
		case rep.Lag > t.MaxLag:
			bad(Critical, "%d blocks behind, more than max_lag %d", rep.Lag, t.MaxLag)
		case rep.Lag > t.WarnLag:
			bad(Warning, "%d blocks behind, more than warn_lag %d", rep.Lag, t.WarnLag)
		}
		switch {
		case t.MaxBehind > 0 && rep.Behind > t.MaxBehind:
			ticking(Critical, "behind the head for more than max_behind "+t.MaxBehind.String(),
				"behind the head for %s, more than max_behind %s", roundAge(rep.Behind), t.MaxBehind)
		case t.WarnBehind > 0 && rep.Behind > t.WarnBehind:
			ticking(Warning, "behind the head for more than warn_behind "+t.WarnBehind.String(),
				"behind the head for %s, more than warn_behind %s", roundAge(rep.Behind), t.WarnBehind)
		}
	}
	if t.MaxFinalizedBehind > 0 && r.HasFinalized && in.Finalized > r.Finalized && in.FinalizedBehindFor > t.MaxFinalizedBehind {
		ticking(Warning, fmt.Sprintf("finalized block %d behind the network's %d (%s)", r.Finalized, in.Finalized, in.FinalizedNode),
			"finalized block %d behind the network's %d (%s) for %s, more than max_finalized_behind %s",
			r.Finalized, in.Finalized, in.FinalizedNode, roundAge(in.FinalizedBehindFor), t.MaxFinalizedBehind)
	}
	return rep
}

// caughtUp: a restored node is at the head within warn_lag and no longer syncing; with no head known, when it is
// not syncing and its newest block is fresh.
func caughtUp(r probe.Result, in Input) bool {
	if r.Syncing {
		return false
	}
	if in.Head.Height > 0 {
		return r.Height+in.Thresholds.WarnLag >= in.Head.Height
	}
	return !r.BlockTime.IsZero() && (in.Thresholds.MaxBlockAge == 0 || in.Now.Sub(r.BlockTime) <= in.Thresholds.MaxBlockAge)
}

// judgeChainlink judges a Chainlink node, one reason per cause, and returns its figures: version, wallets against
// the minimum, failed job runs against the limit, and the age of those it reused.
func judgeChainlink(r probe.Result, t Thresholds, bad func(Status, string, ...any)) string {
	switch {
	case r.Err == nil:
	case errors.Is(r.Err, probe.ErrDatabaseUnreachable):
		bad(Critical, "%s", r.Err)
	default:
		bad(Critical, "probe failed: %s", r.Err)
	}
	if len(r.FailingChecks) > 0 {
		var b strings.Builder
		for i, c := range r.FailingChecks {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(c.Name)
			if c.Output != "" {
				b.WriteString(" (" + c.Output + ")")
			}
		}
		bad(Critical, "failing checks: %s", b.String())
	}
	var figures []string
	if r.Version != "" {
		figures = append(figures, "version "+r.Version)
	}
	var min *big.Int
	if t.MinBalanceWei != "" {
		min, _ = new(big.Int).SetString(t.MinBalanceWei, 10)
	}
	for _, w := range r.Wallets {
		switch {
		case w.Disabled:
			figures = append(figures, fmt.Sprintf("wallet %s disabled", w.Address))
		case w.Balance == nil:
			if min != nil {
				bad(Critical, "balance of %s unknown", w.Address)
			}
		case min != nil && w.Balance.Cmp(min) < 0:
			bad(Critical, "wallet %s has %s ETH, below min_balance %s", w.Address, weiToEther(w.Balance), weiToEther(min))
		case min != nil:
			figures = append(figures, fmt.Sprintf("wallet %s %s ETH (min %s)", w.Address, weiToEther(w.Balance), weiToEther(min)))
		default:
			figures = append(figures, fmt.Sprintf("wallet %s %s ETH", w.Address, weiToEther(w.Balance)))
		}
	}
	if r.RunsChecked {
		runs := fmt.Sprintf("%d of the last %d job runs failed", r.FailedRuns, probe.ChainlinkRecentRuns)
		if t.MaxFailedRuns >= 0 && r.FailedRuns > t.MaxFailedRuns {
			var jobs []string
			for _, f := range r.RunFailures {
				name := "job " + f.JobID
				if f.Job != "" {
					name = fmt.Sprintf("job %q", f.Job)
				}
				jobs = append(jobs, name+": "+f.Error)
			}
			msg := fmt.Sprintf("%s, more than max_failed_runs %d", runs, t.MaxFailedRuns)
			if len(jobs) > 0 {
				msg += ": " + strings.Join(jobs, "; ")
			}
			bad(Warning, "%s", msg)
		} else {
			figures = append(figures, runs)
		}
	}
	if r.AuthAge > 0 && (len(r.Wallets) > 0 || r.RunsChecked) {
		figures = append(figures, fmt.Sprintf("keys and runs as of %s ago", roundAge(r.AuthAge)))
	}
	return strings.Join(figures, ", ")
}

// Output is the line shown in the Consul UI, e.g.
// "height 1234, 2 behind head 1236 (geth-b), 5 peers, last block 1s ago", prefixed by the reasons when not passing,
// and by what holds the status when damping does ("recovering: 1 of 3 good probes; last probe: ...").
func (r Report) Output() string {
	if !r.Probed {
		return "waiting for the first probe"
	}
	out := r.probeOutput()
	if r.Holding != "" {
		out = r.Holding + "; last probe: " + out
	}
	if r.Note != "" {
		out += "; " + r.Note
	}
	if len(out) > 4000 { // Consul keeps 4 KB of check output
		out = out[:4000] + "…"
	}
	return out
}

// probeOutput is what this probe says: its reasons, then its figures.
func (r Report) probeOutput() string {
	var parts []string
	if r.CatchingUp { // the reason has height, head, speed and ETA already
		parts = append(parts, fmt.Sprintf("%d peers", r.Peers))
	} else if r.Err == "" && (r.Height > 0 || r.Head > 0) {
		parts = append(parts, fmt.Sprintf("height %d", r.Height))
		switch {
		case r.Head == 0:
			parts = append(parts, "head unknown")
		case r.Lag == 0:
			parts = append(parts, fmt.Sprintf("at head %d", r.Head))
		case r.Behind > 0:
			parts = append(parts, fmt.Sprintf("%d behind head %d (%s) for %s", r.Lag, r.Head, r.HeadNode, roundAge(r.Behind)))
		default:
			parts = append(parts, fmt.Sprintf("%d behind head %d (%s)", r.Lag, r.Head, r.HeadNode))
		}
		parts = append(parts, fmt.Sprintf("%d peers", r.Peers))
		if r.BlockAge > 0 {
			parts = append(parts, fmt.Sprintf("last block %s ago", roundAge(r.BlockAge)))
		}
		if r.HasFinalized {
			parts = append(parts, fmt.Sprintf("finalized %d", r.Finalized))
		}
		// The safe block, where it says more than the head and the finalized block (geth --dev's is its head).
		if r.HasSafe && r.Safe != r.Height && (!r.HasFinalized || r.Safe != r.Finalized) {
			parts = append(parts, fmt.Sprintf("safe %d", r.Safe))
		}
	}
	stats := strings.Join(parts, ", ")
	if stats == "" {
		stats = r.Summary
	}
	if r.noFigures {
		stats = ""
	}
	if len(r.Reasons) == 0 {
		if stats == "" {
			return "healthy"
		}
		return stats
	}
	out := strings.Join(r.Reasons, "; ")
	if stats != "" {
		out += " — " + stats
	}
	return out
}

// Key is Output without its figures (height, head, lag, peers, blocks' age, finalized and safe blocks, a Chainlink
// node's summary) and without the figures that tick in its reasons (how long the node has been behind): what must
// reach Consul at once. Figures follow within registry.DefaultFreshEvery; a new block alone writes nothing.
func (r Report) Key() string {
	r.noFigures = true
	if len(r.keys) == len(r.Reasons) {
		reasons := make([]string, len(r.Reasons))
		for i, k := range r.keys {
			reasons[i] = cmp.Or(k, r.Reasons[i])
		}
		r.Reasons = reasons
	}
	r.Note = r.NoteKey
	return r.Output()
}

func roundAge(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

func weiToEther(wei *big.Int) string {
	r := new(big.Rat).SetFrac(wei, new(big.Int).Exp(big.NewInt(10), big.NewInt(18), nil))
	return strings.TrimRight(strings.TrimRight(r.FloatString(6), "0"), ".")
}
