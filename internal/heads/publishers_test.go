package heads

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// bounded is a store with bounded publishers, as agent id with max publishers per service.
func bounded(kv KV, txn Txn, sess Sessions, id string, max int) *Store {
	s := New(kv, txn, kvlayout.New(""), hclog.NewNullLogger(), nil)
	s.SetPublishers(Publishers{Max: max, Sessions: sess, Agent: id, MaxAge: time.Minute})
	return s
}

func head(node, status string, height uint64) Head {
	return Head{Service: "eth", Node: node, Height: height, Observed: time.Now(), Agent: "agent-" + node, Status: status}
}

// refresh reads the service's heads into every store, as their watches would.
func refresh(t *testing.T, stores ...*Store) {
	t.Helper()
	for _, s := range stores {
		s.mu.Lock()
		s.indexes["eth"] = 0 // a plain read, not a blocking one
		s.mu.Unlock()
		if err := s.WatchServiceOnce(context.Background(), "eth", 0); err != nil {
			t.Fatal(err)
		}
	}
}

// publish publishes one head from each store, in order.
func publish(t *testing.T, stores []*Store, hs ...Head) {
	t.Helper()
	for i, s := range stores {
		if _, err := s.Publish(context.Background(), []Head{hs[i]}, nil); err != nil {
			t.Fatalf("publish %s: %v", hs[i].Node, err)
		}
	}
}

func heldNodes(c *fakes.Consul) []string {
	pairs, _, _ := c.List("chainwarden/heads/eth/", nil)
	var out []string
	for _, p := range pairs {
		if p.Session != "" {
			out = append(out, p.Key[len("chainwarden/heads/eth/"):])
		}
	}
	return out
}

func TestPublishersClaimUpToMax(t *testing.T) {
	c := fakes.NewConsul()
	var ss []*Store
	for _, id := range []string{"a", "b", "c"} {
		ss = append(ss, bounded(c, c, c, "agent-"+id, 2))
	}
	for i, n := range []string{"a", "b", "c"} { // one after the other, each seeing the others' slots
		refresh(t, ss[i])
		publish(t, ss[i:i+1], head(n, StatusPassing, 10))
	}
	if got := heldNodes(c); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("held %v, want the first two", got)
	}
	// The third writes nothing per block: no key, no transaction.
	txns := c.Calls("Txn")
	refresh(t, ss...)
	publish(t, ss[2:], head("c", StatusPassing, 11))
	if c.Calls("Txn") != txns || c.Key("chainwarden/heads/eth/c") != nil {
		t.Fatal("a node without a slot wrote its head")
	}
	// A publisher updates its own key under its session (one lock op), keeping the slot.
	publish(t, ss[:1], head("a", StatusPassing, 11))
	if got := heldNodes(c); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after update: %v", got)
	}
	// a goes critical (no status): it gives its slot up; c takes it.
	publish(t, ss[:1], head("a", "", 12))
	refresh(t, ss...)
	publish(t, ss[2:], head("c", StatusPassing, 12))
	if got := heldNodes(c); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("after a went critical: %v, want b c", got)
	}
	// A node that reports nothing (its probe failed) lets its slot go too.
	if _, err := ss[1].Publish(context.Background(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := heldNodes(c); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("after b reported nothing: %v", got)
	}
}

// TestPublishersClaimWindow: 200 nodes see an empty network at once; with the claim window, a few claim in the
// first pass that has any claim (the others see those at their next pass) instead of all 200, and it settles at Max.
func TestPublishersClaimWindow(t *testing.T) {
	c := fakes.NewConsul()
	clk := fakes.NewClock(time.Unix(1_700_000_000, 0))
	var ss []*Store
	var hs []Head
	for i := range 200 {
		n := fmt.Sprintf("n%03d", i)
		s := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), clk)
		s.SetPublishers(Publishers{Max: 5, Sessions: c, Agent: "agent-" + n, MaxAge: time.Minute, ClaimWindow: DefaultClaimWindow})
		ss = append(ss, s)
		h := head(n, StatusPassing, 10)
		h.Observed = clk.Now()
		hs = append(hs, h)
	}
	ever := map[string]bool{}
	for pass := 0; pass < 15; pass++ { // a pass a second, each agent reading the view first
		refresh(t, ss...)
		publish(t, ss, hs...)
		for _, n := range heldNodes(c) {
			ever[n] = true
		}
		clk.Advance(time.Second)
		for i := range hs {
			hs[i].Observed = clk.Now()
		}
	}
	refresh(t, ss...)
	publish(t, ss, hs...)
	if got := heldNodes(c); len(got) != 5 {
		t.Fatalf("held %v, want 5", got)
	}
	// Expected about 4 in the first claiming pass (5 slots: a few more passes may add claims); 200 without the window.
	if len(ever) > 25 {
		t.Fatalf("%d nodes claimed a slot at some point: the claim window does not spread claims", len(ever))
	}
	t.Logf("%d of 200 nodes claimed at some point, 5 hold", len(ever))
}

