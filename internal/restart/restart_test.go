package restart

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// host is one agent's restarter with the Nomad client of its host, sharing a Consul with the other hosts.
type host struct {
	r     *Restarter
	nomad *fakes.Nomad
}

func newHost(t *testing.T, c *fakes.Consul, id string, p Policy, allocs ...string) *host {
	t.Helper()
	n := fakes.NewNomad("node-" + id)
	var as []*nomadapi.Allocation
	for _, a := range allocs {
		as = append(as, &nomadapi.Allocation{ID: a, TaskStates: map[string]*nomadapi.TaskState{"node": {State: "running"}}})
	}
	n.SetAllocations("node-"+id, as...)
	return &host{r: New(p, Consul{Sessions: c, KV: c, Health: c}, n, kvlayout.New(""), id, nil), nomad: n}
}

// pass runs one pass and waits for a restart it started, so the next pass sees its result.
func (h *host) pass(t *testing.T, now time.Time, nodes ...Node) []Event {
	t.Helper()
	ev := h.r.Pass(context.Background(), now, nodes)
	h.r.Wait()
	return ev
}

// register puts a node of service eth in Consul's catalog with its check status, as its agent would.
func register(t *testing.T, c *fakes.Consul, node, status string) {
	t.Helper()
	err := c.ServiceRegisterOpts(&consulapi.AgentServiceRegistration{ID: node, Name: "eth",
		Check: &consulapi.AgentServiceCheck{CheckID: "chainwarden:" + node, TTL: "10s", Status: status}}, consulapi.ServiceRegisterOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.UpdateTTLOpts("chainwarden:"+node, "", status, nil); err != nil {
		t.Fatal(err)
	}
}

// stalled is geth-a (allocation a1) critical at height 100 while the network's head is head.
func stalled(head uint64) Node {
	return Node{Name: "geth-a", Service: "eth", AllocID: "a1", Task: "node", Status: verdict.Critical,
		Height: 100, HasHeight: true, Head: head}
}

func policy() Policy {
	return Policy{After: 30 * time.Second, MaxPerHour: 3, Backoff: time.Minute, MaxBackoff: 4 * time.Minute, Hold: 5 * time.Minute}
}

// A node critical for After, its height standing still while the head moves, is restarted through Nomad once;
// the service's lock is held until it passes again, and the check output says what happened.
func TestRestartsAStalledNodeWhileItsNetworkAdvances(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-b", "passing")
	pol := policy()
	pol.Backoff, pol.MaxBackoff = 5*time.Minute, 20*time.Minute
	h := newHost(t, c, "host-a", pol, "a1")
	var restartedAt time.Time
	for i := 0; i <= 40 && restartedAt.IsZero(); i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		h.pass(t, now, stalled(100+uint64(i)))
		if len(h.nomad.Restarts()) > 0 {
			restartedAt = now
		}
	}
	if got := restartedAt.Sub(t0); got != 30*time.Second {
		t.Fatalf("restarted after %s, want After (30s)", got)
	}
	if got := h.nomad.Restarts(); !slices.Equal(got, []string{"a1/node"}) {
		t.Fatalf("nomad restarts %v", got)
	}
	// The lock names the node and the agent; another agent reads it.
	var v lockValue
	p, _, _ := c.Get(kvlayout.New("").RestartLock("eth"), nil)
	if p == nil || p.Session == "" || json.Unmarshal(p.Value, &v) != nil || v.Node != "geth-a" || v.Agent != "host-a" {
		t.Fatalf("lock %+v (%+v)", p, v)
	}

	now := restartedAt.Add(time.Second)
	ev := h.pass(t, now, stalled(140))
	if len(ev) != 1 || ev[0].Kind != "restarted" || ev[0].Node != "geth-a" {
		t.Fatalf("events %+v", ev)
	}
	now = restartedAt.Add(2 * time.Minute)
	h.pass(t, now, stalled(150))
	// Due again (critical for After since the restart), but within the backoff.
	if out, key := h.r.Note("geth-a"); out != "restarted 2m ago, 1 of 3 this hour; restart withheld: backoff 5m after 1 restart that did not help" ||
		key != "restarted, 1 of 3 this hour; restart withheld: backoff 5m after 1 restart that did not help" {
		t.Fatalf("note %q / %q", out, key)
	}
	// Not restarted again while it is still within its backoff (5m).
	if n := len(h.nomad.Restarts()); n != 1 {
		t.Fatalf("%d restarts", n)
	}

	// It passes: the lock and the session go; the note stays for the hour.
	ok := stalled(151)
	ok.Status, ok.Height = verdict.Passing, 151
	h.pass(t, now.Add(time.Second), ok)
	if p, _, _ := c.Get(kvlayout.New("").RestartLock("eth"), nil); p == nil || p.Session != "" {
		t.Fatalf("lock still held: %+v", p)
	}
	if s := c.Sessions(); len(s) != 0 {
		t.Fatalf("sessions left: %v", s)
	}
	if out, _ := h.r.Note("geth-a"); !strings.HasPrefix(out, "restarted 2m ago, 1 of 3 this hour") {
		t.Fatalf("note %q", out)
	}
	h.pass(t, now.Add(time.Hour), ok)
	if out, _ := h.r.Note("geth-a"); out != "" {
		t.Fatalf("note after an hour: %q", out)
	}
}

