// Package registry keeps the local Consul agent's view of this host's chain nodes right: one service per node with a
// TTL check updated after every probe, nodes that went away deregistered, and everything registered again when
// Consul comes back without its state. While Consul is unreachable it backs off and logs only the first failure and
// the recovery.
package registry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/consulacl"
)

// Tag marks every service chainwarden registers.
const Tag = "chainwarden"

// Parallelism is how many calls to the Consul agent the registry makes at once.
const Parallelism = 16

// CheckID is the ID of a node's TTL check: the one place it is made, for the registry, `volume snapshot` and tests.
func CheckID(node string) string { return "chainwarden:" + node }

// Backoff bounds of the retries while Consul is unreachable.
const (
	MinBackoff = time.Second
	MaxBackoff = 30 * time.Second
)

// AgentAPI is the part of Consul's agent API the registry uses.
type AgentAPI interface {
	NodeName() (string, error)
	ServiceRegisterOpts(service *consulapi.AgentServiceRegistration, opts consulapi.ServiceRegisterOpts) error
	ServiceDeregisterOpts(serviceID string, q *consulapi.QueryOptions) error
	UpdateTTLOpts(checkID, output, status string, q *consulapi.QueryOptions) error
	ServicesWithFilterOpts(filter string, q *consulapi.QueryOptions) (map[string]*consulapi.AgentService, error)
	ChecksWithFilterOpts(filter string, q *consulapi.QueryOptions) (map[string]*consulapi.AgentCheck, error)
}

// CatalogAPI is the part of Consul's health and catalog APIs the registry uses to bring check outputs to the servers:
// Health().Node reads this node's checks as the catalog has them, Catalog().Register writes them back.
type CatalogAPI interface {
	Node(node string, q *consulapi.QueryOptions) (consulapi.HealthChecks, *consulapi.QueryMeta, error)
	Register(reg *consulapi.CatalogRegistration, q *consulapi.WriteOptions) (*consulapi.WriteMeta, error)
}

// Catalog adapts a Consul API client to CatalogAPI.
func Catalog(c *consulapi.Client) CatalogAPI { return catalogClient{c} }

type catalogClient struct{ c *consulapi.Client }

func (c catalogClient) Node(node string, q *consulapi.QueryOptions) (consulapi.HealthChecks, *consulapi.QueryMeta, error) {
	return c.c.Health().Node(node, q)
}

func (c catalogClient) Register(reg *consulapi.CatalogRegistration, q *consulapi.WriteOptions) (*consulapi.WriteMeta, error) {
	return c.c.Catalog().Register(reg, q)
}

// DefaultFreshEvery bounds how far the catalog's figures (height, lag, block age) may trail the agent's.
const DefaultFreshEvery = 10 * time.Second

// Service is one node's registration and its current check state.
type Service struct {
	ID      string // the node name
	Name    string // the chainwarden service, e.g. "eth-mainnet"
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
	Status  string // passing | warning | critical
	Output  string
	// Key is the part of Output whose change must reach Consul at once (its reasons, without the figures: height,
	// head, lag, peers, the age of the last block); "" means all of Output. Between changes of Status or Key, the
	// check's figures go to Consul in rounds (see Registry): Consul writes follow status changes and reasons, not
	// probes or blocks.
	Key string
}

type sent struct {
	status, key, output string
	at                  time.Time
}

// pushed is what the catalog was last given for a check by a catalog write.
type pushed struct {
	output, key string
	at          time.Time
}

// Registry syncs services to the local Consul agent.
//
// A change of a check's status or reasons (Service.Key) goes to the local agent and the catalog in the pass that
// sees it. Figures alone go in rounds: every roundEvery (FreshEvery, or a third of the TTL when that is shorter) a
// pass gives the local agent every check's latest output, which also refreshes its TTL, and writes the ones the
// local agent holds back to the catalog in one registration. One call per check per round, and one catalog write
// per round for the host, however many blocks came meanwhile.
type Registry struct {
	agent           AgentAPI
	agentID         string // meta "agent": which chainwarden registered it, so only ours are ever removed
	formerIDs       []string
	ttl             time.Duration
	deregisterAfter time.Duration
	log             hclog.Logger
	clock           clock.Clock

	mu          sync.Mutex
	registered  map[string]*Service // as last registered
	lastTTL     map[string]sent     // what the check was last updated with, and when
	nextRound   time.Time           // when the next round of figures is due
	agentStatus map[string]string   // the status the local agent has for a check (registration or update)

	catalog     CatalogAPI
	freshEvery  time.Duration
	nodeName    string
	pushed      map[string]pushed
	deferred    map[string]*Service // checks whose latest output the local agent holds back from the servers
	pushFailed  bool
	refused     map[string]bool // services Consul refused to register for lack of a permission (logged once each)
	down        bool
	backoff     *backoff.Backoff
	nextTry     time.Time
	lastAudit   time.Time
	auditEvery  time.Duration
	writes      uint64
	OnStateLost func() // called when Consul may have lost its state: it answers again after failing, or forgot a check
	parallelism int
}

