package fakes

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// ErrDown is what every call to a Consul fake returns while it is down.
var ErrDown = errors.New("fakes: consul is down (connection refused)")

// NodeName is the Consul node name of the fake agent.
const NodeName = "fake-node"

// Consul is an in-memory Consul agent with its KV store: the calls registry.AgentAPI, heads.KV and heads.Txn make,
// and the sessions, locks (KV acquire/release) and service health reads the restarter makes, with Consul's answers (404 for an unknown check or service, a raft index that grows with every write, blocking KV
// reads that wait for a change under their prefix). It keeps the servers' catalog apart from the agent's own state,
// as Consul does: registrations and status changes reach the catalog at once, an output-only change of a check does
// not (Consul's check_update_interval defers it; SyncDeferred plays that timer firing).
type Consul struct {
	mu       sync.Mutex
	down     bool
	services map[string]*consulapi.AgentService
	checks   map[string]*consulapi.AgentCheck
	catalog  map[string]*consulapi.HealthCheck // the servers' copy of the checks
	kv       map[string]*consulapi.KVPair
	index    uint64
	changed  chan struct{} // closed and replaced on every KV write
	calls    map[string]int
	blocked  int // List calls waiting for a change

	catalogWrites int
	events        []string // "maintenance on geth-a: <reason>", "maintenance off geth-a"

	sessions    map[string]*consulapi.SessionEntry
	nextSession int
	listed      map[string]int // List calls by prefix
}

// Listed counts the List calls (KV reads, blocking or not) by prefix.
func (c *Consul) Listed() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.listed)
}

// NewConsul returns an empty, reachable Consul.
func NewConsul() *Consul {
	c := &Consul{changed: make(chan struct{}), calls: map[string]int{}, index: 1, listed: map[string]int{}} // Consul indexes start above 0
	c.reset()
	return c
}

func (c *Consul) reset() {
	c.services = map[string]*consulapi.AgentService{}
	c.checks = map[string]*consulapi.AgentCheck{}
	c.catalog = map[string]*consulapi.HealthCheck{}
	c.kv = map[string]*consulapi.KVPair{}
	c.sessions = map[string]*consulapi.SessionEntry{}
}

// SetDown makes every call fail (true) or work again (false).
func (c *Consul) SetDown(down bool) {
	c.mu.Lock()
	c.down = down
	c.mu.Unlock()
}

// Wipe forgets every service, check and key, as a Consul agent restarted without its data does. The index keeps
// growing unless resetIndex, which makes it go back as a new cluster's does.
func (c *Consul) Wipe(resetIndex bool) {
	c.mu.Lock()
	c.reset()
	if resetIndex {
		c.index = 0 // bump makes it 1: a new cluster's first index
	}
	c.bump()
	c.mu.Unlock()
}

// Calls is how many times each method was called, by name ("UpdateTTLOpts", "Txn", ...).
func (c *Consul) Calls(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[method]
}

// Check returns a check's status and output; ok is false when there is no such check.
func (c *Consul) Check(checkID string) (status, output string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.checks[checkID]
	if ch == nil {
		return "", "", false
	}
	return ch.Status, ch.Output, true
}

// CatalogCheck returns the servers' copy of a check's status and output: what the Consul UI, consul-template and
// `chainwarden status` see. ok is false when the catalog has no such check.
func (c *Consul) CatalogCheck(checkID string) (status, output string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.catalog[checkID]
	if ch == nil {
		return "", "", false
	}
	return ch.Status, ch.Output, true
}

// SyncDeferred copies every agent check to the catalog, as the agent does when check_update_interval runs out.
func (c *Consul) SyncDeferred() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.checks {
		c.syncCheck(id)
	}
}

// syncCheck writes the agent's check to the catalog; c.mu must be held.
func (c *Consul) syncCheck(id string) {
	ch := c.checks[id]
	c.catalog[id] = &consulapi.HealthCheck{Node: NodeName, CheckID: ch.CheckID, Name: ch.Name, Status: ch.Status,
		Output: ch.Output, ServiceID: ch.ServiceID, ServiceName: ch.ServiceName, Type: ch.Type}
	c.catalogWrites++
}

// CatalogWrites is how many writes reached the servers' catalog: the agent's syncs and catalog registrations.
func (c *Consul) CatalogWrites() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.catalogWrites
}

