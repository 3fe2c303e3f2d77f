package config

import (
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/chainwarden/chainwarden/internal/restart"
)

// RestartBlock is the `restart` block as written: its presence turns on the restarts of stalled nodes through Nomad
// (internal/restart). Parse turns it into a restart.Policy in Config.Restart, defaults filled in.
type RestartBlock struct {
	After      string `hcl:"after,optional"`
	MaxPerHour *int   `hcl:"max_per_hour,optional"`
	Backoff    string `hcl:"backoff,optional"`
	MaxBackoff string `hcl:"max_backoff,optional"`
	Hold       string `hcl:"hold,optional"`
}

// restart validates the restart block; nil when there is none (restarts are off).
func (v *validator) restart(b *RestartBlock, c *Config) *restart.Policy {
	if b == nil {
		return nil
	}
	at := func(attr string) hcl.Range { return v.attrRange("restart", "", attr) }
	p := restart.Policy{MaxPerHour: restart.DefaultMaxPerHour}
	p.After = v.duration(b.After, restart.DefaultAfter, at("after"), "restart: after")
	// A verdict takes a few passes to settle (damping): a stall must outlast them to be one.
	if least := 10 * c.Interval; p.After < least {
		v.errf(at("after"), "restart: after %s is shorter than 10 intervals (%s)", short(p.After), short(least))
	}
	if b.MaxPerHour != nil {
		p.MaxPerHour = *b.MaxPerHour
		if p.MaxPerHour < 1 {
			v.errf(at("max_per_hour"), "restart: max_per_hour %d must be at least 1 (remove the restart block to turn restarts off)", p.MaxPerHour)
		}
	}
	p.Backoff = v.duration(b.Backoff, restart.DefaultBackoff, at("backoff"), "restart: backoff")
	p.MaxBackoff = v.duration(b.MaxBackoff, restart.DefaultMaxBackoff, at("max_backoff"), "restart: max_backoff")
	if p.Backoff > p.MaxBackoff {
		v.errf(at("backoff"), "restart: backoff %s is longer than max_backoff %s", short(p.Backoff), short(p.MaxBackoff))
	}
	p.Hold = v.duration(b.Hold, restart.DefaultHold, at("hold"), "restart: hold")
	if c.Nomad == nil || (c.Nomad.Enabled != nil && !*c.Nomad.Enabled) {
		v.errf(at(""), "restart: needs an enabled nomad block: only nodes discovered from Nomad allocations are restarted")
	}
	// The lock's session must outlive a pass by far, whatever the interval.
	p.LockTTL = max(restart.DefaultLockTTL, 4*c.Interval)
	p = p.WithDefaults()
	return &p
}

// short writes a duration as people do: 2h, 5m, 1m30s (not 2h0m0s).
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