// Options configure a Registry.
type Options struct {
	AgentID string
	// FormerAgentIDs are IDs this agent registered under before (the hostname, before the ID became the Consul node
	// name): services registered under them are its own too (resumed, audited, removed when no longer wanted).
	FormerAgentIDs  []string
	TTL             time.Duration
	DeregisterAfter time.Duration
	AuditEvery      time.Duration // how often the agent's services are listed to catch lost registrations
	Clock           clock.Clock   // nil: the wall clock
	// Catalog, when set, brings check outputs to the servers at once: the local Consul agent sends an output-only
	// change (same status, new output) to the servers only every check_update_interval (5 minutes by default), so the
	// Consul UI and consul-template would show a blank or stale reason. Reasons go at once; figures at most every
	// FreshEvery (default DefaultFreshEvery), in one catalog write per pass for all checks of this host.
	Catalog    CatalogAPI
	FreshEvery time.Duration
}

// New returns a registry.
func New(agent AgentAPI, opts Options, log hclog.Logger) *Registry {
	if opts.AuditEvery == 0 {
		opts.AuditEvery = 30 * time.Second
	}
	if opts.FreshEvery == 0 {
		opts.FreshEvery = DefaultFreshEvery
	}
	return &Registry{agent: agent, agentID: opts.AgentID, formerIDs: opts.FormerAgentIDs, ttl: opts.TTL, deregisterAfter: opts.DeregisterAfter,
		log: log, clock: clock.OrReal(opts.Clock), registered: map[string]*Service{}, lastTTL: map[string]sent{},
		agentStatus: map[string]string{}, catalog: opts.Catalog, freshEvery: opts.FreshEvery,
		pushed: map[string]pushed{}, deferred: map[string]*Service{}, refused: map[string]bool{},
		auditEvery: opts.AuditEvery, parallelism: Parallelism, backoff: backoff.New(MinBackoff, MaxBackoff)}
}

// Writes is how many calls that change state were made to Consul.
func (r *Registry) Writes() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

// Down reports whether Consul failed on the last attempt.
func (r *Registry) Down() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.down
}

// errCheckGone means Consul no longer knows a check (it restarted without its state, or someone removed it).
var errCheckGone = errors.New("check not registered")

// Sync brings Consul in line with services: registers new or changed ones, updates every TTL check, deregisters
// ours that are not in the list. While Consul is failing it returns quickly until the backoff has passed.
func (r *Registry) Sync(ctx context.Context, services []Service) error {
	now := r.clock.Now()
	r.mu.Lock()
	if r.down && now.Before(r.nextTry) {
		r.mu.Unlock()
		return nil
	}
	audit := now.Sub(r.lastAudit) >= r.auditEvery
	r.mu.Unlock()

	err := r.sync(ctx, services, audit)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		switch {
		case consulacl.IsDenied(err):
			// A refusal, not an outage: the registration or check it names was not made (a service is registered
			// with its check in one call, so none is left without the other). Said every time: it is the
			// operator's to fix.
			r.log.Error("consul refused the agent's token, will retry", "error", consulacl.Explain(err))
		case !r.down:
			r.log.Error("consul unreachable, will keep probing and retry", "error", err)
		}
		r.down = true
		r.nextTry = now.Add(r.backoff.Next())
		return err
	}
	if r.down {
		r.log.Info("consul reachable again, registrations restored")
	}
	r.down = false
	r.backoff.Reset()
	if audit {
		r.lastAudit = now
	}
	return nil
}

