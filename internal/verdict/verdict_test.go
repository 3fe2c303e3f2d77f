package verdict

import (
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
)

var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func eth() Thresholds { return KindDefaults[probe.Ethereum] }

func healthy(h uint64) probe.Result {
	return probe.Result{Height: h, HasHeight: true, Peers: 5, ChainID: "4242", BlockTime: now.Add(-time.Second)}
}

func TestJudge(t *testing.T) {
	head := Head{Height: 1236, Node: "geth-b"}
	cases := []struct {
		name   string
		kind   probe.Kind
		result probe.Result
		head   Head
		th     Thresholds
		want   Status
		reason string // substring of the output
	}{
		{"at head", probe.Ethereum, healthy(1236), head, eth(), Passing, "height 1236, at head 1236, 5 peers, last block 1s ago"},
		{"2 behind is within warn_lag", probe.Ethereum, healthy(1234), head, eth(), Passing, "height 1234, 2 behind head 1236 (geth-b), 5 peers, last block 1s ago"},
		{"3 behind warns", probe.Ethereum, healthy(1233), head, eth(), Warning, "3 blocks behind, more than warn_lag 2"},
		{"10 behind still warns", probe.Ethereum, healthy(1226), head, eth(), Warning, "10 blocks behind"},
		{"11 behind is critical", probe.Ethereum, healthy(1225), head, eth(), Critical, "11 blocks behind, more than max_lag 10"},
		{"ahead of head", probe.Ethereum, healthy(1240), head, eth(), Passing, "height 1240"},
		{"unknown head", probe.Ethereum, healthy(10), Head{}, eth(), Passing, "head unknown"},
		{"probe error", probe.Ethereum, probe.Result{Err: errors.New("eth_chainId: timeout")}, head, eth(), Critical, "probe failed: eth_chainId: timeout"},
		{"wrong chain", probe.Ethereum, func() probe.Result { r := healthy(1236); r.ChainID = "1"; return r }(), head, eth(), Critical, "wrong chain 1 (want 4242)"},
		{"syncing", probe.Ethereum, func() probe.Result { r := healthy(1236); r.Syncing = true; return r }(), head, eth(), Critical, "syncing"},
		{"height 0 not syncing", probe.Ethereum, probe.Result{HasHeight: true, Peers: 3, ChainID: "4242"}, Head{}, eth(), Critical, "at height 0, not synced"},
		{"no peers", probe.Ethereum, func() probe.Result { r := healthy(1236); r.Peers = 0; return r }(), head, eth(), Critical, "0 peers, want at least 1"},
		{"stale block", probe.Ethereum, func() probe.Result { r := healthy(1236); r.BlockTime = now.Add(-5 * time.Minute); return r }(), head, eth(), Critical, "no new block for 5m0s"},
		{"chainlink healthy", probe.Chainlink, probe.Result{}, Head{}, KindDefaults[probe.Chainlink], Passing, "healthy"},
		{"chainlink failing", probe.Chainlink, probe.Result{FailingChecks: []probe.Check{{Name: "EVM.1.HeadTracker"}}}, Head{}, KindDefaults[probe.Chainlink], Critical, "failing checks: EVM.1.HeadTracker"},
		{"chainlink low balance", probe.Chainlink, probe.Result{Wallets: []probe.Wallet{{Address: "0xabc", Balance: big.NewInt(1e17)}}}, Head{},
			Thresholds{MinBalanceWei: "500000000000000000", MaxFailedRuns: -1}, Critical, "wallet 0xabc has 0.1 ETH, below min_balance 0.5"},
		{"chainlink failed runs", probe.Chainlink, probe.Result{RunsChecked: true, FailedRuns: 3}, Head{},
			Thresholds{MaxFailedRuns: 1}, Warning, "3 of the last 20 job runs failed, more than max_failed_runs 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := Judge(Input{Kind: c.kind, Result: c.result, Head: c.head, WantChain: "4242", Thresholds: c.th, Now: now})
			if rep.Status != c.want {
				t.Fatalf("status %s, want %s (%s)", rep.Status, c.want, rep.Output())
			}
			if !strings.Contains(rep.Output(), c.reason) {
				t.Fatalf("output %q does not contain %q", rep.Output(), c.reason)
			}
		})
	}
}

