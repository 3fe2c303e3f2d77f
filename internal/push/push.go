// Package push keeps WebSocket subscriptions to the new heads of chain nodes, so a node's new block is judged when
// it arrives instead of at the next poll: eth_subscribe("newHeads") for Ethereum nodes, the NewBlock event of
// CometBFT's /websocket for CometBFT nodes. One subscriber per kind, in a file of its own, in a lookup table (as the
// probers are). A Manager runs one subscription per node in a goroutine that resubscribes with capped backoff on
// the injected clock after every failure; polling stays the fallback, so a failed subscription costs only speed.
package push

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/probe"
)

// MaxMessageBytes caps one WebSocket message a subscriber reads (a CometBFT NewBlock event carries the block's
// transactions); a larger one ends the subscription instead of taking the memory.
const MaxMessageBytes = 8 << 20

// Head is a new head as a node announced it.
type Head struct {
	Height uint64
	Time   time.Time // the block's timestamp; zero when the node did not say
	// Hash is the block's hash and ParentHash its parent's; zero when the node did not say (IRITA's v0.34 NewBlock
	// event has no block id).
	Hash, ParentHash probe.Hash
}

// Sink receives what one subscription learns, from the subscription's goroutine.
type Sink interface {
	// Subscribed says the subscription is established: heads will follow.
	Subscribed()
	// Head hands over one new head.
	Head(Head)
}

// Subscriber subscribes to the new heads of the node whose WebSocket endpoint is url, calling s.Subscribed once the
// node accepted the subscription and s.Head for every head, until the subscription fails or ctx ends. It returns
// why it ended. timeout bounds the dial and each call it makes. It must never panic on input from the network.
type Subscriber func(ctx context.Context, url string, timeout time.Duration, s Sink) error

// Subscribers is the lookup table of subscribers by node kind. Kinds without one are only polled.
var Subscribers = map[probe.Kind]Subscriber{
	probe.Ethereum: subscribeEthereum,
	probe.CometBFT: subscribeCometBFT,
}

// Target is one node to subscribe to.
type Target struct {
	Name string
	Kind probe.Kind
	URL  string // ws:// or wss://
}

// State is where a node's subscription stands.
type State struct {
	Up  bool  // subscribed
	Err error // why not, when !Up
}

// Backoff bounds of the resubscriptions after a failure.
const (
	MinBackoff = time.Second
	MaxBackoff = 30 * time.Second
)

// Options configure a Manager.
type Options struct {
	Clock   clock.Clock   // nil: the wall clock
	Timeout time.Duration // dial and call deadline of each subscription attempt; default 10s
	// MinBackoff and MaxBackoff pace the resubscriptions of one node after a failure (defaults above).
	MinBackoff, MaxBackoff time.Duration
	// Subscribers replaces the lookup table (tests); nil: Subscribers.
	Subscribers map[probe.Kind]Subscriber
	// OnHead is called with every head, OnState whenever a node's subscription comes up or goes down. Both are
	// called from the node's subscription goroutine and must not block for long.
	OnHead  func(Target, Head)
	OnState func(Target, State)
}

// Manager keeps one subscription per target.
type Manager struct {
	opts Options
	log  hclog.Logger
	up   atomic.Int64

	mu      sync.Mutex
	ctx     context.Context // set by Run; nil before and after
	wg      sync.WaitGroup
	want    map[string]Target
	running map[string]*running
}

type running struct {
	t      Target
	cancel context.CancelFunc
}

// New returns a manager; Set says what to subscribe to, Run runs the subscriptions.
func New(opts Options, log hclog.Logger) *Manager {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = MinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = MaxBackoff
	}
	if opts.Subscribers == nil {
		opts.Subscribers = Subscribers
	}
	if opts.OnHead == nil {
		opts.OnHead = func(Target, Head) {}
	}
	if opts.OnState == nil {
		opts.OnState = func(Target, State) {}
	}
	opts.Clock = clock.OrReal(opts.Clock)
	return &Manager{opts: opts, log: log, want: map[string]Target{}, running: map[string]*running{}}
}

