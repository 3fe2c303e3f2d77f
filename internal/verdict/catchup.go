package verdict

import (
	"fmt"
	"time"
)

// CatchUp follows a node that starts from a restored snapshot while it catches up with its network: its own
// height and the head over the last probes, from which how fast it goes and when it will be at the head. Judge
// then says so ("catching up from snapshot: height X → head Y, ~Z blocks/s, ETA 4m") instead of only "behind",
// and keeps the node critical — out of the proxy, not even a backup — until it has caught up.
type CatchUp struct {
	Snapshot string        // the snapshot the volume was restored from
	Window   time.Duration // how far back the rates look (default 1m)

	samples []catchUpSample
}

type catchUpSample struct {
	at           time.Time
	height, head uint64
}

// DefaultCatchUpWindow is how far back the rates look by default: long enough to smooth a node that imports
// blocks in batches, short enough to follow it speeding up once its cache is warm.
const DefaultCatchUpWindow = time.Minute

// NewCatchUp starts following a node restored from snapshot.
func NewCatchUp(snapshot string) *CatchUp {
	return &CatchUp{Snapshot: snapshot, Window: DefaultCatchUpWindow}
}

// Observe records one probe's height and the network head (0: unknown) at now.
func (c *CatchUp) Observe(now time.Time, height, head uint64) {
	if n := len(c.samples); n > 0 && !now.After(c.samples[n-1].at) {
		return
	}
	c.samples = append(c.samples, catchUpSample{at: now, height: height, head: head})
	// Keep the newest sample at least Window old, so that a rate always spans the window once it can.
	w := c.Window
	if w <= 0 {
		w = DefaultCatchUpWindow
	}
	drop := 0
	for drop+1 < len(c.samples) && now.Sub(c.samples[drop+1].at) >= w {
		drop++
	}
	c.samples = c.samples[drop:]
}

// Rates are the node's and the head's blocks per second over the window; ok is false until two probes apart.
func (c *CatchUp) Rates() (node, head float64, ok bool) {
	if len(c.samples) < 2 {
		return 0, 0, false
	}
	first, last := c.samples[0], c.samples[len(c.samples)-1]
	secs := last.at.Sub(first.at).Seconds()
	if secs <= 0 {
		return 0, 0, false
	}
	node = (float64(last.height) - float64(first.height)) / secs
	if first.head > 0 && last.head > 0 {
		head = (float64(last.head) - float64(first.head)) / secs
	}
	return node, head, true
}

// ETA is how long until the node reaches the head at the current rates: the lag over how fast it closes (its own
// rate less the head's). ok is false while it cannot be told (no rate yet, or not gaining on the head).
func (c *CatchUp) ETA(lag uint64) (time.Duration, bool) {
	node, head, ok := c.Rates()
	if !ok || node-head <= 0 {
		return 0, false
	}
	return time.Duration(float64(lag) / (node - head) * float64(time.Second)), true
}

// Line is what the node's check says while it catches up, e.g.
// "catching up from snapshot: height 19200000 → head 19234569, ~85 blocks/s, ETA 6m47s".
func (c *CatchUp) Line(height, head uint64) string {
	target := "head unknown"
	var lag uint64
	if head > 0 {
		target = fmt.Sprintf("head %d", head)
		if head > height {
			lag = head - height
		}
	}
	line := fmt.Sprintf("catching up from snapshot: height %d → %s", height, target)
	node, headRate, ok := c.Rates()
	switch {
	case !ok:
		return line + ", measuring its speed"
	case node <= 0:
		return line + ", not moving"
	}
	line += ", ~" + formatRate(node) + " blocks/s"
	if head == 0 {
		return line
	}
	if eta, ok := c.ETA(lag); ok {
		return line + ", ETA " + formatETA(eta)
	}
	return line + fmt.Sprintf(", not gaining on the head (~%s blocks/s)", formatRate(headRate))
}

func formatRate(r float64) string {
	switch {
	case r >= 10:
		return fmt.Sprintf("%.0f", r)
	case r >= 1:
		return fmt.Sprintf("%.1f", r)
	default:
		return fmt.Sprintf("%.2f", r)
	}
}

// formatETA rounds like a person says it: "45s", "4m", "6m47s" under ten minutes, "1h12m", "3d4h".
func formatETA(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 10*time.Minute:
		return trimZero(d.Round(time.Second).String())
	case d < 24*time.Hour:
		return trimZero(d.Round(time.Minute).String())
	default:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}

// trimZero drops the zero units time.Duration.String writes: "4m0s" → "4m", "1h12m0s" → "1h12m", "2h0m0s" → "2h".
func trimZero(s string) string {
	for _, suffix := range []string{"0s", "0m"} {
		if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix && !isDigit(s[len(s)-len(suffix)-1]) {
			s = s[:len(s)-len(suffix)]
		}
	}
	return s
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }
