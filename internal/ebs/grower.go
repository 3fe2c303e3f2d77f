package ebs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chainwarden/chainwarden/internal/clock"
)

// GrowMetrics are the Prometheus series of the Grower.
type GrowMetrics struct {
	UsedRatio   *prometheus.GaugeVec   // volume: share of the filesystem in use, 0 to 1
	FSBytes     *prometheus.GaugeVec   // volume: the filesystem's size
	SizeGiB     *prometheus.GaugeVec   // volume: the EBS volume's size as last seen by a grow
	AtMax       *prometheus.GaugeVec   // volume: 1 while past the threshold at max_size_gib
	Grows       *prometheus.CounterVec // volume, result: grown, filesystem_only, at_max, failed
	GrowSeconds *prometheus.GaugeVec   // volume: how long the last grow took
}

// NewGrowMetrics makes the series and registers them with reg (nil: not registered).
func NewGrowMetrics(reg prometheus.Registerer) *GrowMetrics {
	g := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "chainwarden", Name: name, Help: help}, labels)
	}
	m := &GrowMetrics{
		UsedRatio:   g("volume_used_ratio", "Share of the volume's filesystem in use (as df counts it), 0 to 1.", "volume"),
		FSBytes:     g("volume_filesystem_bytes", "Size of the volume's filesystem.", "volume"),
		SizeGiB:     g("volume_size_gib", "Size of the EBS volume, as the last grow saw it.", "volume"),
		AtMax:       g("volume_grow_at_max", "1 while the volume is past its grow threshold but at its max_size_gib.", "volume"),
		GrowSeconds: g("volume_grow_seconds", "How long the volume's last grow took (EBS modification to filesystem grown).", "volume"),
		Grows: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "chainwarden", Name: "volume_grows_total",
			Help: "Grow attempts of a volume past its threshold, by result: grown, filesystem_only, at_max, failed."},
			[]string{"volume", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m.UsedRatio, m.FSBytes, m.SizeGiB, m.AtMax, m.Grows, m.GrowSeconds)
	}
	return m
}

// Grower grows the volumes with a grow block from the agent: every check_interval it looks at each volume's
// filesystem and grows the volume and the filesystem once it is past its threshold (Manager.GrowIfNeeded).
type Grower struct {
	Manager *Manager
	Volumes []Volume
	Log     hclog.Logger
	Metrics *GrowMetrics // nil: none
	Clock   clock.Clock  // nil: the Manager's clock
}

func (g *Grower) defaults() {
	g.Manager.defaults()
	if g.Log == nil {
		g.Log = hclog.NewNullLogger()
	}
	if g.Clock == nil {
		g.Clock = g.Manager.Clock
	}
	if g.Metrics == nil {
		g.Metrics = NewGrowMetrics(nil)
	}
}

// Run checks every volume with a grow block on its interval until ctx ends.
func (g *Grower) Run(ctx context.Context) {
	g.defaults()
	var wg sync.WaitGroup
	for _, vol := range g.Volumes {
		if vol.Grow == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			atMax := false
			for {
				err := g.Check(ctx, vol)
				if ctx.Err() != nil {
					return
				}
				switch now := errors.Is(err, ErrAtMaxSize); {
				case now && !atMax:
					g.Log.Warn("volume cannot grow any further", "volume", vol.Name, "error", err)
				case err != nil && !now:
					g.Log.Error("grow failed", "volume", vol.Name, "error", err, "retry_in", vol.Grow.Interval)
				}
				atMax = errors.Is(err, ErrAtMaxSize)
				if clock.Sleep(ctx, g.Clock, vol.Grow.Interval) != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Check looks at one volume once, grows it if needed, and updates the metrics.
func (g *Grower) Check(ctx context.Context, vol Volume) error {
	g.defaults()
	m := g.Metrics
	ctx, cancel := context.WithTimeout(ctx, growDeadline)
	defer cancel()
	res, err := g.Manager.GrowIfNeeded(ctx, vol)
	if res != nil {
		u := res.Usage
		if res.FSGrown || res.Modified {
			u, _ = g.Manager.hostFS().Usage(vol.MountPath)
		}
		m.UsedRatio.WithLabelValues(vol.Name).Set(u.Percent() / 100)
		m.FSBytes.WithLabelValues(vol.Name).Set(float64(u.Total))
		if res.ToGiB > 0 {
			m.SizeGiB.WithLabelValues(vol.Name).Set(float64(res.ToGiB))
		}
	}
	at := 0.0
	switch {
	case errors.Is(err, ErrAtMaxSize):
		at = 1
		m.Grows.WithLabelValues(vol.Name, "at_max").Inc()
	case err != nil:
		m.Grows.WithLabelValues(vol.Name, "failed").Inc()
	case res.Modified:
		m.Grows.WithLabelValues(vol.Name, "grown").Inc()
		m.GrowSeconds.WithLabelValues(vol.Name).Set(res.Took.Seconds())
	case res.FSGrown:
		m.Grows.WithLabelValues(vol.Name, "filesystem_only").Inc()
		m.GrowSeconds.WithLabelValues(vol.Name).Set(res.Took.Seconds())
	}
	m.AtMax.WithLabelValues(vol.Name).Set(at)
	if err != nil {
		return fmt.Errorf("grow %s: %w", vol.Name, err)
	}
	return nil
}

// growDeadline bounds one Check (a modification may take many minutes).
const growDeadline = time.Hour
