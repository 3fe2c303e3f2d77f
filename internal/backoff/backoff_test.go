package backoff

import (
	"testing"
	"time"
)

func TestNextDoublesUpToMax(t *testing.T) {
	b := &Backoff{Min: time.Second, Max: 10 * time.Second, Jitter: -1}
	var got []time.Duration
	for range 6 {
		got = append(got, b.Next())
	}
	want := []time.Duration{1, 2, 4, 8, 10, 10}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("waits %v, want %v seconds", got, want)
		}
	}
	b.Reset()
	if d := b.Next(); d != time.Second {
		t.Fatalf("after Reset: %v, want 1s", d)
	}
}

func TestJitterStaysWithinItsShare(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999} {
		b := &Backoff{Min: 10 * time.Second, Max: time.Minute, Jitter: 0.2, Rand: func() float64 { return r }}
		d := b.Next()
		if d > 10*time.Second || d < 8*time.Second {
			t.Fatalf("rand %v: wait %v, want within [8s, 10s]", r, d)
		}
		if b.Current() != 10*time.Second {
			t.Fatalf("base %v, want 10s: jitter must not shrink the growth", b.Current())
		}
	}
}

func TestDefaultJitterApplies(t *testing.T) {
	b := New(time.Second, time.Second)
	b.Rand = func() float64 { return 0.5 }
	if d := b.Next(); d != 900*time.Millisecond {
		t.Fatalf("wait %v, want 900ms (default jitter 0.2 at rand 0.5)", d)
	}
}
