package registry

import (
	"context"
	"fmt"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/fakes"
)

// newLosing is newUnit on a new fake Consul and clock, counting the calls of OnStateLost.
func newLosing(t *testing.T) (*Registry, *fakes.Consul, *fakes.Clock, *int) {
	c, clk := fakes.NewConsul(), fakes.NewClock(time.Unix(1e9, 0))
	r := newUnit(t, "host-a", c, clk)
	lost := new(int)
	r.OnStateLost = func() { *lost++ }
	return r, c, clk, lost
}

func newUnit(t *testing.T, id string, c *fakes.Consul, clk *fakes.Clock) *Registry {
	t.Helper()
	r := New(c, Options{AgentID: id, TTL: 30 * time.Second, DeregisterAfter: time.Minute, Clock: clk}, hclog.NewNullLogger())
	r.backoff.Jitter = -1 // exact waits
	return r
}

func wantCheck(t *testing.T, c *fakes.Consul, id, status, output string) {
	t.Helper()
	st, out, ok := c.Check(CheckID(id))
	if status == "" {
		if ok {
			t.Fatalf("check of %s still there: %s %q", id, st, out)
		}
		return
	}
	if !ok || st != status || out != output {
		t.Fatalf("check of %s: %q %q (exists %v), want %q %q", id, st, out, ok, status, output)
	}
}

func TestSyncRegistersUpdatesAndDeregisters(t *testing.T) {
	c, clk := fakes.NewConsul(), fakes.NewClock(time.Unix(1e9, 0))
	r := newUnit(t, "host-a", c, clk)
	ctx := context.Background()
	if err := r.Sync(ctx, []Service{svc("geth-a", "passing", "height 10"), svc("geth-b", "warning", "3 behind")}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "geth-a", "passing", "height 10")
	wantCheck(t, c, "geth-b", "warning", "3 behind")
	s := c.ServiceByID("geth-a")
	if s.Service != "eth-devnet" || s.Meta["agent"] != "host-a" || s.Tags[0] != Tag {
		t.Fatalf("registration %+v", s)
	}
	regs := c.Calls("ServiceRegisterOpts")
	if err := r.Sync(ctx, []Service{svc("geth-a", "critical", "probe failed")}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "geth-a", "critical", "probe failed")
	wantCheck(t, c, "geth-b", "", "")
	if c.Calls("ServiceRegisterOpts") != regs {
		t.Fatal("an unchanged registration was written again")
	}
}

// Between status or key changes the check is only refreshed for its TTL: an output that differs only in a ticking
// figure is not written every probe.
func TestUpdatesFollowChangesNotProbes(t *testing.T) {
	c, clk := fakes.NewConsul(), fakes.NewClock(time.Unix(1e9, 0))
	r := newUnit(t, "host-a", c, clk)
	ctx := context.Background()
	s := svc("geth-a", "passing", "height 10, at head 10, last block 1s ago")
	s.Key = "height 10, at head 10"
	if err := r.Sync(ctx, []Service{s}); err != nil {
		t.Fatal(err)
	}
	writes := r.Writes()
	clk.Advance(time.Second)
	s.Output = "height 10, at head 10, last block 2s ago"
	if err := r.Sync(ctx, []Service{s}); err != nil {
		t.Fatal(err)
	}
	if got := r.Writes() - writes; got != 1 {
		t.Fatalf("%d writes in a pass between rounds, want 1 (the sentinel's, with the output the agent holds)", got)
	}
	wantCheck(t, c, "geth-a", "passing", "height 10, at head 10, last block 1s ago") // not the age-only change

	clk.Advance(time.Second)
	s.Output, s.Key = "height 11, at head 11, last block 0s ago", "height 11, at head 11"
	if err := r.Sync(ctx, []Service{s}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "geth-a", "passing", "height 11, at head 11, last block 0s ago")

	clk.Advance(10 * time.Second) // a third of the TTL: refreshed even with nothing new
	s.Output = "height 11, at head 11, last block 10s ago"
	if err := r.Sync(ctx, []Service{s}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "geth-a", "passing", "height 11, at head 11, last block 10s ago")
}

