package ebs_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

// fakeConsul is the local Consul agent and its KV store as Snapshot sees them, for unit tests (the snapshot tests
// against a real Consul cover the same paths end to end). It answers like Consul: a service registered by the
// agent with ID = node name, its TTL check "chainwarden:<node>", heads as JSON under PREFIX/heads/SERVICE/NODE,
// and maintenance as an extra critical check "_service_maintenance:<id>".
type fakeConsul struct {
	mu       sync.Mutex
	checks   map[string]*consulapi.AgentCheck
	services map[string]*consulapi.AgentService
	kv       map[string][]byte
	events   []string // "maintenance on geth-a: <reason>", "maintenance off geth-a"
}

func newFakeConsul() *fakeConsul {
	return &fakeConsul{checks: map[string]*consulapi.AgentCheck{}, services: map[string]*consulapi.AgentService{},
		kv: map[string][]byte{}}
}

// register adds a node's service and check as the agent does.
func (f *fakeConsul) register(service, node, status, output string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.services[node] = &consulapi.AgentService{ID: node, Service: service,
		Meta: map[string]string{"client_version": "Geth/v1.16.7-stable", "node": node}}
	f.checks[ebs.CheckID(node)] = &consulapi.AgentCheck{CheckID: ebs.CheckID(node), ServiceID: node,
		ServiceName: service, Status: status, Output: output}
}

func (f *fakeConsul) setStatus(node, status string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks[ebs.CheckID(node)].Status = status
}

// publish writes a head as the agent's heads store does.
func (f *fakeConsul) publish(t *testing.T, service, node string, height uint64) {
	t.Helper()
	b, err := json.Marshal(heads.Head{Height: height, Observed: time.Now(), Agent: "test-host"})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kv[kvlayout.New("").Head(service, node)] = b
}

func (f *fakeConsul) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

func (f *fakeConsul) ChecksWithFilterOpts(filter string, _ *consulapi.QueryOptions) (map[string]*consulapi.AgentCheck, error) {
	if filter != "" {
		return nil, fmt.Errorf("fake: filters not supported: %q", filter)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]*consulapi.AgentCheck{}
	for id, c := range f.checks {
		cc := *c
		out[id] = &cc
	}
	return out, nil
}

func (f *fakeConsul) Service(id string, _ *consulapi.QueryOptions) (*consulapi.AgentService, *consulapi.QueryMeta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[id]
	if !ok {
		return nil, nil, fmt.Errorf("Unexpected response code: 404 (unknown service ID: %s)", id)
	}
	cs := *s
	return &cs, &consulapi.QueryMeta{}, nil
}

func (f *fakeConsul) EnableServiceMaintenanceOpts(id, reason string, _ *consulapi.QueryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.services[id]; !ok {
		return fmt.Errorf("Unexpected response code: 404 (No service registered with ID %q)", id)
	}
	f.checks["_service_maintenance:"+id] = &consulapi.AgentCheck{CheckID: "_service_maintenance:" + id,
		ServiceID: id, Status: consulapi.HealthCritical, Notes: reason}
	f.events = append(f.events, "maintenance on "+id+": "+reason)
	return nil
}

func (f *fakeConsul) DisableServiceMaintenanceOpts(id string, _ *consulapi.QueryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.checks, "_service_maintenance:"+id)
	f.events = append(f.events, "maintenance off "+id)
	return nil
}

func (f *fakeConsul) Get(key string, _ *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.kv[key]
	if !ok {
		return nil, &consulapi.QueryMeta{}, nil
	}
	return &consulapi.KVPair{Key: key, Value: append([]byte(nil), v...)}, &consulapi.QueryMeta{}, nil
}