func (r *Registry) sync(ctx context.Context, services []Service, audit bool) error {
	now := r.clock.Now()
	r.mu.Lock()
	wasDown := r.down
	round := !now.Before(r.nextRound)
	if round {
		r.nextRound = now.Add(r.roundEvery())
	}
	r.mu.Unlock()
	switch {
	case wasDown:
		// Consul may have lost its state while we could not reach it: register everything again.
		r.stateLost()
		audit = true
	case !round: // a round updates every check, and finds a lost one itself
		lost, err := r.sentinel(ctx, services)
		if err != nil {
			return err
		}
		if lost {
			r.log.Warn("consul lost this agent's registrations (restarted without its state?), registering them again")
			r.stateLost()
			audit = true
		}
	}
	want := map[string]bool{}
	for i := range services {
		want[services[i].ID] = true
	}
	r.mu.Lock()
	for id := range r.refused {
		if !want[id] {
			delete(r.refused, id)
		}
	}
	r.mu.Unlock()
	if audit {
		if err := r.audit(ctx, want); err != nil {
			return err
		}
	}
	// Deregister ours that are gone.
	r.mu.Lock()
	var gone []string
	for id := range r.registered {
		if !want[id] {
			gone = append(gone, id)
		}
	}
	r.mu.Unlock()
	sort.Strings(gone)
	for _, id := range gone {
		if err := r.agent.ServiceDeregisterOpts(id, (&consulapi.QueryOptions{}).WithContext(ctx)); err != nil && !isNotFound(err) {
			return fmt.Errorf("deregister %s: %w", id, err)
		}
		r.mu.Lock()
		r.forget(id)
		r.writes++
		r.mu.Unlock()
		r.log.Info("deregistered node", "node", id)
	}
	// Checks already registered first: updating them is cheap, registering is not (Consul writes each new service to
	// its servers), and a slow round of registrations must not let the existing checks' TTLs run out.
	var known, fresh []Service
	r.mu.Lock()
	for _, s := range services {
		if prev := r.registered[s.ID]; prev != nil && sameRegistration(prev, &s) {
			known = append(known, s)
		} else {
			fresh = append(fresh, s)
		}
	}
	r.mu.Unlock()
	if err := r.parallel(ctx, known, func(s *Service) error { return r.syncOne(ctx, s, round) }); err != nil {
		return err
	}
	if err := r.parallel(ctx, fresh, func(s *Service) error { return r.refusedAlone(s, r.syncOne(ctx, s, round)) }); err != nil {
		return err
	}
	// The catalog write goes to the servers, which hold it through a leader election (rpc_hold_timeout, 7 s by
	// default): bounded to a quarter of the TTL, so the next pass updates the TTLs in time.
	pctx, cancel := context.WithTimeout(ctx, r.serverTimeout())
	defer cancel()
	r.pushOutputs(pctx, round)
	return nil
}

// serverTimeout bounds the calls of a pass that go to the Consul servers (not those to the local agent, which answer
// at once): a quarter of the TTL (at least a second), so that two of them and a probe fit in one TTL and a leader
// election never lets the checks expire.
func (r *Registry) serverTimeout() time.Duration { return ServerTimeout(r.ttl) }

// stateLost forgets what the local agent was given, so this pass registers everything again.
func (r *Registry) stateLost() {
	r.mu.Lock()
	r.registered = map[string]*Service{}
	r.lastTTL = map[string]sent{}
	r.agentStatus = map[string]string{}
	r.pushed = map[string]pushed{}
	r.deferred = map[string]*Service{}
	r.mu.Unlock()
	if r.OnStateLost != nil {
		r.OnStateLost()
	}
}

// sentinel touches, every pass, the check the local agent was given longest ago, with what it already holds (so
// the figures still change only in rounds): between rounds a check may go untouched for up to a round, and a local
// agent restarted without its state must be found within a pass, not a round. One call a pass; lost says the local
// agent no longer knows the check.
func (r *Registry) sentinel(ctx context.Context, services []Service) (lost bool, err error) {
	r.mu.Lock()
	var pick string
	var last sent
	for i := range services {
		id := services[i].ID
		l, ok := r.lastTTL[id]
		if ok && r.registered[id] != nil && (pick == "" || l.at.Before(last.at)) {
			pick, last = id, l
		}
	}
	r.mu.Unlock()
	if pick == "" {
		return false, nil
	}
	err = r.agent.UpdateTTLOpts(CheckID(pick), last.output, last.status, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if checkGone(err) {
			return true, nil
		}
		return false, fmt.Errorf("update check of %s: %w", pick, err)
	}
	r.mu.Lock()
	r.writes++
	last.at = r.clock.Now()
	r.lastTTL[pick] = last
	r.mu.Unlock()
	return false, nil
}

