package push_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/push"
)

// attempt is one call of the fake subscriber, driven by the test.
type attempt struct {
	ctx  context.Context
	url  string
	sink push.Sink
	end  chan error
}

type fakeSubscriber struct{ calls chan *attempt }

func (f *fakeSubscriber) subscribe(ctx context.Context, url string, _ time.Duration, s push.Sink) error {
	a := &attempt{ctx: ctx, url: url, sink: s, end: make(chan error)}
	f.calls <- a
	select {
	case err := <-a.end:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type event struct {
	node  string
	head  push.Head
	state *push.State
}

type harness struct {
	clk    *fakes.Clock
	sub    *fakeSubscriber
	m      *push.Manager
	events chan event
	cancel context.CancelFunc
	done   chan struct{}
	logs   *logBuf
}

type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func start(t *testing.T, subscribe push.Subscriber) *harness {
	t.Helper()
	h := &harness{clk: fakes.NewClock(time.Unix(1_700_000_000, 0)), sub: &fakeSubscriber{calls: make(chan *attempt, 8)},
		events: make(chan event, 64), done: make(chan struct{}), logs: &logBuf{}}
	if subscribe == nil {
		subscribe = h.sub.subscribe
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "push", Level: hclog.Debug, Output: h.logs})
	h.m = push.New(push.Options{Clock: h.clk, Subscribers: map[probe.Kind]push.Subscriber{probe.Ethereum: subscribe},
		OnHead:  func(t push.Target, hd push.Head) { h.events <- event{node: t.Name, head: hd} },
		OnState: func(t push.Target, s push.State) { h.events <- event{node: t.Name, state: &s} },
	}, log)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		h.m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

func (h *harness) attempt(t *testing.T) *attempt {
	t.Helper()
	select {
	case a := <-h.sub.calls:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no subscription attempt")
		return nil
	}
}

func (h *harness) event(t *testing.T) event {
	t.Helper()
	select {
	case e := <-h.events:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
		return event{}
	}
}

func TestManagerSubscribesResubscribesAndStops(t *testing.T) {
	h := start(t, nil)
	h.m.Set([]push.Target{{Name: "a", Kind: probe.Ethereum, URL: "ws://a"}, {Name: "cl", Kind: probe.Chainlink, URL: "ws://cl"}})

	a1 := h.attempt(t)
	if a1.url != "ws://a" {
		t.Fatalf("subscribed to %q", a1.url)
	}
	a1.sink.Subscribed()
	if e := h.event(t); e.state == nil || !e.state.Up || e.node != "a" {
		t.Fatalf("want a up, got %+v", e)
	}
	if n := h.m.Subscribed(); n != 1 {
		t.Fatalf("subscribed = %d, want 1 (chainlink has no subscriber)", n)
	}
	hash := probe.ParseHash(strings.Repeat("07", 32))
	a1.sink.Head(push.Head{Height: 7, Hash: hash})
	if e := h.event(t); e.head.Height != 7 || e.head.Hash != hash {
		t.Fatalf("head: %+v", e)
	}

	// The subscription drops: the owner hears it at once, and the manager waits its backoff on the clock.
	a1.end <- errors.New("connection reset")
	e := h.event(t)
	if e.state == nil || e.state.Up || e.state.Err == nil || !strings.Contains(e.state.Err.Error(), "connection reset") {
		t.Fatalf("want a down with its error, got %+v", e)
	}
	if n := h.m.Subscribed(); n != 0 {
		t.Fatalf("subscribed = %d after the drop", n)
	}
	h.clk.BlockUntil(1)
	select {
	case a := <-h.sub.calls:
		t.Fatalf("resubscribed to %s before the backoff passed", a.url)
	default:
	}
	h.clk.Advance(push.MinBackoff)
	a2 := h.attempt(t)
	a2.sink.Subscribed()
	if e := h.event(t); e.state == nil || !e.state.Up {
		t.Fatalf("want a up again, got %+v", e)
	}
	if !strings.Contains(h.logs.String(), "push subscription lost, polling instead") ||
		!strings.Contains(h.logs.String(), "push subscription back") {
		t.Fatalf("the drop and the recovery are logged:\n%s", h.logs)
	}

	// A changed URL ends the old subscription and starts one on the new URL.
	h.m.Set([]push.Target{{Name: "a", Kind: probe.Ethereum, URL: "ws://a2"}})
	a3 := h.attempt(t)
	if a3.url != "ws://a2" {
		t.Fatalf("resubscribed to %q", a3.url)
	}
	<-a2.ctx.Done()

	// Removing the target ends its subscription.
	h.m.Set(nil)
	<-a3.ctx.Done()
	h.cancel()
	<-h.done
	if n := h.m.Subscribed(); n != 0 {
		t.Fatalf("subscribed = %d after stop", n)
	}
}

func TestManagerBacksOffAndLogsOnce(t *testing.T) {
	h := start(t, nil)
	h.m.Set([]push.Target{{Name: "a", Kind: probe.Ethereum, URL: "ws://a"}})
	var waits []time.Duration
	for i := 0; i < 4; i++ {
		a := h.attempt(t)
		a.end <- errors.New("dial ws://a: connection refused")
		if e := h.event(t); e.state == nil || e.state.Up {
			t.Fatalf("attempt %d: want a down, got %+v", i, e)
		}
		h.clk.BlockUntil(1)
		at, _ := h.clk.NextDeadline()
		waits = append(waits, at.Sub(h.clk.Now()))
		h.clk.Advance(at.Sub(h.clk.Now()))
	}
	for i := 1; i < len(waits); i++ {
		if waits[i] <= waits[i-1]*3/2 {
			t.Fatalf("waits do not grow: %v", waits)
		}
	}
	if n := strings.Count(h.logs.String(), "[WARN]"); n != 1 {
		t.Fatalf("%d warnings for one outage, want 1:\n%s", n, h.logs)
	}
	if !strings.Contains(h.logs.String(), "push unavailable, polling instead") {
		t.Fatalf("the outage is not logged:\n%s", h.logs)
	}
}

func TestManagerRecoversFromAPanickingSubscriber(t *testing.T) {
	h := start(t, func(context.Context, string, time.Duration, push.Sink) error { panic("bad answer") })
	h.m.Set([]push.Target{{Name: "a", Kind: probe.Ethereum, URL: "ws://a"}})
	e := h.event(t)
	if e.state == nil || e.state.Up || !strings.Contains(e.state.Err.Error(), "bad answer") {
		t.Fatalf("want a down with the panic as its error, got %+v", e)
	}
}