// NodeName is the agent's node name.
func (c *Consul) NodeName() (string, error) {
	if err := c.enter("NodeName"); err != nil {
		return "", err
	}
	defer c.mu.Unlock()
	return NodeName, nil
}

// Node lists the catalog's checks of a node, as /v1/health/node/:node does.
func (c *Consul) Node(node string, _ *consulapi.QueryOptions) (consulapi.HealthChecks, *consulapi.QueryMeta, error) {
	if err := c.enter("Node"); err != nil {
		return nil, nil, err
	}
	defer c.mu.Unlock()
	var out consulapi.HealthChecks
	if node != NodeName {
		return out, &consulapi.QueryMeta{LastIndex: c.index}, nil
	}
	for _, id := range slices.Sorted(maps.Keys(c.catalog)) {
		cp := *c.catalog[id]
		out = append(out, &cp)
	}
	return out, &consulapi.QueryMeta{LastIndex: c.index}, nil
}

// Register writes checks to the catalog, as /v1/catalog/register does; the fake takes only SkipNodeUpdate
// registrations of this node's existing checks (all the registry sends).
func (c *Consul) Register(reg *consulapi.CatalogRegistration, _ *consulapi.WriteOptions) (*consulapi.WriteMeta, error) {
	if err := c.enter("Register"); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if reg.Node != NodeName || !reg.SkipNodeUpdate || reg.Service != nil {
		return nil, fmt.Errorf("fakes: unsupported catalog registration of node %q", reg.Node)
	}
	for _, ch := range reg.Checks {
		if c.services[ch.ServiceID] == nil {
			return nil, consulapi.StatusError{Code: 500, Body: "Unknown service ID " + ch.ServiceID + " for check ID " + ch.CheckID}
		}
	}
	for _, ch := range reg.Checks {
		cp := *ch
		c.catalog[ch.CheckID] = &cp
	}
	c.catalogWrites++
	return &consulapi.WriteMeta{}, nil
}

// ChecksWithFilterOpts lists the agent's checks (no filter supported).
func (c *Consul) ChecksWithFilterOpts(filter string, _ *consulapi.QueryOptions) (map[string]*consulapi.AgentCheck, error) {
	if err := c.enter("ChecksWithFilterOpts"); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	if filter != "" {
		return nil, fmt.Errorf("fakes: unsupported filter %q", filter)
	}
	out := map[string]*consulapi.AgentCheck{}
	for id, ch := range c.checks {
		cp := *ch
		out[id] = &cp
	}
	return out, nil
}

// Service answers /v1/agent/service/:id.
func (c *Consul) Service(id string, _ *consulapi.QueryOptions) (*consulapi.AgentService, *consulapi.QueryMeta, error) {
	if err := c.enter("Service"); err != nil {
		return nil, nil, err
	}
	defer c.mu.Unlock()
	s := c.services[id]
	if s == nil {
		return nil, nil, notFound("unknown service ID: " + id)
	}
	return cloneService(s), &consulapi.QueryMeta{}, nil
}

// EnableServiceMaintenanceOpts puts a service in maintenance: an extra critical check, as Consul does.
func (c *Consul) EnableServiceMaintenanceOpts(id, reason string, _ *consulapi.QueryOptions) error {
	if err := c.enter("EnableServiceMaintenanceOpts"); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.services[id] == nil {
		return notFound(fmt.Sprintf("No service registered with ID %q", id))
	}
	mid := "_service_maintenance:" + id
	c.checks[mid] = &consulapi.AgentCheck{CheckID: mid, ServiceID: id, Status: consulapi.HealthCritical, Notes: reason}
	c.syncCheck(mid)
	c.events = append(c.events, "maintenance on "+id+": "+reason)
	return nil
}

// DisableServiceMaintenanceOpts ends a service's maintenance.
func (c *Consul) DisableServiceMaintenanceOpts(id string, _ *consulapi.QueryOptions) error {
	if err := c.enter("DisableServiceMaintenanceOpts"); err != nil {
		return err
	}
	defer c.mu.Unlock()
	delete(c.checks, "_service_maintenance:"+id)
	delete(c.catalog, "_service_maintenance:"+id)
	c.events = append(c.events, "maintenance off "+id)
	return nil
}

