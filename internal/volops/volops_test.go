package volops_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/volops"
)

type handlerFunc func(context.Context, volops.Op) volops.Op

func (f handlerFunc) Handle(ctx context.Context, op volops.Op) volops.Op { return f(ctx, op) }

func startWorker(t *testing.T, c *fakes.Consul, h volops.Handler, nodes ...string) {
	t.Helper()
	w := &volops.Worker{KV: c, Txn: c, Layout: kvlayout.New(""), AgentID: "host-a", Handler: h}
	for _, n := range nodes {
		w.Holders = append(w.Holders, volops.Holder{Node: n, Volume: n + "-data", InstanceID: "i-1"})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func client(c *fakes.Consul) *volops.Client {
	return &volops.Client{KV: c, Txn: c, Layout: kvlayout.New(""), Who: "test", Accept: 200 * time.Millisecond, Timeout: 30 * time.Second}
}

// An operation goes from the requester through KV to the agent holding the volume and back, each state seen.
func TestOperationRoundTrip(t *testing.T) {
	c := fakes.NewConsul()
	startWorker(t, c, handlerFunc(func(_ context.Context, op volops.Op) volops.Op {
		if op.State != volops.Running || op.Job != "geth" || op.JobVersion != 3 {
			op.State, op.Message = volops.Failed, "unexpected op"
			return op
		}
		op.State, op.Snapshot, op.Volume = volops.Done, "snap-1", "geth-a-data"
		return op
	}), "geth-a")
	cl := client(c)
	var mu sync.Mutex
	var states []string
	cl.Progress = func(o volops.Op) { mu.Lock(); states = append(states, o.State); mu.Unlock() }
	// The holder shows once the worker registered.
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, ok, err := cl.Holder(context.Background(), "geth-a")
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if h.Agent != "host-a" || h.Volume != "geth-a-data" {
				t.Fatalf("holder %+v", h)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no holder registered")
		}
		time.Sleep(time.Millisecond) // a poll interval
	}
	if _, ok, _ := cl.Holder(context.Background(), "geth-b"); ok {
		t.Fatal("a holder for a node nobody holds")
	}
	op, err := cl.Do(context.Background(), volops.Op{Kind: volops.Snapshot, Node: "geth-a", Job: "geth", JobVersion: 3})
	if err != nil || op.State != volops.Done || op.Snapshot != "snap-1" || op.Agent != "host-a" || op.RequestedBy != "test" {
		t.Fatalf("op %+v %v", op, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(states, ",") != "requested,running,done" && strings.Join(states, ",") != "requested,done" {
		t.Fatalf("states seen %v", states)
	}
}

// Nobody holds the node: the request is withdrawn after Accept and the error says what to look at. A second
// request while one runs is refused as busy; an agent that restarts fails what it left running.
func TestNoAgentBusyAndRestart(t *testing.T) {
	c := fakes.NewConsul()
	cl := client(c)
	op, err := cl.Do(context.Background(), volops.Op{Kind: volops.Snapshot, Node: "nobody"})
	if !errors.Is(err, volops.ErrNoAgent) || !strings.Contains(err.Error(), "is the chainwarden agent on its host running") {
		t.Fatalf("no agent: %v", err)
	}
	var left volops.Op
	json.Unmarshal(c.Key(kvlayout.New("").VolumeOp("nobody")), &left)
	if left.State != volops.Failed || left.ID != op.ID {
		t.Fatalf("the request was not withdrawn: %+v", left)
	}

	running := volops.Op{ID: "abc", Kind: volops.Restore, Node: "geth-a", State: volops.Running, Agent: "host-a", Updated: time.Now()}
	b, _ := json.Marshal(running)
	c.Txn(consulapi.TxnOps{{KV: &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: kvlayout.New("").VolumeOp("geth-a"), Value: b}}}, nil)
	if _, err := cl.Do(context.Background(), volops.Op{Kind: volops.Snapshot, Node: "geth-a"}); !errors.Is(err, volops.ErrBusy) ||
		!strings.Contains(err.Error(), "restore abc on geth-a's volume is running") {
		t.Fatalf("busy: %v", err)
	}
	w := &volops.Worker{KV: c, Txn: c, Layout: kvlayout.New(""), AgentID: "host-a",
		Holders: []volops.Holder{{Node: "geth-a"}}, Handler: handlerFunc(func(_ context.Context, op volops.Op) volops.Op { return op })}
	if err := w.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(c.Key(kvlayout.New("").VolumeOp("geth-a")), &left)
	if left.State != volops.Failed || !strings.Contains(left.Message, "the agent restarted while it ran") {
		t.Fatalf("after the restart: %+v", left)
	}
	// Now the volume is free again: a handler that forgets to say how it ended fails the operation.
	startWorker(t, c, handlerFunc(func(_ context.Context, op volops.Op) volops.Op { return op }), "geth-a")
	op, err = cl.Do(context.Background(), volops.Op{Kind: volops.Snapshot, Node: "geth-a"})
	if err != nil || op.State != volops.Failed {
		t.Fatalf("unfinished handler: %+v %v", op, err)
	}
}