// roundEvery is how often a round brings every check's figures to Consul: FreshEvery, or a third of the TTL when
// that is shorter (a round is also what refreshes the TTL of a check whose status and reasons stand).
func (r *Registry) roundEvery() time.Duration { return min(r.freshEvery, r.ttl/3) }

// ServerTimeout is the deadline of a call to the Consul servers made in a pass, for checks with this TTL.
func ServerTimeout(ttl time.Duration) time.Duration { return max(ttl/4, time.Second) }

// forget drops what the registry knows of a check; r.mu must be held.
func (r *Registry) forget(id string) {
	delete(r.registered, id)
	delete(r.lastTTL, id)
	delete(r.agentStatus, id)
	delete(r.pushed, id)
	delete(r.deferred, id)
}

// pushOutputs writes the outputs the local agent holds back to the catalog, in one registration for every check of
// this host that needs it: a check whose reasons changed, and in a round every one (its figures; a check held back
// for longer than freshEvery goes too, should a round have failed). It
// reads the catalog's own copy of the checks first and changes only status and output, so the agent's anti-entropy
// finds the catalog in sync with it. A failure is logged (once) and retried next pass; the checks' TTLs never depend
// on it.
func (r *Registry) pushOutputs(ctx context.Context, round bool) {
	if r.catalog == nil {
		return
	}
	now := r.clock.Now()
	r.mu.Lock()
	var due []Service
	for id, s := range r.deferred {
		p, ok := r.pushed[id]
		if ok && p.output == s.Output {
			delete(r.deferred, id)
			continue
		}
		if !ok || round || p.key != s.key() || now.Sub(p.at) >= r.freshEvery {
			due = append(due, *s)
		}
	}
	node := r.nodeName
	r.mu.Unlock()
	if len(due) == 0 {
		return
	}
	err := r.push(ctx, node, due, now)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil && !r.pushFailed:
		r.log.Warn("cannot write check outputs to the consul catalog; the consul ui shows them late", "error", err)
	case err == nil && r.pushFailed:
		r.log.Info("check outputs reach the consul catalog again")
	}
	r.pushFailed = err != nil
}

func (r *Registry) push(ctx context.Context, node string, due []Service, now time.Time) error {
	if node == "" {
		n, err := r.agent.NodeName()
		if err != nil {
			return fmt.Errorf("consul node name: %w", err)
		}
		node = n
		r.mu.Lock()
		r.nodeName = n
		r.mu.Unlock()
	}
	have, _, err := r.catalog.Node(node, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("read checks of node %s: %w", node, err)
	}
	byID := make(map[string]*consulapi.HealthCheck, len(have))
	for _, c := range have {
		byID[c.CheckID] = c
	}
	var checks consulapi.HealthChecks
	var sentSvc []Service
	for _, s := range due {
		c := byID[CheckID(s.ID)]
		if c == nil { // not in the catalog yet: the agent's own sync of the registration brings it
			continue
		}
		if c.Status != s.Status || c.Output != s.Output {
			cp := *c
			cp.Status, cp.Output = s.Status, s.Output
			checks = append(checks, &cp)
		}
		sentSvc = append(sentSvc, s)
	}
	if len(checks) > 0 {
		reg := &consulapi.CatalogRegistration{Node: node, SkipNodeUpdate: true, Checks: checks}
		if _, err := r.catalog.Register(reg, (&consulapi.WriteOptions{}).WithContext(ctx)); err != nil {
			return fmt.Errorf("write %d check outputs to the catalog: %w", len(checks), err)
		}
	}
	r.mu.Lock()
	if len(checks) > 0 {
		r.writes++
	}
	for _, s := range sentSvc {
		r.pushed[s.ID] = pushed{output: s.Output, key: s.key(), at: now}
		if d := r.deferred[s.ID]; d != nil && d.Output == s.Output {
			delete(r.deferred, s.ID)
		}
	}
	r.mu.Unlock()
	return nil
}

