// Package backoff is the one capped exponential backoff with jitter that chainwarden's retry loops share (the
// registry while Consul is down, the heads watch, Nomad discovery): each failure doubles the wait from Min up to
// Max, and jitter spreads the agents of a fleet so they don't all retry in the same instant.
package backoff

import (
	"math/rand/v2"
	"time"
)

// DefaultJitter is the share of each wait that is random: a wait of d becomes a uniform pick in [d*(1-J), d].
const DefaultJitter = 0.2

// Backoff computes the waits between retries. The zero value is not usable: set Min and Max. Not safe for
// concurrent use; each loop owns one.
type Backoff struct {
	Min, Max time.Duration
	// Jitter is the random share of each wait, 0 to 1; negative means none. Zero means DefaultJitter.
	Jitter float64
	// Rand returns a float in [0, 1); nil uses math/rand/v2. Tests set it to make waits exact.
	Rand func() float64

	cur time.Duration
}

// New returns a backoff from min to max with the default jitter.
func New(min, max time.Duration) *Backoff { return &Backoff{Min: min, Max: max} }

// Next returns how long to wait before the next retry, and doubles the base wait for the one after.
func (b *Backoff) Next() time.Duration {
	switch {
	case b.cur < b.Min:
		b.cur = b.Min
	default:
		b.cur = min(2*b.cur, b.Max)
	}
	b.cur = min(b.cur, b.Max)
	j := b.Jitter
	if j == 0 {
		j = DefaultJitter
	}
	if j <= 0 {
		return b.cur
	}
	r := b.Rand
	if r == nil {
		r = rand.Float64
	}
	return b.cur - time.Duration(float64(b.cur)*min(j, 1)*r())
}

// Current is the base wait of the last Next (0 after Reset): how far the backoff has grown.
func (b *Backoff) Current() time.Duration { return b.cur }

// Reset starts over from Min after a success.
func (b *Backoff) Reset() { b.cur = 0 }