// No restart when the network itself stands still, when the node is catching up (its height grows), or for a node
// that does not run on Nomad.
func TestNoRestartUnlessOnlyTheNodeIsStuck(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-b", "passing")
	h := newHost(t, c, "host-a", policy(), "a1", "a2")
	for i := 0; i < 600; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		networkStalled := stalled(200) // the head of eth doesn't move
		catchingUp := Node{Name: "geth-c", Service: "eth2", AllocID: "a2", Task: "node", Status: verdict.Critical,
			Height: uint64(i), HasHeight: true, Head: 1000 + uint64(i)}
		configNode := Node{Name: "geth-d", Service: "eth3", Status: verdict.Critical, Height: 1, HasHeight: true, Head: 1000 + uint64(i)}
		if ev := h.pass(t, now, networkStalled, catchingUp, configNode); len(ev) != 0 {
			t.Fatalf("second %d: events %+v", i, ev)
		}
	}
	if r := h.nomad.Restarts(); len(r) != 0 {
		t.Fatalf("restarts %v", r)
	}
}

// A probe that fails (a hung node answers nothing) counts as a height standing still.
func TestRestartsANodeWhoseProbeFails(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-b", "passing")
	h := newHost(t, c, "host-a", policy(), "a1")
	for i := 0; i <= 30; i++ {
		n := stalled(100 + uint64(i))
		n.HasHeight, n.Height = false, 0
		h.pass(t, t0.Add(time.Duration(i)*time.Second), n)
	}
	if r := h.nomad.Restarts(); len(r) != 1 {
		t.Fatalf("restarts %v", r)
	}
}

// Never a restart when no other node of the service passes; it goes ahead once one does.
func TestNeverWithoutAnotherPassingNode(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-a", "critical") // its own check does not count
	register(t, c, "geth-b", "warning")
	h := newHost(t, c, "host-a", policy(), "a1")
	var ev []Event
	for i := 0; i < 120; i++ {
		ev = append(ev, h.pass(t, t0.Add(time.Duration(i)*time.Second), stalled(100+uint64(i)))...)
	}
	if r := h.nomad.Restarts(); len(r) != 0 {
		t.Fatalf("restarts %v", r)
	}
	if len(ev) != 1 || ev[0].Kind != "withheld" || ev[0].Reason != ReasonNoPassingNode {
		t.Fatalf("events %+v (the withheld restart is counted once)", ev)
	}
	if out, _ := h.r.Note("geth-a"); out != "restart withheld: no other node of eth passes" {
		t.Fatalf("note %q", out)
	}
	if n := c.Calls("Checks"); n > 120/10+1 {
		t.Fatalf("%d health reads in 90s of being due: not paced by Recheck", n)
	}
	register(t, c, "geth-b", "passing")
	for i := 120; i < 131; i++ {
		h.pass(t, t0.Add(time.Duration(i)*time.Second), stalled(100+uint64(i)))
	}
	if r := h.nomad.Restarts(); len(r) != 1 {
		t.Fatalf("restarts %v once geth-b passes", r)
	}
}