func TestAuditRemovesStaleServicesOfThisAgentOnly(t *testing.T) {
	c, clk := fakes.NewConsul(), fakes.NewClock(time.Unix(1e9, 0))
	ctx := context.Background()
	if err := newUnit(t, "host-a", c, clk).Sync(ctx, []Service{svc("old-node", "passing", "x"), svc("kept", "passing", "x")}); err != nil {
		t.Fatal(err)
	}
	if err := newUnit(t, "host-b", c, clk).Sync(ctx, []Service{svc("theirs", "passing", "x")}); err != nil {
		t.Fatal(err)
	}
	// The agent restarts with "old-node" removed from its config.
	if err := newUnit(t, "host-a", c, clk).Sync(ctx, []Service{svc("kept", "passing", "y")}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "old-node", "", "")
	wantCheck(t, c, "kept", "passing", "y")
	wantCheck(t, c, "theirs", "passing", "x")
}

// Consul restarted without its state: the next update finds the check gone, registers again, and says so.
func TestLostRegistrationIsRegisteredAgain(t *testing.T) {
	r, c, clk, lost := newLosing(t)
	ctx := context.Background()
	if err := r.Sync(ctx, []Service{svc("geth-a", "passing", "a")}); err != nil {
		t.Fatal(err)
	}
	c.Wipe(false)
	if err := r.Sync(ctx, []Service{svc("geth-a", "warning", "b")}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "geth-a", "warning", "b")
	if *lost != 1 {
		t.Fatalf("OnStateLost called %d times, want 1", *lost)
	}
	// Lost while unchanged: the audit (every 30 s) finds the service missing and registers it.
	c.Wipe(false)
	clk.Advance(31 * time.Second)
	if err := r.Sync(ctx, []Service{svc("geth-a", "warning", "b")}); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, c, "geth-a", "warning", "b")
}

// A local agent restarted without its state between rounds, with nothing new to write: the sentinel (one check
// touched a pass) finds it at the next pass, and every registration is back in that pass, not at the next round or
// audit.
func TestSentinelFindsLostStateBetweenRounds(t *testing.T) {
	r, c, clk, lost := newLosing(t)
	ctx := context.Background()
	services := []Service{svc("geth-a", "passing", "a"), svc("geth-b", "passing", "b"), svc("geth-c", "warning", "c")}
	if err := r.Sync(ctx, services); err != nil {
		t.Fatal(err)
	}
	for range 3 { // passes between rounds: one touch each, the check touched longest ago
		clk.Advance(time.Second)
		before := c.Calls("UpdateTTLOpts")
		if err := r.Sync(ctx, services); err != nil {
			t.Fatal(err)
		}
		if got := c.Calls("UpdateTTLOpts") - before; got != 1 {
			t.Fatalf("%d check updates in a pass between rounds, want 1", got)
		}
	}
	c.Wipe(false)
	clk.Advance(time.Second)
	if err := r.Sync(ctx, services); err != nil {
		t.Fatal(err)
	}
	for _, s := range services {
		wantCheck(t, c, s.ID, s.Status, s.Output)
	}
	if *lost != 1 {
		t.Fatalf("OnStateLost called %d times, want 1", *lost)
	}
}