// Events lists the maintenance changes made, in order.
func (c *Consul) Events() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// Get reads one key, as /v1/kv/:key does (nil pair when there is none).
func (c *Consul) Get(key string, _ *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error) {
	if err := c.enter("Get"); err != nil {
		return nil, nil, err
	}
	defer c.mu.Unlock()
	p := c.kv[key]
	if p == nil {
		return nil, &consulapi.QueryMeta{LastIndex: c.index}, nil
	}
	cp := *p
	cp.Value = slices.Clone(p.Value)
	return &cp, &consulapi.QueryMeta{LastIndex: c.index}, nil
}

func cloneService(s *consulapi.AgentService) *consulapi.AgentService {
	cp := *s
	cp.Meta = maps.Clone(s.Meta)
	cp.Tags = slices.Clone(s.Tags)
	return &cp
}

// ServiceByID returns a copy of a registered service, or nil.
func (c *Consul) ServiceByID(id string) *consulapi.AgentService {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.services[id]; s != nil {
		return cloneService(s)
	}
	return nil
}

// ServiceIDs lists the registered services' IDs, sorted.
func (c *Consul) ServiceIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.services))
}

// Blocked is how many blocking KV reads are waiting for a change.
func (c *Consul) Blocked() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocked
}

// Key returns a key's value, or nil.
func (c *Consul) Key(key string) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.kv[key]; p != nil {
		return slices.Clone(p.Value)
	}
	return nil
}

