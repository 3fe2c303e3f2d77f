// Package fakes holds the in-memory stand-ins tests use for the agent's seams: a clock advanced by hand, the parts of
// Consul's agent, KV and transaction APIs the registry and heads use, and Nomad's allocation queries for discovery.
// They keep state as the real services do (a Consul index that grows, blocking queries that wait for a change) so a
// unit test exercises the same paths as the integration tests, in milliseconds.
package fakes

import (
	"sort"
	"sync"
	"time"

	"github.com/chainwarden/chainwarden/internal/clock"
)

// Clock is a clock.Clock that moves only when a test calls Advance.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*waiter
	changed chan struct{} // closed and replaced whenever a timer or ticker is made or reset
}

type waiter struct {
	at     time.Time
	period time.Duration // > 0 for tickers
	c      chan time.Time
	live   bool
}

var _ clock.Clock = (*Clock)(nil)

// NewClock returns a fake clock at start.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start, changed: make(chan struct{})}
}

// Now is the fake time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the time by d, firing every timer and ticker that falls due, in time order.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	for {
		var next *waiter
		for _, w := range c.waiters {
			if w.live && !w.at.After(end) && (next == nil || w.at.Before(next.at)) {
				next = w
			}
		}
		if next == nil {
			break
		}
		c.now = next.at
		select { // like time.Ticker, drop a tick nobody took
		case next.c <- c.now:
		default:
		}
		if next.period > 0 {
			next.at = next.at.Add(next.period)
		} else {
			next.live = false
		}
	}
	c.now = end
	c.prune()
	c.mu.Unlock()
}

// Waiters is how many timers and tickers are pending.
func (c *Clock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, w := range c.waiters {
		if w.live {
			n++
		}
	}
	return n
}

// BlockUntil waits (in real time, without a deadline: the test's own timeout bounds it) until at least n timers or
// tickers are pending, so a test can Advance once the code under test is waiting.
func (c *Clock) BlockUntil(n int) {
	for {
		c.mu.Lock()
		live := 0
		for _, w := range c.waiters {
			if w.live {
				live++
			}
		}
		ch := c.changed
		c.mu.Unlock()
		if live >= n {
			return
		}
		<-ch
	}
}

// NextDeadline is when the earliest pending timer or ticker fires, and false when none is pending.
func (c *Clock) NextDeadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var at []time.Time
	for _, w := range c.waiters {
		if w.live {
			at = append(at, w.at)
		}
	}
	if len(at) == 0 {
		return time.Time{}, false
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	return at[0], true
}

func (c *Clock) add(w *waiter) {
	c.mu.Lock()
	c.waiters = append(c.waiters, w)
	c.notify()
	c.mu.Unlock()
}

// notify wakes BlockUntil; c.mu must be held.
func (c *Clock) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Clock) prune() {
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.live {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// NewTimer returns a timer firing d from now.
func (c *Clock) NewTimer(d time.Duration) clock.Timer {
	w := &waiter{at: c.Now().Add(d), c: make(chan time.Time, 1), live: true}
	c.add(w)
	return &fakeTimer{c: c, w: w}
}

// NewTicker returns a ticker firing every d.
func (c *Clock) NewTicker(d time.Duration) clock.Ticker {
	if d <= 0 {
		panic("fakes: non-positive ticker interval")
	}
	w := &waiter{at: c.Now().Add(d), period: d, c: make(chan time.Time, 1), live: true}
	c.add(w)
	return &fakeTicker{c: c, w: w}
}

type fakeTimer struct {
	c *Clock
	w *waiter
}

func (t *fakeTimer) C() <-chan time.Time { return t.w.c }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.w.live
	t.w.live = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	was := t.w.live
	t.w.at, t.w.live = t.c.now.Add(d), true
	if !was {
		t.c.waiters = append(t.c.waiters, t.w)
	}
	t.c.notify()
	t.c.mu.Unlock()
	return was
}

type fakeTicker struct {
	c *Clock
	w *waiter
}

func (t *fakeTicker) C() <-chan time.Time { return t.w.c }

func (t *fakeTicker) Stop() {
	t.c.mu.Lock()
	t.w.live = false
	t.c.mu.Unlock()
}

func (t *fakeTicker) Reset(d time.Duration) {
	t.c.mu.Lock()
	was := t.w.live
	t.w.at, t.w.period, t.w.live = t.c.now.Add(d), d, true
	if !was {
		t.c.waiters = append(t.c.waiters, t.w)
	}
	t.c.notify()
	t.c.mu.Unlock()
}