// A node that never comes back is restarted with a doubling backoff (1m, 2m, 4m capped) and at most MaxPerHour
// times in any hour.
func TestBackoffAndMaxPerHour(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-b", "passing")
	p := policy()
	p.Hold = 20 * time.Second
	h := newHost(t, c, "host-a", p, "a1")
	var at []time.Duration
	var reasons []string
	for i := 0; i < 4000; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		for _, e := range h.pass(t, now, stalled(100+uint64(i))) {
			if e.Kind == "withheld" {
				reasons = append(reasons, e.Reason)
			}
		}
		if n := len(h.nomad.Restarts()); n > len(at) {
			at = append(at, now.Sub(t0))
		}
		if i == 1000 {
			if out, _ := h.r.Note("geth-a"); !strings.Contains(out, "restart withheld: 3 restarts in the last hour (max_per_hour 3)") {
				t.Fatalf("note at 1000s: %q", out)
			}
		}
	}
	// 30s (After), then the backoff: +1m, +2m; then the hour's limit until the first restart leaves the window
	// (3630s; the 4m backoff is long over), then the backoff again (+4m, capped), the hour holding only one restart.
	want := []time.Duration{30 * time.Second, 90 * time.Second, 210 * time.Second, 3630 * time.Second, 3870 * time.Second}
	if !slices.Equal(at, want) {
		t.Fatalf("restarts at %v, want %v", at, want)
	}
	if !slices.Contains(reasons, ReasonBackoff) || !slices.Contains(reasons, ReasonLimit) {
		t.Fatalf("withheld reasons %v", reasons)
	}
}

// Two agents on two hosts, each with a stalled node of the same service: one restart at a time. The second waits for
// the lock, which the first holds until its node passes again; an agent that dies lets go of it with its session.
func TestOneNodePerServiceAcrossAgents(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-c", "passing")
	a := newHost(t, c, "host-a", policy(), "a1")
	b := newHost(t, c, "host-b", policy(), "b1")
	nodeB := func(head uint64) Node {
		n := stalled(head)
		n.Name, n.AllocID = "geth-b", "b1"
		return n
	}
	i := 0
	step := func(na, nb Node) {
		now := t0.Add(time.Duration(i) * time.Second)
		a.pass(t, now, na)
		b.pass(t, now, nb)
		i++
	}
	for ; i <= 31; step(stalled(100+uint64(i)), nodeB(100+uint64(i))) {
	}
	if ra, rb := a.nomad.Restarts(), b.nomad.Restarts(); len(ra) != 1 || len(rb) != 0 {
		t.Fatalf("restarts: host-a %v, host-b %v", ra, rb)
	}
	if out, _ := b.r.Note("geth-b"); out != "restart withheld: geth-a (agent host-a) of eth is being restarted first" {
		t.Fatalf("host-b note %q", out)
	}
	for end := i + 120; i < end; step(stalled(100+uint64(i)), nodeB(100+uint64(i))) {
	}
	if rb := b.nomad.Restarts(); len(rb) != 0 {
		t.Fatalf("host-b restarted while host-a held the lock: %v", rb)
	}
	// geth-a passes: host-a lets go, host-b restarts geth-b within a recheck.
	up := stalled(0)
	up.Status, up.Height = verdict.Passing, 500
	for end := i + 11; i < end; step(up, nodeB(100+uint64(i))) {
	}
	if rb := b.nomad.Restarts(); len(rb) != 1 {
		t.Fatalf("host-b restarts %v after geth-a passed", rb)
	}

	// host-b dies holding the lock for geth-b: its session expires and the lock with it.
	sessions := c.Sessions()
	if len(sessions) != 1 {
		t.Fatalf("sessions %v", sessions)
	}
	c.ExpireSession(sessions[0])
	if p, _, _ := c.Get(kvlayout.New("").RestartLock("eth"), nil); p != nil {
		t.Fatalf("lock of a dead agent still held: %+v", p)
	}
}

