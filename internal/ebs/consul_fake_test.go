package ebs_test

import (
	"context"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/registry"
)

// fakeConsul is the shared in-memory Consul (internal/fakes) with the steps the agent takes, for the snapshot unit
// tests (the snapshot tests against a real Consul cover the same paths end to end).
type fakeConsul struct{ *fakes.Consul }

func newFakeConsul() fakeConsul { return fakeConsul{fakes.NewConsul()} }

// register adds a node's service and check as the agent does.
func (f fakeConsul) register(service, node, status, output string) {
	err := f.ServiceRegisterOpts(&consulapi.AgentServiceRegistration{ID: node, Name: service, Tags: []string{registry.Tag},
		Meta:  map[string]string{"client_version": "Geth/v1.16.7-stable", "node": node},
		Check: &consulapi.AgentServiceCheck{CheckID: registry.CheckID(node), TTL: "1m", Status: status}}, consulapi.ServiceRegisterOpts{})
	if err == nil {
		err = f.UpdateTTLOpts(registry.CheckID(node), output, status, nil)
	}
	if err != nil {
		panic(err) // the fake is up: an error here is a bug in the test
	}
}

func (f fakeConsul) setStatus(node, status string) {
	if err := f.UpdateTTLOpts(registry.CheckID(node), "set by test", status, nil); err != nil {
		panic(err)
	}
}

// publish writes a head as the agent's heads store does.
func (f fakeConsul) publish(t *testing.T, service, node string, height uint64) {
	t.Helper()
	s := heads.New(f, f, kvlayout.New(""), hclog.NewNullLogger(), nil)
	if _, err := s.Publish(context.Background(), []heads.Head{{Service: service, Node: node, Height: height,
		Observed: time.Now(), Agent: "test-host"}}, nil); err != nil {
		t.Fatal(err)
	}
}

func (f fakeConsul) log() []string { return f.Events() }
