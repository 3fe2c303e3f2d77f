package heads

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

func TestPublishAndWatchAgainstRealConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	testPublishAndWatch(t, c.Client.KV(), c.Client.Txn(), func() {})
}

func TestPublishAndWatch(t *testing.T) {
	c := fakes.NewConsul()
	testPublishAndWatch(t, c, c, func() {
		for c.Blocked() == 0 { // the watch is waiting in its blocking query
			runtime.Gosched()
		}
	})
}

// testPublishAndWatch runs against real Consul and the fake alike; blocked returns once a blocking read waits (it
// can't tell with real Consul, where a read that starts after the write returns at once just the same).
func testPublishAndWatch(t *testing.T, kv KV, txn Txn, blocked func()) {
	ctx := context.Background()
	now := time.Now()
	a := New(kv, txn, kvlayout.New(""), hclog.NewNullLogger(), nil)
	b := New(kv, txn, kvlayout.New(""), hclog.NewNullLogger(), nil)
	n, err := a.Publish(ctx, []Head{
		{Service: "eth-devnet", Node: "geth-a", Height: 100, Observed: now, Agent: "a"},
		{Service: "eth-devnet", Node: "geth-old", Height: 500, Observed: now.Add(-time.Hour), Agent: "a"},
		{Service: "irita", Node: "val0", Height: 7, Observed: now, Agent: "a"},
	}, nil)
	if err != nil || n != 3 {
		t.Fatalf("publish: %d %v", n, err)
	}
	// Unchanged heights are not written again.
	if n, err := a.Publish(ctx, []Head{{Service: "eth-devnet", Node: "geth-a", Height: 100, Observed: now, Agent: "a"}}, nil); err != nil || n != 0 {
		t.Fatalf("republish of an unchanged head wrote %d (%v)", n, err)
	}

	if err := b.WatchOnce(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	h, ok := highest(b, "eth-devnet", now, time.Minute)
	if !ok || h.Height != 100 || h.Node != "geth-a" {
		t.Fatalf("network head %+v %v: the hour-old 500 must be ignored", h, ok)
	}
	if h, ok := highest(b, "eth-devnet", now, 2*time.Hour); !ok || h.Height != 500 {
		t.Fatalf("with a 2h max age the old head counts: %+v", h)
	}
	if _, ok := highest(b, "nothing", now, time.Minute); ok {
		t.Fatal("head for an unknown service")
	}

	// A blocking watch returns as soon as a head changes.
	done := make(chan error, 1)
	go func() { done <- b.WatchOnce(ctx, 30*time.Second) }()
	blocked()
	if _, err := a.Publish(ctx, []Head{{Service: "eth-devnet", Node: "geth-a", Height: 101, Observed: now, Agent: "a"}},
		[]string{"eth-devnet/geth-old"}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil { // the test's own timeout catches a watch that never returns
		t.Fatal(err)
	}
	if h, _ := highest(b, "eth-devnet", now, 2*time.Hour); h.Height != 101 {
		t.Fatalf("after the write and delete: %+v", h)
	}
	if got := len(b.All("eth-devnet")); got != 1 {
		t.Fatalf("deleted key still seen: %d heads", got)
	}
}

func TestPublishManyInBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	s := New(c.Client.KV(), c.Client.Txn(), kvlayout.New("cw"), hclog.NewNullLogger(), nil)
	var hs []Head
	for i := 0; i < 300; i++ {
		hs = append(hs, Head{Service: "svc", Node: fmt.Sprintf("n%03d", i), Height: uint64(i + 1), Observed: time.Now()})
	}
	if n, err := s.Publish(context.Background(), hs, nil); err != nil || n != 300 {
		t.Fatalf("publish 300: %d %v", n, err)
	}
	keys, _, err := c.Client.KV().Keys("cw/heads/svc/", "", nil)
	if err != nil || len(keys) != 300 {
		t.Fatalf("keys: %d %v", len(keys), err)
	}
}

func TestDecodeSkipsGarbage(t *testing.T) {
	pairs := consulapi.KVPairs{
		{Key: "p/heads/svc/n1", Value: []byte(`{"height":5,"observed":"2026-01-01T00:00:00Z"}`)},
		{Key: "p/heads/svc/n2", Value: []byte(`not json`)},
		{Key: "p/heads/svc", Value: []byte(`{}`)},
		{Key: "p/heads/svc/a/b", Value: []byte(`{}`)},
	}
	all := Decode("p/heads/", pairs, hclog.NewNullLogger())
	if len(all["svc"]) != 1 || all["svc"]["n1"].Height != 5 {
		t.Fatalf("decoded %+v", all)
	}
}

// Watch keeps the view current, backs off on the clock while Consul fails, and starts over from index 0 when
// Consul's index goes backwards (a new cluster), as Consul's blocking-query rules say.
func TestWatchBacksOffAndResetsTheIndex(t *testing.T) {
	c := fakes.NewConsul()
	clk := fakes.NewClock(time.Unix(1e9, 0))
	pub := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), clk)
	s := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Watch(ctx, time.Minute) }()
	waitHeight := func(want uint64) {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("head %d in the view", want), func() error {
			if h, ok := highest(s, "eth", clk.Now(), time.Hour); !ok || h.Height != want {
				return fmt.Errorf("head %+v", h)
			}
			return nil
		})
	}
	publish := func(h uint64) {
		t.Helper()
		pub.Forget()
		if _, err := pub.Publish(ctx, []Head{{Service: "eth", Node: "a", Height: h, Observed: clk.Now()}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	publish(10)
	waitHeight(10)

	c.SetDown(true)
	for c.Blocked() > 0 { // the blocked read returns when Consul changes; make one change fail it
		c.SetDown(false)
		publish(11)
		c.SetDown(true)
	}
	clk.BlockUntil(1) // backing off
	c.SetDown(false)
	clk.Advance(10 * time.Second)
	waitHeight(11)

	// A new cluster: the index starts again from 1, below the watch's; the watch must not wait for it to catch up.
	c.Wipe(true)
	publish(5)
	waitHeight(5)
	cancel()
	<-done
}

// highest is the highest head of service in the view observed within maxAge of now (what the network head was
// before it was corroborated; the view itself is what is tested here).
func highest(s *Store, service string, now time.Time, maxAge time.Duration) (Head, bool) {
	var best Head
	found := false
	for _, h := range s.All(service) {
		if now.Sub(h.Observed) <= maxAge && (!found || h.Height > best.Height) {
			best, found = h, true
		}
	}
	return best, found
}