// Supported reports whether nodes of kind can be subscribed to.
func (m *Manager) Supported(kind probe.Kind) bool { return m.opts.Subscribers[kind] != nil }

// Subscribed is how many subscriptions are up.
func (m *Manager) Subscribed() int { return int(m.up.Load()) }

// Set replaces the targets: subscriptions of targets gone or changed end, new ones start (once Run runs). Targets
// of a kind without a subscriber are ignored.
func (m *Manager) Set(targets []Target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.want = make(map[string]Target, len(targets))
	for _, t := range targets {
		if m.Supported(t.Kind) && t.URL != "" {
			m.want[t.Name] = t
		}
	}
	m.reconcile()
}

// Run runs the subscriptions until ctx ends, and returns once every subscription goroutine has.
func (m *Manager) Run(ctx context.Context) {
	m.mu.Lock()
	m.ctx = ctx
	m.reconcile()
	m.mu.Unlock()
	<-ctx.Done()
	m.mu.Lock()
	m.ctx = nil
	for name, r := range m.running {
		r.cancel()
		delete(m.running, name)
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// reconcile starts and stops subscriptions to match want; m.mu must be held.
func (m *Manager) reconcile() {
	if m.ctx == nil {
		return
	}
	for name, r := range m.running {
		if t, ok := m.want[name]; !ok || t != r.t {
			r.cancel()
			delete(m.running, name)
		}
	}
	for name, t := range m.want {
		if _, ok := m.running[name]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(m.ctx)
		m.running[name] = &running{t: t, cancel: cancel}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.run(ctx, t)
		}()
	}
}

// run keeps one target subscribed until ctx ends: subscribe, and after every failure wait (capped, jittered backoff
// on the clock) and subscribe again. The first failure is logged as a warning, the ones after it at debug level
// until the subscription is back.
func (m *Manager) run(ctx context.Context, t Target) {
	log := m.log.With("node", t.Name)
	sub := m.opts.Subscribers[t.Kind]
	bo := backoff.New(m.opts.MinBackoff, m.opts.MaxBackoff)
	warned := false
	for {
		s := &sink{m: m, t: t, ctx: ctx, log: log, warned: warned}
		err := safeSubscribe(ctx, sub, t.URL, m.opts.Timeout, s)
		up := s.isUp()
		if up {
			m.up.Add(-1)
			bo.Reset()
			warned = false
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("the subscription ended")
		}
		m.opts.OnState(t, State{Err: err})
		wait := bo.Next()
		if !warned {
			what := "push unavailable, polling instead"
			if up {
				what = "push subscription lost, polling instead"
			}
			log.Warn(what, "error", err, "retry_in", wait.Round(time.Millisecond))
			warned = true
		} else {
			log.Debug("push still unavailable", "error", err, "retry_in", wait.Round(time.Millisecond))
		}
		if clock.Sleep(ctx, m.opts.Clock, wait) != nil {
			return
		}
	}
}

// safeSubscribe turns a subscriber's panic into an error: input from the network must never take the agent down.
func safeSubscribe(ctx context.Context, sub Subscriber, url string, timeout time.Duration, s Sink) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("subscriber failed: %v", p)
		}
	}()
	return sub(ctx, url, timeout, s)
}

// sink passes one subscription attempt's news to the manager's callbacks.
type sink struct {
	m      *Manager
	t      Target
	ctx    context.Context
	log    hclog.Logger
	warned bool

	mu sync.Mutex
	up bool
}

func (s *sink) Subscribed() {
	s.mu.Lock()
	was := s.up
	s.up = true
	s.mu.Unlock()
	if was || s.ctx.Err() != nil {
		return
	}
	s.m.up.Add(1)
	if s.warned {
		s.log.Info("push subscription back")
	} else {
		s.log.Debug("push subscribed")
	}
	s.m.opts.OnState(s.t, State{Up: true})
}

func (s *sink) Head(h Head) {
	if s.ctx.Err() != nil {
		return
	}
	s.m.opts.OnHead(s.t, h)
}

func (s *sink) isUp() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}