// While Consul is down, Sync fails once, then returns at once without calling Consul until the backoff (1 s, 2 s,
// 4 s, ... capped at 30 s) has passed; when Consul answers again everything is registered again.
func TestBackoffWhileConsulIsDown(t *testing.T) {
	r, c, clk, lost := newLosing(t)
	ctx := context.Background()
	services := []Service{svc("geth-a", "passing", "a")}
	if err := r.Sync(ctx, services); err != nil {
		t.Fatal(err)
	}
	c.SetDown(true)
	services[0].Status = "critical" // a change to write
	var tries []time.Duration       // when Consul was called, relative to the first failure
	start := clk.Now()
	for range 80 {
		before := c.Calls("UpdateTTLOpts") + c.Calls("ServicesWithFilterOpts")
		_ = r.Sync(ctx, services)
		if c.Calls("UpdateTTLOpts")+c.Calls("ServicesWithFilterOpts") != before {
			tries = append(tries, clk.Now().Sub(start))
		}
		clk.Advance(500 * time.Millisecond)
	}
	if !r.Down() {
		t.Fatal("registry does not know consul is down")
	}
	var want []time.Duration // waits of 1, 2, 4, 8, 16 s
	for _, s := range []int{0, 1, 3, 7, 15, 31} {
		want = append(want, time.Duration(s)*time.Second)
	}
	if len(tries) < len(want) {
		t.Fatalf("tries at %v, want at least %v", tries, want)
	}
	for i, w := range want {
		if tries[i] != w {
			t.Fatalf("tries at %v, want %v", tries, want)
		}
	}
	c.Wipe(false)
	c.SetDown(false)
	for i := 0; r.Down(); i++ {
		if i > 70 {
			t.Fatal("never retried after consul came back")
		}
		_ = r.Sync(ctx, []Service{svc("geth-a", "warning", "recovered")})
		clk.Advance(500 * time.Millisecond)
	}
	wantCheck(t, c, "geth-a", "warning", "recovered")
	if *lost == 0 {
		t.Fatal("OnStateLost not called after the outage")
	}
}

// What the servers' catalog holds — the Consul UI, consul-template, `chainwarden status` — is never blank and gets
// every change of status and of reasons at once, and figures within FreshEvery, although the local agent holds
// output-only changes back; with one catalog write per pass for all checks.
func TestCatalogGetsOutputsTheAgentHoldsBack(t *testing.T) {
	c, clk := fakes.NewConsul(), fakes.NewClock(time.Unix(1e9, 0))
	r := New(c, Options{AgentID: "host-a", TTL: 30 * time.Second, DeregisterAfter: time.Minute, Clock: clk, Catalog: c},
		hclog.NewNullLogger())
	ctx := context.Background()
	catalog := func(id string) string {
		t.Helper()
		_, out, ok := c.CatalogCheck(CheckID(id))
		if !ok {
			t.Fatalf("no check of %s in the catalog", id)
		}
		return out
	}
	critical := func(id, reason, figures string) Service {
		s := svc(id, "critical", reason+" — "+figures)
		s.Key = reason
		return s
	}
	a := critical("geth-a", "0 peers, want at least 1", "height 10, last block 1s ago")
	b := critical("geth-b", "0 peers, want at least 1", "height 10, last block 1s ago")
	// Registered critical from the first probe: the registration carries no output and the update keeps the
	// status, so only the catalog write brings the reason.
	if err := r.Sync(ctx, []Service{a, b}); err != nil {
		t.Fatal(err)
	}
	if got := catalog("geth-a"); got != a.Output {
		t.Fatalf("catalog output %q, want %q", got, a.Output)
	}
	writes := c.CatalogWrites()

	// A new reason, same status: in the catalog at once, both checks in one write.
	clk.Advance(time.Second)
	a = critical("geth-a", "no new block for 2m0s", "height 10, last block 2m0s ago")
	b = critical("geth-b", "no new block for 2m0s", "height 10, last block 2m0s ago")
	if err := r.Sync(ctx, []Service{a, b}); err != nil {
		t.Fatal(err)
	}
	if catalog("geth-a") != a.Output || catalog("geth-b") != b.Output {
		t.Fatalf("reasons not in the catalog: %q %q", catalog("geth-a"), catalog("geth-b"))
	}
	if got := c.CatalogWrites() - writes; got != 1 {
		t.Fatalf("%d catalog writes for two changed checks, want 1", got)
	}

	// Figures only: held back until the next round, FreshEvery (10 s) after the last one (the first Sync), then
	// written: to the local agent (one call per check) and to the catalog (one write for both).
	reasonOut := a.Output
	for i := 1; i <= 10; i++ {
		clk.Advance(time.Second)
		a = critical("geth-a", "no new block for 2m0s", fmt.Sprintf("height 10, last block 2m%ds ago", i))
		b = critical("geth-b", "no new block for 2m0s", fmt.Sprintf("height 10, last block 2m%ds ago", i))
		writes, updates := c.CatalogWrites(), c.Calls("UpdateTTLOpts")
		if err := r.Sync(ctx, []Service{a, b}); err != nil {
			t.Fatal(err)
		}
		round := i == 9                                  // 10 s after the first Sync
		want, wantWrites, wantUpdates := reasonOut, 0, 1 // between rounds, the sentinel's touch of one check
		if round {
			want, wantWrites, wantUpdates = a.Output, 1, 2
		} else if i == 10 {
			want = fmt.Sprintf("no new block for 2m0s — height 10, last block 2m%ds ago", 9)
		}
		if got := catalog("geth-a"); got != want {
			t.Fatalf("%d s after the reason: catalog %q, want %q", i, got, want)
		}
		if got, gotU := c.CatalogWrites()-writes, c.Calls("UpdateTTLOpts")-updates; got != wantWrites || gotU != wantUpdates {
			t.Fatalf("%d s after the reason: %d catalog writes and %d check updates, want %d and %d", i, got, gotU, wantWrites, wantUpdates)
		}
	}
	// A status change reaches the catalog through the agent itself, with its output.
	clk.Advance(time.Second)
	p := svc("geth-a", "passing", "height 11, at head 11")
	if err := r.Sync(ctx, []Service{p, b}); err != nil {
		t.Fatal(err)
	}
	if st, out, _ := c.CatalogCheck(CheckID("geth-a")); st != "passing" || out != p.Output {
		t.Fatalf("catalog %s %q after a status change", st, out)
	}
}

