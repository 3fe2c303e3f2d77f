package verdict

import "fmt"

// Damper turns a stream of undamped statuses into a steady one. It takes FailAfter consecutive probes worse than the
// current status to get worse (to the latest one: a failure is not played down), and PassAfter consecutive better
// ones to get better — and then only to the worst of those PassAfter, so warnings on the way up are not skipped. A
// new node starts critical, so it must prove itself PassAfter times before it serves traffic (unless Resume starts it
// where a restarted agent's earlier run left it).
type Damper struct {
	FailAfter, PassAfter int

	current Status
	streak  []Status // the consecutive probes on one side of current, oldest first
	dir     int      // +1: the streak is worse than current; -1: better
}

// NewDamper returns a damper starting at critical.
func NewDamper(failAfter, passAfter int) *Damper {
	return &Damper{FailAfter: max(failAfter, 1), PassAfter: max(passAfter, 1), current: Critical}
}

// Resume starts a damper that has seen nothing yet at s instead of critical: a restarted agent resumes the status
// its previous run left in Consul, so a restart does not take healthy nodes out of service for PassAfter probes.
func (d *Damper) Resume(s Status) {
	d.current, d.streak, d.dir = s, d.streak[:0], 0
}

// Current is the damped status.
func (d *Damper) Current() Status { return d.current }

// Observe feeds one undamped status and returns the damped one and whether it changed.
func (d *Damper) Observe(raw Status) (Status, bool) {
	switch {
	case raw == d.current:
		d.streak, d.dir = d.streak[:0], 0
		return d.current, false
	case raw > d.current:
		d.add(+1, raw)
		if len(d.streak) >= d.FailAfter {
			return d.move(raw)
		}
	default:
		d.add(-1, raw)
		if len(d.streak) >= d.PassAfter {
			worst := raw
			for _, s := range d.streak[len(d.streak)-d.PassAfter:] {
				worst = max(worst, s)
			}
			return d.move(worst)
		}
	}
	return d.current, false
}

// SetLimits changes FailAfter and PassAfter (a node's thresholds were reconfigured), keeping the status.
func (d *Damper) SetLimits(failAfter, passAfter int) {
	d.FailAfter, d.PassAfter = max(failAfter, 1), max(passAfter, 1)
}

// Held says whether the damped status differs from the latest probe's (Holding says why).
func (d *Damper) Held() bool { return d.dir != 0 }

// Holding says why the damped status differs from the latest probe's, as a person reads it — "recovering: 1 of 3
// good probes" or "failing: 1 of 2 bad probes" — and "" when it doesn't.
func (d *Damper) Holding() string {
	switch d.dir {
	case +1:
		return fmt.Sprintf("failing: %d of %d bad probes", len(d.streak), d.FailAfter)
	case -1:
		return fmt.Sprintf("recovering: %d of %d good probes", len(d.streak), d.PassAfter)
	}
	return ""
}

func (d *Damper) add(dir int, s Status) {
	if d.dir != dir {
		d.dir, d.streak = dir, d.streak[:0]
	}
	d.streak = append(d.streak, s)
}

func (d *Damper) move(to Status) (Status, bool) {
	d.current, d.streak, d.dir = to, d.streak[:0], 0
	return d.current, true
}