// Keys lists the keys under prefix, sorted.
func (c *Consul) Keys(prefix string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k := range c.kv {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// enter counts a call and fails it while down; it returns with c.mu held on success.
func (c *Consul) enter(method string) error {
	c.mu.Lock()
	c.calls[method]++
	if c.down {
		c.mu.Unlock()
		return ErrDown
	}
	return nil
}

func (c *Consul) bump() {
	c.index++
	close(c.changed)
	c.changed = make(chan struct{})
}

func notFound(what string) error {
	return consulapi.StatusError{Code: 404, Body: what}
}

// ServiceRegisterOpts registers a service and its check, as the agent endpoint does.
func (c *Consul) ServiceRegisterOpts(s *consulapi.AgentServiceRegistration, _ consulapi.ServiceRegisterOpts) error {
	if err := c.enter("ServiceRegisterOpts"); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if s.ID == "" || s.Name == "" {
		return consulapi.StatusError{Code: 400, Body: "Missing service name or ID"}
	}
	c.services[s.ID] = &consulapi.AgentService{ID: s.ID, Service: s.Name, Address: s.Address, Port: s.Port,
		Tags: slices.Clone(s.Tags), Meta: maps.Clone(s.Meta)}
	if ch := s.Check; ch != nil {
		status := ch.Status
		if status == "" {
			status = consulapi.HealthCritical
		}
		c.checks[ch.CheckID] = &consulapi.AgentCheck{CheckID: ch.CheckID, Name: ch.Name, Status: status,
			ServiceID: s.ID, ServiceName: s.Name, Type: "ttl"}
		c.syncCheck(ch.CheckID)
	}
	c.bump()
	return nil
}

// ServiceDeregisterOpts removes a service and its checks.
func (c *Consul) ServiceDeregisterOpts(id string, _ *consulapi.QueryOptions) error {
	if err := c.enter("ServiceDeregisterOpts"); err != nil {
		return err
	}
	defer c.mu.Unlock()
	if c.services[id] == nil {
		return notFound(fmt.Sprintf("Unknown service ID %q. Ensure that the service ID is passed, not the service name.", id))
	}
	delete(c.services, id)
	for k, ch := range c.checks {
		if ch.ServiceID == id {
			delete(c.checks, k)
			delete(c.catalog, k)
		}
	}
	c.bump()
	return nil
}

// UpdateTTLOpts sets a TTL check's status and output.
func (c *Consul) UpdateTTLOpts(checkID, output, status string, _ *consulapi.QueryOptions) error {
	if err := c.enter("UpdateTTLOpts"); err != nil {
		return err
	}
	defer c.mu.Unlock()
	ch := c.checks[checkID]
	if ch == nil {
		return notFound(fmt.Sprintf("Unknown check ID %q. Ensure that the check ID is passed, not the check name.", checkID))
	}
	switch status {
	case consulapi.HealthPassing, consulapi.HealthWarning, consulapi.HealthCritical:
	default:
		return consulapi.StatusError{Code: 400, Body: "Unknown check status: " + status}
	}
	if len(output) > 4096 {
		output = output[:4096] // Consul truncates check output
	}
	changed := ch.Status != status
	ch.Status, ch.Output = status, output
	if changed { // a status change goes to the servers at once, its output with it; an output-only change waits
		c.syncCheck(checkID)
	}
	return nil
}

// servicesFilter is the one filter form the registry sends: `"TAG" in Tags and (Meta.agent == "ID" or ...)`, one
// Meta.agent term per ID it owns.
var (
	servicesFilter = regexp.MustCompile(`^"([^"]+)" in Tags and \((Meta\.agent == "[^"]*"(?: or Meta\.agent == "[^"]*")*)\)$`)
	agentTerm      = regexp.MustCompile(`Meta\.agent == "([^"]*)"`)
)

// ServicesWithFilterOpts lists the services matching the registry's filter; any other filter is an error, so a change
// of the filter shows up in the unit tests.
func (c *Consul) ServicesWithFilterOpts(filter string, _ *consulapi.QueryOptions) (map[string]*consulapi.AgentService, error) {
	if err := c.enter("ServicesWithFilterOpts"); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	m := servicesFilter.FindStringSubmatch(filter)
	if m == nil {
		return nil, fmt.Errorf("fakes: unsupported filter %q", filter)
	}
	var agents []string
	for _, t := range agentTerm.FindAllStringSubmatch(m[2], -1) {
		agents = append(agents, t[1])
	}
	out := map[string]*consulapi.AgentService{}
	for id, s := range c.services {
		if slices.Contains(s.Tags, m[1]) && slices.Contains(agents, s.Meta["agent"]) {
			cp := *s
			out[id] = &cp
		}
	}
	return out, nil
}

// List returns the keys under prefix. With a WaitIndex it blocks, as Consul does, until the index passes it or the
// query's context ends (then it answers with what it has, like a wait that timed out).
func (c *Consul) List(prefix string, q *consulapi.QueryOptions) (consulapi.KVPairs, *consulapi.QueryMeta, error) {
	if err := c.enter("List"); err != nil {
		return nil, nil, err
	}
	c.listed[prefix]++
	for q != nil && q.WaitIndex != 0 && c.index == q.WaitIndex {
		ch := c.changed
		c.blocked++
		c.mu.Unlock()
		select {
		case <-ch:
		case <-q.Context().Done():
		}
		c.mu.Lock()
		c.blocked--
		if q.Context().Err() != nil {
			break
		}
	}
	defer c.mu.Unlock()
	var out consulapi.KVPairs
	for _, k := range slices.Sorted(maps.Keys(c.kv)) {
		if strings.HasPrefix(k, prefix) {
			p := *c.kv[k]
			p.Value = slices.Clone(p.Value)
			out = append(out, &p)
		}
	}
	return out, &consulapi.QueryMeta{LastIndex: c.index}, nil
}

// Txn applies KV set, delete, check-and-set, delete-check-and-set and lock operations atomically; a failed check or any
// other verb rolls the transaction back, as Consul does.
func (c *Consul) Txn(ops consulapi.TxnOps, _ *consulapi.QueryOptions) (bool, *consulapi.TxnResponse, *consulapi.QueryMeta, error) {
	if err := c.enter("Txn"); err != nil {
		return false, nil, nil, err
	}
	defer c.mu.Unlock()
	if len(ops) > 64 {
		return false, nil, nil, consulapi.StatusError{Code: 413, Body: fmt.Sprintf("Transaction contains too many operations (%d > 64)", len(ops))}
	}
	resp := &consulapi.TxnResponse{}
	for i, op := range ops {
		if op.KV == nil {
			resp.Errors = append(resp.Errors, &consulapi.TxnError{OpIndex: i, What: "fakes: unsupported operation"})
			continue
		}
		switch op.KV.Verb {
		case consulapi.KVSet, consulapi.KVDelete:
		case consulapi.KVLock: // as Consul's kvsLockTxn: the session must exist, and no other may hold the key
			switch p := c.kv[op.KV.Key]; {
			case op.KV.Session == "":
				resp.Errors = append(resp.Errors, &consulapi.TxnError{OpIndex: i, What: "missing session"})
			case c.sessions[op.KV.Session] == nil:
				resp.Errors = append(resp.Errors, &consulapi.TxnError{OpIndex: i, What: fmt.Sprintf("invalid session %q", op.KV.Session)})
			case p != nil && p.Session != "" && p.Session != op.KV.Session:
				resp.Errors = append(resp.Errors, &consulapi.TxnError{OpIndex: i,
					What: fmt.Sprintf("failed to lock key %q, lock is already held", op.KV.Key)})
			}
		case consulapi.KVCAS, consulapi.KVDeleteCAS:
			var have uint64
			if p := c.kv[op.KV.Key]; p != nil {
				have = p.ModifyIndex
			}
			if have != op.KV.Index {
				resp.Errors = append(resp.Errors, &consulapi.TxnError{OpIndex: i,
					What: fmt.Sprintf("failed to %s key %q, index is stale", op.KV.Verb, op.KV.Key)})
			}
		default:
			resp.Errors = append(resp.Errors, &consulapi.TxnError{OpIndex: i, What: "fakes: unsupported operation"})
		}
	}
	if len(resp.Errors) > 0 {
		return false, resp, &consulapi.QueryMeta{}, nil
	}
	c.index++
	for _, op := range ops {
		switch op.KV.Verb {
		case consulapi.KVSet, consulapi.KVCAS:
			p := c.kv[op.KV.Key]
			if p == nil {
				p = &consulapi.KVPair{Key: op.KV.Key, CreateIndex: c.index}
				c.kv[op.KV.Key] = p
			}
			p.Value, p.ModifyIndex = slices.Clone(op.KV.Value), c.index
		case consulapi.KVLock:
			p := c.kv[op.KV.Key]
			if p == nil {
				p = &consulapi.KVPair{Key: op.KV.Key, CreateIndex: c.index}
				c.kv[op.KV.Key] = p
			}
			if p.Session != op.KV.Session {
				p.LockIndex++
			}
			p.Session, p.Value, p.ModifyIndex = op.KV.Session, slices.Clone(op.KV.Value), c.index
		case consulapi.KVDelete, consulapi.KVDeleteCAS:
			delete(c.kv, op.KV.Key)
		}
	}
	c.index-- // bump adds it back and wakes the blocked readers
	c.bump()
	return true, resp, &consulapi.QueryMeta{}, nil
}

// Checks lists the catalog's checks of every instance of a service, as /v1/health/checks/:service does.
func (c *Consul) Checks(service string, _ *consulapi.QueryOptions) (consulapi.HealthChecks, *consulapi.QueryMeta, error) {
	if err := c.enter("Checks"); err != nil {
		return nil, nil, err
	}
	defer c.mu.Unlock()
	var out consulapi.HealthChecks
	for _, id := range slices.Sorted(maps.Keys(c.catalog)) {
		if ch := c.catalog[id]; ch.ServiceName == service {
			cp := *ch
			out = append(out, &cp)
		}
	}
	return out, &consulapi.QueryMeta{LastIndex: c.index}, nil
}

// Create makes a session, as /v1/session/create does: a TTL, when given, must be between 10s and 24h, and the
// behavior release (default) or delete. The fake does not expire sessions by itself (ExpireSession plays a TTL
// running out) and does not model the lock-delay.
func (c *Consul) Create(se *consulapi.SessionEntry, _ *consulapi.WriteOptions) (string, *consulapi.WriteMeta, error) {
	if err := c.enter("Create"); err != nil {
		return "", nil, err
	}
	defer c.mu.Unlock()
	e := &consulapi.SessionEntry{}
	if se != nil {
		cp := *se
		e = &cp
	}
	if e.TTL != "" {
		d, err := time.ParseDuration(e.TTL)
		if err != nil || d < 10*time.Second || d > 24*time.Hour {
			return "", nil, consulapi.StatusError{Code: 400, Body: fmt.Sprintf("Request decode failed: Invalid Session TTL '%s', must be between [10s=24h0m0s]", e.TTL)}
		}
	}
	switch e.Behavior {
	case "":
		e.Behavior = consulapi.SessionBehaviorRelease
	case consulapi.SessionBehaviorRelease, consulapi.SessionBehaviorDelete:
	default:
		return "", nil, consulapi.StatusError{Code: 400, Body: fmt.Sprintf("Invalid Behavior setting '%s'", e.Behavior)}
	}
	c.nextSession++
	e.ID = fmt.Sprintf("00000000-0000-0000-0000-%012d", c.nextSession)
	e.Node = NodeName
	c.sessions[e.ID] = e
	c.bump()
	return e.ID, &consulapi.WriteMeta{}, nil
}

// Renew renews a session's TTL; an unknown (destroyed or expired) session gives no entry and no error, as the API
// client answers Consul's 404.
func (c *Consul) Renew(id string, _ *consulapi.WriteOptions) (*consulapi.SessionEntry, *consulapi.WriteMeta, error) {
	if err := c.enter("Renew"); err != nil {
		return nil, nil, err
	}
	defer c.mu.Unlock()
	e := c.sessions[id]
	if e == nil {
		return nil, &consulapi.WriteMeta{}, nil
	}
	cp := *e
	return &cp, &consulapi.WriteMeta{}, nil
}

// Destroy ends a session; the locks it held are released or their keys deleted, as its behavior says.
func (c *Consul) Destroy(id string, _ *consulapi.WriteOptions) (*consulapi.WriteMeta, error) {
	if err := c.enter("Destroy"); err != nil {
		return nil, err
	}
	defer c.mu.Unlock()
	c.invalidate(id)
	return &consulapi.WriteMeta{}, nil
}

// ExpireSession invalidates a session as Consul does when its TTL runs out without a renewal (its agent died).
func (c *Consul) ExpireSession(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.invalidate(id)
}

// Sessions lists the live sessions' IDs, sorted.
func (c *Consul) Sessions() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.sessions))
}