// Lag in time, the network head's flag and finality, judged beside lag in blocks.
func TestJudgeTimeFlagsAndFinality(t *testing.T) {
	head := Head{Height: 1236, Node: "geth-b"}
	timed := eth()
	timed.WarnBehind, timed.MaxBehind = 30*time.Second, 2*time.Minute
	timeOnly := timed
	timeOnly.TimeOnly = true
	final := func(f uint64) probe.Result { r := healthy(1236); r.Finalized, r.HasFinalized = f, true; return r }
	cases := []struct {
		name   string
		in     Input
		want   Status
		output string // the whole line
		key    string // Key(), when it is not the reasons of the output alone
	}{
		{name: "behind for a little while: shown, passing",
			in:     Input{Result: healthy(1235), Head: head, BehindFor: 1500 * time.Millisecond, Thresholds: timed},
			output: "height 1235, 1 behind head 1236 (geth-b) for 1.5s, 5 peers, last block 1s ago",
			key:    "healthy"},
		{name: "behind for longer than warn_behind", want: Warning,
			in: Input{Result: healthy(1235), Head: head, BehindFor: 45 * time.Second, Thresholds: timed},
			output: "behind the head for 45s, more than warn_behind 30s — height 1235, 1 behind head 1236 (geth-b) for 45s, " +
				"5 peers, last block 1s ago",
			key: "behind the head for more than warn_behind 30s"},
		{name: "behind for longer than max_behind", want: Critical,
			in:     Input{Result: healthy(1235), Head: head, BehindFor: 3 * time.Minute, Thresholds: timed},
			output: "behind the head for 3m0s, more than max_behind 2m0s — height 1235, 1 behind head 1236 (geth-b) for 3m0s, 5 peers, last block 1s ago"},
		{name: "time only: 20 blocks behind for 10s passes", in: Input{Result: healthy(1216), Head: head,
			BehindFor: 10 * time.Second, Thresholds: timeOnly},
			output: "height 1216, 20 behind head 1236 (geth-b) for 10s, 5 peers, last block 1s ago"},
		{name: "blocks and time: the worse wins", want: Critical, in: Input{Result: healthy(1216), Head: head,
			BehindFor: 10 * time.Second, Thresholds: timed},
			output: "20 blocks behind, more than max_lag 10 — height 1216, 20 behind head 1236 (geth-b) for 10s, 5 peers, last block 1s ago"},
		{name: "not corroborated", want: Critical, in: Input{Result: healthy(99999999), Head: head, Thresholds: timed,
			FlagKey: "head 99999999 not corroborated",
			Flag:    "head 99999999 not corroborated: the other sources put the chain at 1239 at most (geth-b is at 1236, its block made 1s ago; at most one block per 1s)"},
			output: "head 99999999 not corroborated: the other sources put the chain at 1239 at most (geth-b is at 1236, its block " +
				"made 1s ago; at most one block per 1s) — height 99999999, at head 1236, 5 peers, last block 1s ago",
			key: "head 99999999 not corroborated"},
		{name: "on a fork", want: Critical, in: Input{Result: healthy(1236), Head: head, Thresholds: timed,
			Flag: "on a fork: block 1234 is 0x0102030405 here, 0x0a0b0c0d0e on geth-b, geth-c"},
			output: "on a fork: block 1234 is 0x0102030405 here, 0x0a0b0c0d0e on geth-b, geth-c — height 1236, at head 1236, 5 peers, last block 1s ago"},
		{name: "finalized shown", in: Input{Result: final(1200), Head: head, Finalized: 1200, FinalizedNode: "geth-b",
			Thresholds: timed}, output: "height 1236, at head 1236, 5 peers, last block 1s ago, finalized 1200"},
		{name: "safe shown where it is not the finalized block", in: Input{Result: func() probe.Result {
			r := final(1200)
			r.Safe, r.HasSafe = 1216, true
			return r
		}(), Head: head, Finalized: 1200, FinalizedNode: "geth-b", Thresholds: timed},
			output: "height 1236, at head 1236, 5 peers, last block 1s ago, finalized 1200, safe 1216"},
		{name: "safe not repeated where it is the head (geth --dev)", in: Input{Result: func() probe.Result {
			r := final(1200)
			r.Safe, r.HasSafe = 1236, true
			return r
		}(), Head: head, Finalized: 1200, FinalizedNode: "geth-b", Thresholds: timed},
			output: "height 1236, at head 1236, 5 peers, last block 1s ago, finalized 1200"},
		{name: "finalized behind, within max_finalized_behind", in: Input{Result: final(1168), Head: head, Finalized: 1200,
			FinalizedNode: "geth-b", FinalizedBehindFor: time.Minute, Thresholds: timed},
			output: "height 1236, at head 1236, 5 peers, last block 1s ago, finalized 1168"},
		{name: "finalized behind for longer", want: Warning, in: Input{Result: final(1168), Head: head, Finalized: 1200,
			FinalizedNode: "geth-b", FinalizedBehindFor: 3 * time.Minute, Thresholds: timed},
			output: "finalized block 1168 behind the network's 1200 (geth-b) for 3m0s, more than max_finalized_behind 2m0s — " +
				"height 1236, at head 1236, 5 peers, last block 1s ago, finalized 1168",
			key: "finalized block 1168 behind the network's 1200 (geth-b)"},
		{name: "finality not judged when off", in: Input{Result: final(1168), Head: head, Finalized: 1200,
			FinalizedNode: "geth-b", FinalizedBehindFor: 3 * time.Minute, Thresholds: func() Thresholds {
				th := timed
				th.MaxFinalizedBehind = 0
				return th
			}()}, output: "height 1236, at head 1236, 5 peers, last block 1s ago, finalized 1168"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.in.Kind, c.in.WantChain, c.in.Now = probe.Ethereum, "4242", now
			rep := Judge(c.in)
			if rep.Status != c.want || rep.Output() != c.output {
				t.Fatalf("got  %s %q\nwant %s %q", rep.Status, rep.Output(), c.want, c.output)
			}
			key := c.key
			if key == "" { // the reasons, without how long the node has been behind; "healthy" when there are none
				key, _, _ = strings.Cut(c.output, " — ")
				key = strings.ReplaceAll(key, "behind the head for 3m0s, more", "behind the head for more")
				if !strings.Contains(c.output, " — ") {
					key = "healthy"
				}
			}
			if rep.Key() != key {
				t.Fatalf("key %q\nwant %q", rep.Key(), key)
			}
		})
	}
}