// parallel runs fn over services with bounded concurrency and returns the first error.
func (r *Registry) parallel(ctx context.Context, services []Service, fn func(*Service) error) error {
	sem := make(chan struct{}, r.parallelism)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for i := range services {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(s *Service) {
			defer func() { <-sem; wg.Done() }()
			if err := fn(s); err != nil {
				once.Do(func() { first = err })
			}
		}(&services[i])
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// refusedAlone keeps a registration Consul refused for lack of a permission (a service the token may not write)
// from holding up the others: Consul is up, so it is not an outage, and backing off would let the other checks'
// TTLs run out. Nothing of the refused one was registered (the service and its check are one call); it is tried
// again next pass, and logged once until it is accepted.
func (r *Registry) refusedAlone(s *Service, err error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err == nil && r.refused[s.ID]:
		delete(r.refused, s.ID)
		r.log.Info("consul accepted the registration", "node", s.ID)
	case err != nil && consulacl.IsDenied(err):
		if !r.refused[s.ID] {
			r.refused[s.ID] = true
			r.log.Error("consul refused the agent's token, will retry", "node", s.ID, "service", s.Name,
				"error", consulacl.Explain(err))
		}
		return nil
	}
	return err
}

func (r *Registry) syncOne(ctx context.Context, s *Service, round bool) error {
	r.mu.Lock()
	prev := r.registered[s.ID]
	r.mu.Unlock()
	if prev == nil || !sameRegistration(prev, s) {
		if err := r.register(ctx, s); err != nil {
			return err
		}
	}
	err := r.updateTTL(ctx, s, round)
	if errors.Is(err, errCheckGone) {
		// Consul lost the check (restart without state): register again and retry once.
		r.log.Warn("consul lost the registration, registering again", "node", s.ID)
		if r.OnStateLost != nil {
			r.OnStateLost()
		}
		if err := r.register(ctx, s); err != nil {
			return err
		}
		err = r.updateTTL(ctx, s, round)
	}
	return err
}

func (r *Registry) register(ctx context.Context, s *Service) error {
	meta := map[string]string{}
	for k, v := range s.Meta {
		meta[k] = v
	}
	meta["agent"] = r.agentID
	reg := &consulapi.AgentServiceRegistration{
		ID: s.ID, Name: s.Name, Address: s.Address, Port: s.Port,
		Tags: append([]string{Tag}, s.Tags...), Meta: meta,
		Check: &consulapi.AgentServiceCheck{
			CheckID:                        CheckID(s.ID),
			Name:                           "chain sync (" + s.ID + ")",
			TTL:                            r.ttl.String(),
			Status:                         s.Status,
			Notes:                          "updated by chainwarden after every probe; critical when the agent stops",
			DeregisterCriticalServiceAfter: r.deregisterAfter.String(),
		},
	}
	if err := r.agent.ServiceRegisterOpts(reg, consulapi.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return fmt.Errorf("register %s: %w", s.ID, err)
	}
	cp := *s
	r.mu.Lock()
	r.registered[s.ID] = &cp
	delete(r.lastTTL, s.ID)
	r.agentStatus[s.ID] = s.Status
	r.writes++
	r.mu.Unlock()
	return nil
}

func (s *Service) key() string {
	if s.Key != "" {
		return s.Key
	}
	return s.Output
}

// updateTTL gives the local agent a check's status and output when its status or reasons changed, and in a round
// when its figures did or its TTL wants a refresh; never later than half the TTL (a round that failed).
func (r *Registry) updateTTL(ctx context.Context, s *Service, round bool) error {
	now := r.clock.Now()
	r.mu.Lock()
	last, ok := r.lastTTL[s.ID]
	r.mu.Unlock()
	if ok && last.status == s.Status && last.key == s.key() && now.Sub(last.at) < r.ttl/2 {
		if !round || (last.output == s.Output && now.Sub(last.at) < r.roundEvery()/2) {
			return nil // nothing new, or figures between rounds; and the TTL has plenty of time left
		}
	}
	err := r.agent.UpdateTTLOpts(CheckID(s.ID), s.Output, s.Status, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if checkGone(err) {
			return fmt.Errorf("update check of %s: %w", s.ID, errCheckGone)
		}
		return fmt.Errorf("update check of %s: %w", s.ID, err)
	}
	r.mu.Lock()
	r.writes++
	r.lastTTL[s.ID] = sent{status: s.Status, key: s.key(), output: s.Output, at: now}
	if r.agentStatus[s.ID] == s.Status {
		// The local agent keeps an output-only change from the servers for check_update_interval.
		cp := *s
		r.deferred[s.ID] = &cp
	} else {
		// A status change goes to the servers at once, with its output.
		r.pushed[s.ID] = pushed{output: s.Output, key: s.key(), at: now}
		delete(r.deferred, s.ID)
	}
	r.agentStatus[s.ID] = s.Status
	r.mu.Unlock()
	return nil
}

// Standing returns the status the local Consul agent holds for the check of each service this agent registered
// (by service ID): what a restarted agent resumes from. A TTL check that is still passing was updated by the
// agent's previous run within its TTL; one whose TTL ran out is critical. (A restarted host has none: its Consul
// agent forgot them, see internal/consulstate.)
func (r *Registry) Standing(ctx context.Context) (map[string]Standing, error) {
	filter := r.ownFilter()
	have, err := r.agent.ServicesWithFilterOpts(filter, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	if len(have) == 0 {
		return nil, nil
	}
	checks, err := r.agent.ChecksWithFilterOpts("", (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list checks: %w", err)
	}
	out := map[string]Standing{}
	for id, svc := range have {
		if c, ok := checks[CheckID(id)]; ok {
			out[id] = Standing{Service: svc.Service, Meta: svc.Meta, Status: c.Status}
		}
	}
	return out, nil
}

// ownFilter selects the services this agent registered, under its ID or one it had before.
func (r *Registry) ownFilter() string {
	ids := []string{fmt.Sprintf("Meta.agent == %q", r.agentID)}
	for _, id := range r.formerIDs {
		ids = append(ids, fmt.Sprintf("Meta.agent == %q", id))
	}
	return fmt.Sprintf("%q in Tags and (%s)", Tag, strings.Join(ids, " or "))
}

// Standing is a service this agent registered as the local Consul agent holds it, with its check's status.
type Standing struct {
	Service string
	Meta    map[string]string
	Status  string // passing, warning, critical
}

// audit lists our services on the agent: registrations we think exist but Consul lost are marked for registering
// again; services registered by this agent that are no longer wanted (left from before a restart) are removed.
func (r *Registry) audit(ctx context.Context, want map[string]bool) error {
	filter := r.ownFilter()
	have, err := r.agent.ServicesWithFilterOpts(filter, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	r.mu.Lock()
	for id := range r.registered {
		if _, ok := have[id]; !ok {
			r.forget(id)
		}
	}
	var stale []string
	for id := range have {
		if !want[id] {
			stale = append(stale, id)
		}
	}
	r.mu.Unlock()
	sort.Strings(stale)
	for _, id := range stale {
		if err := r.agent.ServiceDeregisterOpts(id, (&consulapi.QueryOptions{}).WithContext(ctx)); err != nil && !isNotFound(err) {
			return fmt.Errorf("deregister %s: %w", id, err)
		}
		r.mu.Lock()
		r.writes++
		r.mu.Unlock()
		r.log.Info("deregistered node no longer configured", "node", id)
	}
	return nil
}

func sameRegistration(a, b *Service) bool {
	if a.Name != b.Name || a.Address != b.Address || a.Port != b.Port || len(a.Tags) != len(b.Tags) || len(a.Meta) != len(b.Meta) {
		return false
	}
	for i := range a.Tags {
		if a.Tags[i] != b.Tags[i] {
			return false
		}
	}
	for k, v := range a.Meta {
		if b.Meta[k] != v {
			return false
		}
	}
	return true
}

// checkGone says a TTL update failed because the local agent does not know the check (any more).
func checkGone(err error) bool {
	return isNotFound(err) || strings.Contains(err.Error(), "does not have associated TTL")
}

func isNotFound(err error) bool {
	var se consulapi.StatusError
	if errors.As(err, &se) && se.Code == 404 {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "404") || strings.Contains(msg, "Unknown check") || strings.Contains(msg, "Unknown service")
}