// invalidate removes a session and lets go of its locks; c.mu must be held.
func (c *Consul) invalidate(id string) {
	e := c.sessions[id]
	if e == nil {
		return
	}
	delete(c.sessions, id)
	for k, p := range c.kv {
		if p.Session != id {
			continue
		}
		if e.Behavior == consulapi.SessionBehaviorDelete {
			delete(c.kv, k)
		} else {
			p.Session = ""
			p.ModifyIndex = c.index + 1
		}
	}
	c.bump()
}

// Acquire takes the lock on a key for p.Session and writes p.Value, as PUT /v1/kv/:key?acquire= does: false when
// another session holds it, an error for a session that does not exist.
func (c *Consul) Acquire(p *consulapi.KVPair, _ *consulapi.WriteOptions) (bool, *consulapi.WriteMeta, error) {
	if err := c.enter("Acquire"); err != nil {
		return false, nil, err
	}
	defer c.mu.Unlock()
	if c.sessions[p.Session] == nil {
		return false, nil, consulapi.StatusError{Code: 500, Body: fmt.Sprintf("invalid session %q", p.Session)}
	}
	cur := c.kv[p.Key]
	if cur != nil && cur.Session != "" && cur.Session != p.Session {
		return false, &consulapi.WriteMeta{}, nil
	}
	c.index++
	if cur == nil {
		cur = &consulapi.KVPair{Key: p.Key, CreateIndex: c.index}
		c.kv[p.Key] = cur
	}
	if cur.Session != p.Session {
		cur.LockIndex++
	}
	cur.Session, cur.Flags, cur.Value, cur.ModifyIndex = p.Session, p.Flags, slices.Clone(p.Value), c.index
	c.index--
	c.bump()
	return true, &consulapi.WriteMeta{}, nil
}

// Release lets go of the lock p.Session holds on a key (writing p.Value), as PUT /v1/kv/:key?release= does: false
// when that session does not hold it.
func (c *Consul) Release(p *consulapi.KVPair, _ *consulapi.WriteOptions) (bool, *consulapi.WriteMeta, error) {
	if err := c.enter("Release"); err != nil {
		return false, nil, err
	}
	defer c.mu.Unlock()
	cur := c.kv[p.Key]
	if cur == nil || cur.Session == "" || cur.Session != p.Session {
		return false, &consulapi.WriteMeta{}, nil
	}
	c.index++
	cur.Session, cur.Flags, cur.Value, cur.ModifyIndex = "", p.Flags, slices.Clone(p.Value), c.index
	c.index--
	c.bump()
	return true, &consulapi.WriteMeta{}, nil
}