// Nomad refusing (the task is not running) is a failed restart: counted, shown, and the lock let go.
func TestFailedRestartReleasesTheLock(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-b", "passing")
	h := newHost(t, c, "host-a", policy(), "a1")
	h.nomad.SetAllocations("node-host-a", &nomadapi.Allocation{ID: "a1", TaskStates: map[string]*nomadapi.TaskState{"node": {State: "pending"}}})
	var ev []Event
	for i := 0; i <= 31; i++ {
		ev = append(ev, h.pass(t, t0.Add(time.Duration(i)*time.Second), stalled(100+uint64(i)))...)
	}
	if len(ev) != 1 || ev[0].Kind != "failed" {
		t.Fatalf("events %+v", ev)
	}
	if p, _, _ := c.Get(kvlayout.New("").RestartLock("eth"), nil); p == nil || p.Session != "" || len(c.Sessions()) != 0 {
		t.Fatalf("lock %+v, sessions %v", p, c.Sessions())
	}
	if out, _ := h.r.Note("geth-a"); out != "restart failed 1s ago, 1 of 3 this hour: nomad restart of allocation a1 task node: Unexpected response code: 500 (Task not running)" {
		t.Fatalf("note %q", out)
	}
}

// A session Consul forgot (it expired while the agent could not renew) loses its locks: the restarter notices on
// renewal and does not think it still holds them.
func TestLostSessionIsNoticed(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-b", "passing")
	p := policy()
	p.LockTTL = 15 * time.Second
	h := newHost(t, c, "host-a", p, "a1")
	for i := 0; i <= 30; i++ {
		h.pass(t, t0.Add(time.Duration(i)*time.Second), stalled(100+uint64(i)))
	}
	if len(h.r.held) != 1 {
		t.Fatalf("held %v", h.r.held)
	}
	c.ExpireSession(c.Sessions()[0])
	for i := 31; i <= 40; i++ {
		h.pass(t, t0.Add(time.Duration(i)*time.Second), stalled(100+uint64(i)))
	}
	if len(h.r.held) != 0 || h.r.session != "" {
		t.Fatalf("still believes it holds %v with session %q", h.r.held, h.r.session)
	}
	if c.Calls("Renew") == 0 {
		t.Fatal("never renewed")
	}
}

func TestRoundDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		1400 * time.Millisecond: "1s", 45 * time.Second: "45s", 150 * time.Second: "2m", 65 * time.Minute: "1h5m", 2 * time.Hour: "2h",
	} {
		if got := roundDuration(d); got != want {
			t.Errorf("%s: %s, want %s", d, got, want)
		}
	}
}

// An allocation a Nomad deployment has not found healthy is left to the deployment (healthy_deadline, auto_revert);
// once the deployment found it healthy it is restarted like any other.
func TestNoRestartDuringADeployment(t *testing.T) {
	c := fakes.NewConsul()
	register(t, c, "geth-b", "passing")
	h := newHost(t, c, "host-a", policy(), "a1")
	var ev []Event
	for i := 0; i <= 60; i++ {
		n := stalled(100 + uint64(i))
		n.Deploying = true
		ev = append(ev, h.pass(t, t0.Add(time.Duration(i)*time.Second), n)...)
	}
	if r := h.nomad.Restarts(); len(r) != 0 || len(ev) != 1 || ev[0].Reason != ReasonDeploying {
		t.Fatalf("restarts %v, events %+v", r, ev)
	}
	if out, _ := h.r.Note("geth-a"); out != "restart withheld: its Nomad deployment has not found it healthy (healthy_deadline and auto_revert decide)" {
		t.Fatalf("note %q", out)
	}
	h.pass(t, t0.Add(61*time.Second), stalled(161))
	if r := h.nomad.Restarts(); len(r) != 1 {
		t.Fatalf("restarts %v once the deployment decided", r)
	}
}
