package verdict

// Damper turns a stream of undamped statuses into a steady one: it takes FailAfter consecutive worse statuses to get
// worse and PassAfter consecutive better ones to get better. A new node starts critical, so it must prove itself
// PassAfter times before it serves traffic.
type Damper struct {
	FailAfter, PassAfter int

	current Status
	streak  int
	dir     int // +1 counting worse statuses, -1 counting better ones
}

// NewDamper returns a damper starting at critical.
func NewDamper(failAfter, passAfter int) *Damper {
	return &Damper{FailAfter: max(failAfter, 1), PassAfter: max(passAfter, 1), current: Critical}
}

// Current is the damped status.
func (d *Damper) Current() Status { return d.current }

// Observe feeds one undamped status and returns the damped one and whether it changed.
func (d *Damper) Observe(raw Status) (Status, bool) {
	switch {
	case raw == d.current:
		d.streak, d.dir = 0, 0
		return d.current, false
	case raw > d.current:
		d.count(+1)
		if d.streak >= d.FailAfter {
			return d.move(raw)
		}
	default:
		d.count(-1)
		if d.streak >= d.PassAfter {
			return d.move(raw)
		}
	}
	return d.current, false
}

func (d *Damper) count(dir int) {
	if d.dir != dir {
		d.dir, d.streak = dir, 0
	}
	d.streak++
}

func (d *Damper) move(to Status) (Status, bool) {
	d.current, d.streak, d.dir = to, 0, 0
	return d.current, true
}