func TestPublishersOverClaimConverges(t *testing.T) {
	c := fakes.NewConsul()
	var ss []*Store
	var hs []Head
	for _, n := range []string{"d", "a", "c", "b"} {
		ss = append(ss, bounded(c, c, c, "agent-"+n, 2))
		hs = append(hs, head(n, StatusPassing, 10))
	}
	refresh(t, ss...)
	publish(t, ss, hs...) // all at once: none saw the others
	if got := heldNodes(c); len(got) != 4 {
		t.Fatalf("held %v: every node should have claimed", got)
	}
	refresh(t, ss...)
	publish(t, ss, hs...)
	if got := heldNodes(c); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("held %v, want the first two by name", got)
	}
	refresh(t, ss...)
	publish(t, ss, hs...) // stable
	if got := heldNodes(c); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("held %v after another round", got)
	}
}

func TestPublishersWarningSharesUntilPassingComes(t *testing.T) {
	c := fakes.NewConsul()
	a, b, p := bounded(c, c, c, "agent-a", 2), bounded(c, c, c, "agent-b", 2), bounded(c, c, c, "agent-z", 2)
	refresh(t, a)
	publish(t, []*Store{a}, head("a", StatusWarning, 10))
	refresh(t, b)
	publish(t, []*Store{b}, head("b", StatusWarning, 10))
	if got := heldNodes(c); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("a network of lagging nodes shares no heads: %v", got)
	}
	// A passing node claims though both slots are held (by warning nodes); the last warning one gives way.
	refresh(t, p)
	publish(t, []*Store{p}, head("z", StatusPassing, 12))
	refresh(t, a, b, p)
	publish(t, []*Store{a, b, p}, head("a", StatusWarning, 11), head("b", StatusWarning, 11), head("z", StatusPassing, 12))
	if got := heldNodes(c); !slices.Equal(got, []string{"a", "z"}) {
		t.Fatalf("held %v, want a (warning) and z (passing)", got)
	}
}

func TestPublishersSessionInvalidated(t *testing.T) {
	c := fakes.NewConsul()
	s := bounded(c, c, c, "agent-a", 2)
	refresh(t, s)
	publish(t, []*Store{s}, head("a", StatusPassing, 10))
	sessions := c.Sessions()
	if len(sessions) != 1 || len(heldNodes(c)) != 1 {
		t.Fatalf("sessions %v held %v", sessions, heldNodes(c))
	}
	// Consul invalidates the session (the host's serfHealth failed): its keys go with it.
	c.ExpireSession(sessions[0])
	if c.Key("chainwarden/heads/eth/a") != nil {
		t.Fatal("the key outlived its session")
	}
	// The next write finds the session invalid, the one after makes a new session and claims again.
	if _, err := s.Publish(context.Background(), []Head{head("a", StatusPassing, 11)}, nil); err == nil {
		t.Fatal("a write under an invalid session succeeded")
	}
	publish(t, []*Store{s}, head("a", StatusPassing, 11))
	if got := c.Sessions(); len(got) != 1 || got[0] == sessions[0] || !slices.Equal(heldNodes(c), []string{"a"}) {
		t.Fatalf("sessions %v held %v", got, heldNodes(c))
	}
	// Close destroys the session: the slot is free at once.
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(c.Sessions()) != 0 || len(heldNodes(c)) != 0 {
		t.Fatalf("after close: sessions %v held %v", c.Sessions(), heldNodes(c))
	}
}

func TestPublishersOldKeysStillRead(t *testing.T) {
	c := fakes.NewConsul()
	old := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), nil) // an older agent: every node, no session
	if _, err := old.Publish(context.Background(), []Head{head("old", "", 20)}, nil); err != nil {
		t.Fatal(err)
	}
	a, b := bounded(c, c, c, "agent-a", 2), bounded(c, c, c, "agent-b", 2)
	refresh(t, a, b)
	publish(t, []*Store{a, b}, head("a", StatusPassing, 20), head("b", StatusPassing, 20))
	refresh(t, a)
	// The old key counts as a head, but it holds no slot: both new nodes publish.
	if got := heldNodes(c); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("held %v", got)
	}
	var names []string
	for _, h := range a.All("eth") {
		names = append(names, h.Node)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"a", "b", "old"}) {
		t.Fatalf("heads read: %v", names)
	}
}

