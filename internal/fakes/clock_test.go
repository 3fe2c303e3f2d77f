package fakes

import (
	"context"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/clock"
)

func TestClockFiresTimersAndTickersInOrder(t *testing.T) {
	start := time.Unix(1000, 0)
	c := NewClock(start)
	tm := c.NewTimer(3 * time.Second)
	tk := c.NewTicker(time.Second)
	c.Advance(2500 * time.Millisecond)
	select {
	case <-tm.C():
		t.Fatal("timer fired early")
	default:
	}
	if got := <-tk.C(); !got.Equal(start.Add(time.Second)) {
		t.Fatalf("ticker delivered the tick of %v, want the first (1s); later ones are dropped as time.Ticker does", got)
	}
	c.Advance(time.Second)
	if got := <-tm.C(); !got.Equal(start.Add(3 * time.Second)) {
		t.Fatalf("timer fired at %v", got)
	}
	if tm.Stop() {
		t.Fatal("Stop of a fired timer reported it pending")
	}
	tk.Stop()
	if n := c.Waiters(); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
}

func TestSleepWakesOnAdvance(t *testing.T) {
	c := NewClock(time.Unix(0, 0))
	done := make(chan error, 1)
	go func() { done <- clock.Sleep(context.Background(), c, time.Minute) }()
	c.BlockUntil(1)
	c.Advance(time.Minute)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- clock.Sleep(ctx, c, time.Minute) }()
	c.BlockUntil(1)
	cancel()
	if err := <-done; err == nil {
		t.Fatal("Sleep ignored the cancelled context")
	}
}