func TestChainlinkStandby(t *testing.T) {
	refused := fmt.Errorf("GET /health: %w", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})
	th := KindDefaults[probe.Chainlink]
	rep := Judge(Input{Kind: probe.Chainlink, Result: probe.Result{Err: refused}, Standby: true, Thresholds: th, Now: now})
	if rep.Status != Warning || !strings.HasPrefix(rep.Output(), "standby: API not serving") {
		t.Fatalf("standby: %s %q", rep.Status, rep.Output())
	}
	// The active node refusing connections is down; a standby failing otherwise is critical too.
	if rep := Judge(Input{Kind: probe.Chainlink, Result: probe.Result{Err: refused}, Thresholds: th, Now: now}); rep.Status != Critical {
		t.Fatalf("active refusing: %s", rep.Status)
	}
	other := probe.Result{Err: errors.New("GET /health: HTTP 503")}
	if rep := Judge(Input{Kind: probe.Chainlink, Result: other, Standby: true, Thresholds: th, Now: now}); rep.Status != Critical {
		t.Fatalf("standby failing health: %s", rep.Status)
	}
}

func TestOutputIsTheReadableLine(t *testing.T) {
	rep := Judge(Input{Kind: probe.Ethereum, Result: healthy(1234), Head: Head{Height: 1236, Node: "geth-b"},
		WantChain: "4242", Thresholds: eth(), Now: now})
	want := "height 1234, 2 behind head 1236 (geth-b), 5 peers, last block 1s ago"
	if got := rep.Output(); got != want {
		t.Fatalf("got %q want %q", got, want)
	}
	if got := (Report{}).Output(); got != "waiting for the first probe" {
		t.Fatalf("unprobed: %q", got)
	}
}