func TestWatchServicesOnlyOwn(t *testing.T) {
	c := fakes.NewConsul()
	other := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), nil)
	s := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), nil)
	s.SetServices([]string{"eth"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); s.WatchServices(ctx, time.Minute) }()
	if _, err := other.Publish(ctx, []Head{head("x", "", 5), {Service: "irita", Node: "val0", Height: 7, Observed: time.Now()}}, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "eth heads read", func() error { return want(len(s.All("eth")) == 1) })
	// Switch to irita: the eth watch stops and its heads are dropped; irita's are read.
	s.SetServices([]string{"irita"})
	testenv.Eventually(t, 10*time.Second, "irita heads read, eth's dropped", func() error {
		return want(len(s.All("irita")) == 1 && len(s.All("eth")) == 0)
	})
	cancel()
	<-done
	for prefix := range c.Listed() {
		if prefix != "chainwarden/heads/eth/" && prefix != "chainwarden/heads/irita/" {
			t.Errorf("read %q: only the services' own prefixes may be read", prefix)
		}
	}
	if slices.Equal(s.Watched(), []string{"irita"}) == false {
		t.Errorf("watched %v", s.Watched())
	}
}

// TestSessionKeyGoesWithSessionRealConsul checks the Consul behaviour bounded publishers rely on: a key written by a
// txn lock op under a delete-behaviour session disappears when the session is destroyed, and another session's
// lock on it fails.
func TestSessionKeyGoesWithSessionRealConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	ctx := context.Background()
	s := bounded(c.Client.KV(), c.Client.Txn(), c.Client.Session(), "agent-a", 2)
	refresh(t, s)
	if _, err := s.Publish(ctx, []Head{head("a", StatusPassing, 10)}, nil); err != nil {
		t.Fatal(err)
	}
	p, _, err := c.Client.KV().Get("chainwarden/heads/eth/a", nil)
	if err != nil || p == nil || p.Session == "" {
		t.Fatalf("key %+v %v: want it held by a session", p, err)
	}
	// An update under the same session keeps the lock.
	if _, err := s.Publish(ctx, []Head{head("a", StatusPassing, 11)}, nil); err != nil {
		t.Fatal(err)
	}
	// Another session cannot take it.
	id, _, err := c.Client.Session().Create(&consulapi.SessionEntry{Behavior: consulapi.SessionBehaviorDelete}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ok, resp, _, err := c.Client.Txn().Txn(consulapi.TxnOps{{KV: &consulapi.KVTxnOp{Verb: consulapi.KVLock,
		Key: "chainwarden/heads/eth/a", Session: id}}}, nil)
	if err != nil || ok {
		t.Fatalf("another session locked a held key: %v %v", ok, err)
	}
	t.Logf("consul says: %s", resp.Errors[0].What)
	// Destroyed session: the key is gone, and a write under it says the session is invalid.
	if _, err := c.Client.Session().Destroy(p.Session, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the key goes with its session", func() error {
		p, _, err := c.Client.KV().Get("chainwarden/heads/eth/a", nil)
		if err != nil {
			return err
		}
		return want(p == nil)
	})
	if _, err := s.Publish(ctx, []Head{head("a", StatusPassing, 12)}, nil); err == nil || !sessionInvalid(err.Error()) {
		t.Fatalf("write under a destroyed session: %v", err)
	}
	if _, err := s.Publish(ctx, []Head{head("a", StatusPassing, 12)}, nil); err != nil {
		t.Fatal(err)
	}
	if p, _, err := c.Client.KV().Get("chainwarden/heads/eth/a", nil); err != nil || p == nil || p.Session == "" {
		t.Fatalf("not claimed again under a new session: %+v %v", p, err)
	}
}

// want is nil when ok, else an error for testenv.Eventually.
func want(ok bool) error {
	if ok {
		return nil
	}
	return errors.New("not yet")
}

