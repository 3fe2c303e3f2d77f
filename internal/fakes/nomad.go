package fakes

import (
	"context"
	"fmt"
	"slices"
	"sync"

	nomadapi "github.com/hashicorp/nomad/api"
)

// Nomad is the part of a Nomad agent that discovery reads: its own client node ID and the allocations on a client
// node, with blocking queries that wait until the allocations change (or the query's context ends); and the task
// restart the restarter asks for, with Nomad's answers (unknown allocation or task, a task that is not running).
type Nomad struct {
	mu      sync.Mutex
	nodeID  string
	allocs  map[string][]*nomadapi.Allocation // by client node ID
	index   uint64
	changed chan struct{}
	err     error // returned by every call while set
	blocked int

	restarts []string // "allocID/task" of every restart done, in order
}

// NewNomad returns a Nomad client agent whose node ID is nodeID.
func NewNomad(nodeID string) *Nomad {
	return &Nomad{nodeID: nodeID, allocs: map[string][]*nomadapi.Allocation{}, index: 1, changed: make(chan struct{})}
}

// SetAllocations replaces the allocations of a client node and wakes the blocked queries.
func (n *Nomad) SetAllocations(nodeID string, allocs ...*nomadapi.Allocation) {
	n.mu.Lock()
	n.allocs[nodeID] = allocs
	n.index++
	close(n.changed)
	n.changed = make(chan struct{})
	n.mu.Unlock()
}

// SetError makes every call fail with err (nil: work again), and wakes the blocked queries.
func (n *Nomad) SetError(err error) {
	n.mu.Lock()
	n.err = err
	close(n.changed)
	n.changed = make(chan struct{})
	n.mu.Unlock()
}

// Blocked is how many allocation queries are waiting for a change.
func (n *Nomad) Blocked() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blocked
}

// Self answers /v1/agent/self with the client's node ID.
func (n *Nomad) Self() (*nomadapi.AgentSelf, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err != nil {
		return nil, n.err
	}
	return &nomadapi.AgentSelf{Stats: map[string]map[string]string{"client": {"node_id": n.nodeID}}}, nil
}

// Allocations answers /v1/node/:id/allocations, blocking while q.WaitIndex is the current index.
func (n *Nomad) Allocations(nodeID string, q *nomadapi.QueryOptions) ([]*nomadapi.Allocation, *nomadapi.QueryMeta, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ctx := context.Background()
	if q != nil && q.Context() != nil {
		ctx = q.Context()
	}
	for n.err == nil && q != nil && q.WaitIndex != 0 && q.WaitIndex == n.index && ctx.Err() == nil {
		ch := n.changed
		n.blocked++
		n.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		n.mu.Lock()
		n.blocked--
	}
	if n.err != nil {
		return nil, nil, n.err
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	return slices.Clone(n.allocs[nodeID]), &nomadapi.QueryMeta{LastIndex: n.index}, nil
}

// Restart restarts a task of an allocation (all its running tasks when taskName is ""), as the client's
// /v1/client/allocation/:id/restart does: an unknown allocation or task, or a task that is not running, is an error.
// The task's restart count grows and blocked allocation queries wake, as the task's state changed.
func (n *Nomad) Restart(alloc *nomadapi.Allocation, taskName string, _ *nomadapi.QueryOptions) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err != nil {
		return n.err
	}
	var found *nomadapi.Allocation
	for _, allocs := range n.allocs {
		for _, a := range allocs {
			if a.ID == alloc.ID {
				found = a
			}
		}
	}
	if found == nil {
		return fmt.Errorf("Unexpected response code: 404 (Unknown allocation %q)", alloc.ID)
	}
	var tasks []string
	for name, st := range found.TaskStates {
		if taskName == "" && st.State == "running" || name == taskName {
			tasks = append(tasks, name)
		}
	}
	if taskName != "" && len(tasks) == 0 {
		return fmt.Errorf("Unexpected response code: 500 (Could not find task runner for task: %s)", taskName)
	}
	slices.Sort(tasks)
	for _, name := range tasks {
		st := found.TaskStates[name]
		if st.State != "running" {
			return fmt.Errorf("Unexpected response code: 500 (Task not running)")
		}
		st.Restarts++
		n.restarts = append(n.restarts, found.ID+"/"+name)
	}
	n.index++
	close(n.changed)
	n.changed = make(chan struct{})
	return nil
}

// Restarts lists the restarts done, "allocID/task" each, in order.
func (n *Nomad) Restarts() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.restarts)
}