func TestDamper(t *testing.T) {
	d := NewDamper(2, 3)
	steps := []struct {
		raw  Status
		want Status
	}{
		{Passing, Critical}, {Passing, Critical}, {Passing, Passing}, // a new node proves itself 3 times
		{Critical, Passing}, {Passing, Passing}, // one bad probe is not enough
		{Critical, Passing}, {Critical, Critical}, // two are
		{Warning, Critical}, {Passing, Critical}, {Warning, Warning}, // three better than critical: to the worst of them
	}
	for i, s := range steps {
		got, _ := d.Observe(s.raw)
		if got != s.want {
			t.Fatalf("step %d: raw %s -> %s, want %s", i, s.raw, got, s.want)
		}
	}
	if got, changed := d.Observe(Passing); got != Warning || changed {
		t.Fatalf("one passing probe after warning: %s changed=%v", got, changed)
	}
}

// Each transition, with the output a person reads while the damper holds a status.
func TestDamperTransitions(t *testing.T) {
	type step struct {
		raw     Status
		want    Status
		holding string
	}
	for _, tc := range []struct {
		name                 string
		failAfter, passAfter int
		steps                []step
	}{
		{"new node proves itself", 2, 3, []step{
			{Passing, Critical, "recovering: 1 of 3 good probes"},
			{Passing, Critical, "recovering: 2 of 3 good probes"},
			{Passing, Passing, ""}}},
		{"warnings on the way up are not skipped", 2, 3, []step{
			{Warning, Critical, "recovering: 1 of 3 good probes"},
			{Warning, Critical, "recovering: 2 of 3 good probes"},
			{Passing, Warning, ""}, // critical -> warning, not passing after one passing probe
			{Passing, Warning, "recovering: 1 of 3 good probes"},
			{Passing, Warning, "recovering: 2 of 3 good probes"},
			{Passing, Passing, ""}}},
		{"a worse probe restarts the climb", 2, 2, []step{
			{Passing, Critical, "recovering: 1 of 2 good probes"},
			{Critical, Critical, ""},
			{Passing, Critical, "recovering: 1 of 2 good probes"},
			{Passing, Passing, ""}}},
		{"failing is held fail_after probes, then goes to the latest", 3, 1, []step{
			{Passing, Passing, ""},
			{Warning, Passing, "failing: 1 of 3 bad probes"},
			{Critical, Passing, "failing: 2 of 3 bad probes"},
			{Critical, Critical, ""}}},
		{"a good probe ends a failing streak", 2, 1, []step{
			{Passing, Passing, ""},
			{Critical, Passing, "failing: 1 of 2 bad probes"},
			{Passing, Passing, ""},
			{Critical, Passing, "failing: 1 of 2 bad probes"}}},
		{"warning held while getting better and worse", 2, 2, []step{
			{Warning, Critical, "recovering: 1 of 2 good probes"},
			{Warning, Warning, ""},
			{Critical, Warning, "failing: 1 of 2 bad probes"},
			{Passing, Warning, "recovering: 1 of 2 good probes"},
			{Passing, Passing, ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDamper(tc.failAfter, tc.passAfter)
			for i, s := range tc.steps {
				got, _ := d.Observe(s.raw)
				if got != s.want || d.Holding() != s.holding {
					t.Fatalf("step %d: raw %s -> %s %q, want %s %q", i, s.raw, got, d.Holding(), s.want, s.holding)
				}
			}
		})
	}
}

func TestDamperOppositeDirectionResets(t *testing.T) {
	d := NewDamper(2, 2)
	d.Observe(Passing)
	d.Observe(Passing) // passing now
	d.Observe(Warning)
	if got, _ := d.Observe(Passing); got != Passing {
		t.Fatal("expected passing")
	}
	if got, _ := d.Observe(Warning); got != Passing {
		t.Fatal("a worse streak must restart after a good probe")
	}
	if got, _ := d.Observe(Critical); got != Critical {
		t.Fatalf("second worse probe in a row moves to the latest raw status, got %s", got)
	}
}