// TestPublishersAcrossConsulServers: agents talking to different servers of a real 3-server cluster converge on
// Max publishers, and each one's watch (on its own server) sees the others' heads.
func TestPublishersAcrossConsulServers(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	cs := testenv.StartConsulServers(t, 3)
	ctx := context.Background()
	var ss []*Store
	var hs []Head
	for i, n := range []string{"a", "b", "c", "d"} {
		cl := cs.Servers[i%3].Client
		ss = append(ss, bounded(cl.KV(), cl.Txn(), cl.Session(), "agent-"+n, 2))
		hs = append(hs, head(n, StatusPassing, 10))
	}
	held := func() []string {
		pairs, _, err := cs.Servers[0].Client.KV().List("chainwarden/heads/eth/", &consulapi.QueryOptions{RequireConsistent: true})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range pairs {
			if p.Session != "" {
				out = append(out, strings.TrimPrefix(p.Key, "chainwarden/heads/eth/"))
			}
		}
		return out
	}
	refresh(t, ss...)
	publish(t, ss, hs...) // at once: over-claimed
	testenv.Eventually(t, 30*time.Second, "two publishers", func() error {
		for _, s := range ss {
			if err := s.WatchServiceOnce(ctx, "eth", 0); err != nil {
				return err
			}
		}
		for i := range hs {
			hs[i].Height++
		}
		publish(t, ss, hs...)
		if got := held(); !slices.Equal(got, []string{"a", "b"}) {
			return fmt.Errorf("held %v", got)
		}
		return nil
	})
	for _, s := range ss {
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := held(); len(got) != 0 {
		t.Fatalf("held after close: %v", got)
	}
}

// TestPublishersReclaimAfterLostSession: a publisher whose session Consul lost (its local agent wiped, servers
// reset) claims its slot again at once, not after the claim window: a network keeps its publishers.
func TestPublishersReclaimAfterLostSession(t *testing.T) {
	c := fakes.NewConsul()
	clk := fakes.NewClock(time.Unix(1_700_000_000, 0))
	s := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), clk)
	s.SetPublishers(Publishers{Max: 2, Sessions: c, Agent: "agent-a", MaxAge: time.Minute, ClaimWindow: DefaultClaimWindow})
	h := head("a", StatusPassing, 10)
	passes := 0
	for ; len(heldNodes(c)) == 0 && passes < 20; passes++ {
		h.Observed = clk.Now()
		refresh(t, s)
		publish(t, []*Store{s}, h)
		clk.Advance(time.Second)
	}
	if len(heldNodes(c)) != 1 || passes < 1 {
		t.Fatalf("claimed after %d passes: %v", passes, heldNodes(c))
	}
	c.ExpireSession(c.Sessions()[0])
	h.Height, h.Observed = 11, clk.Now()
	if _, err := s.Publish(context.Background(), []Head{h}, nil); err == nil {
		t.Fatal("a write under an expired session succeeded")
	}
	refresh(t, s)
	publish(t, []*Store{s}, h) // no time passed
	if got := heldNodes(c); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("held %v: the publisher did not claim its slot again at once", got)
	}
	// The agent's local Consul lost its state (registry.OnStateLost → Forget): the same.
	c.Wipe(false)
	s.Forget()
	refresh(t, s)
	publish(t, []*Store{s}, h)
	if got := heldNodes(c); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("held %v after a wipe", got)
	}
}

func TestClaimWindowStretchesWithSlowWrites(t *testing.T) {
	s := bounded(nil, nil, nil, "agent-a", 2)
	s.pub.ClaimWindow = DefaultClaimWindow
	if got := s.claimWindow(); got != DefaultClaimWindow {
		t.Fatalf("window %s", got)
	}
	for range 100 { // Consul answering writes in 3 s
		s.wrote(3 * time.Second)
	}
	if got := s.claimWindow(); got < 55*time.Second || got > 60*time.Second {
		t.Fatalf("window %s with 3 s writes, want about 20 of them", got)
	}
	for range 100 {
		s.wrote(10 * time.Millisecond)
	}
	if got := s.claimWindow(); got != DefaultClaimWindow {
		t.Fatalf("window %s once writes are fast again", got)
	}
}

// An agent whose ID changed (the hostname before, its Consul node name now) finds its node's key held by its run
// before, under the former ID (a crash: the session lives on while the host does). It lets that session go and
// claims the key; without FormerAgents it would take it for another agent's node of the same name and never publish.
func TestPublishersTakeOverFromFormerAgentID(t *testing.T) {
	for _, former := range []bool{true, false} {
		c := fakes.NewConsul()
		old := bounded(c, c, c, "ip-10-0-1-23", 2)
		h := head("a", StatusPassing, 10)
		h.Agent = "ip-10-0-1-23"
		refresh(t, old)
		publish(t, []*Store{old}, h)
		if got := heldNodes(c); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("the run before holds %v", got)
		}
		oldSession := c.Sessions()[0]

		cur := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), nil)
		p := Publishers{Max: 2, Sessions: c, Agent: "chain1", MaxAge: time.Minute}
		if former {
			p.FormerAgents = []string{"ip-10-0-1-23"}
		}
		cur.SetPublishers(p)
		h.Agent, h.Height, h.Observed = "chain1", 11, time.Now()
		refresh(t, cur)
		publish(t, []*Store{cur}, h)
		pair, _, err := c.Get("chainwarden/heads/eth/a", nil)
		if err != nil || pair == nil {
			t.Fatalf("key: %v %v", pair, err)
		}
		taken := pair.Session != "" && pair.Session != oldSession && strings.Contains(string(pair.Value), `"agent":"chain1"`)
		if taken != former {
			t.Fatalf("former agents %v: key held by session %q (the run before: %q): %s", former, pair.Session, oldSession, pair.Value)
		}
	}
}