// heldCatalog is a catalog whose servers hold every call (a leader election): it records the deadline each call
// came with and answers as a held call ends.
type heldCatalog struct {
	CatalogAPI
	deadlines []time.Duration // time left when the call came; -1 for none
}

func (h *heldCatalog) Node(node string, q *consulapi.QueryOptions) (consulapi.HealthChecks, *consulapi.QueryMeta, error) {
	left := time.Duration(-1)
	if dl, ok := q.Context().Deadline(); ok {
		left = time.Until(dl)
	}
	h.deadlines = append(h.deadlines, left)
	return nil, nil, context.DeadlineExceeded
}

// A pass's catalog write goes to the servers, which hold it through a leader election: it comes with a deadline of
// a quarter of the TTL, after the TTL updates, so a held write cannot make the checks expire.
func TestCatalogWriteIsBoundedByTheTTL(t *testing.T) {
	c, clk := fakes.NewConsul(), fakes.NewClock(time.Unix(1e9, 0))
	held := &heldCatalog{CatalogAPI: c}
	ttl := 20 * time.Second
	r := New(c, Options{AgentID: "host-a", TTL: ttl, DeregisterAfter: time.Minute, Clock: clk, Catalog: held},
		hclog.NewNullLogger())
	s := svc("geth-a", "critical", "0 peers, want at least 1 — height 10")
	s.Key = "0 peers, want at least 1"
	if err := r.Sync(context.Background(), []Service{s}); err != nil {
		t.Fatal(err)
	}
	if st, _, ok := c.Check(CheckID("geth-a")); !ok || st != "critical" {
		t.Fatalf("the check on the local agent: %q (exists %v), want critical before the catalog write", st, ok)
	}
	if len(held.deadlines) != 1 {
		t.Fatalf("%d catalog reads, want 1", len(held.deadlines))
	}
	if left := held.deadlines[0]; left < 0 || left > ttl/4 {
		t.Fatalf("the catalog read came with %v left, want a deadline of at most %v (a quarter of the TTL)", left, ttl/4)
	}
	if got, want := ServerTimeout(2*time.Second), time.Second; got != want {
		t.Fatalf("ServerTimeout(2s) = %v, want the floor %v", got, want)
	}
}
