package discovery

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/nodespec"
)

func ptr[T any](v T) *T { return &v }

// alloc builds an allocation the way the Nomad API returns one for a running job with a group network.
func alloc(id, job, group string, index int, create uint64, meta map[string]string, ports ...nomadapi.PortMapping) *nomadapi.Allocation {
	return &nomadapi.Allocation{
		ID: id, Namespace: "default", Name: job + "." + group + "[" + strconv.Itoa(index) + "]", JobID: job, TaskGroup: group,
		NodeID: "node-1", NodeName: "host-a", CreateIndex: create,
		DesiredStatus: nomadapi.AllocDesiredStatusRun, ClientStatus: nomadapi.AllocClientStatusRunning,
		Job: &nomadapi.Job{ID: ptr(job), Name: ptr(job), TaskGroups: []*nomadapi.TaskGroup{{
			Name:  ptr(group),
			Tasks: []*nomadapi.Task{{Name: "node", Meta: meta}, {Name: "sidecar"}},
		}}},
		TaskStates:         map[string]*nomadapi.TaskState{"node": {State: "running"}, "sidecar": {State: "running"}},
		AllocatedResources: &nomadapi.AllocatedResources{Shared: nomadapi.AllocatedSharedResources{Ports: ports}},
	}
}

func gethMeta() map[string]string {
	return map[string]string{
		MetaKind: "ethereum", MetaService: "eth-dev", MetaChainID: "1337", MetaNetwork: "dev",
		MetaRPCPort: "rpc", MetaWSPort: "ws", MetaClient: "geth", MetaWarnLag: "3", MetaMaxLag: "20",
		MetaMaxBehind: "1m", MetaMaxFinalizedBehind: "0s", MetaMinBlockTime: "500ms",
	}
}

func TestNodesFromAllocations(t *testing.T) {
	w := New(nil, "node-1", nil, nil)
	rpc := nomadapi.PortMapping{Label: "rpc", Value: 21001, HostIP: "10.0.1.5"}
	ws := nomadapi.PortMapping{Label: "ws", Value: 21002, HostIP: "10.0.1.5"}
	nodes := w.nodes([]*nomadapi.Allocation{alloc("a1", "geth", "geth", 0, 10, gethMeta(), rpc, ws)})
	if len(nodes) != 1 {
		t.Fatalf("got %d nodes, want 1: %+v", len(nodes), nodes)
	}
	n := nodes[0]
	if n.Name != "geth-geth-0" || n.Kind != "ethereum" || n.Service != "eth-dev" || n.Client != "geth" || n.Network != "dev" {
		t.Errorf("node fields: %+v", n)
	}
	if n.RPC != "http://10.0.1.5:21001" || n.Address != "10.0.1.5" || n.Port != 21001 {
		t.Errorf("address: rpc %q address %q port %d", n.RPC, n.Address, n.Port)
	}
	if n.ChainID == nil || *n.ChainID != 1337 {
		t.Errorf("chain id %v", n.ChainID)
	}
	if th := n.Thresholds; th.WarnLag != 3 || th.MaxLag != 20 || th.MaxBehind != time.Minute || th.TimeOnly ||
		th.MaxFinalizedBehind != 0 || n.Chain.MinBlockTime != 500*time.Millisecond {
		t.Errorf("thresholds %+v, chain %+v", th, n.Chain)
	}
	if n.Source != "nomad" || n.AllocID != "a1" || n.Task != "node" {
		t.Errorf("source %q, allocation %q, task %q", n.Source, n.AllocID, n.Task)
	}
	if len(n.Tags) != 1 || n.Tags[0] != "ws_port=21002" || n.WS != "ws://10.0.1.5:21002" {
		t.Errorf("tags %v, ws %q", n.Tags, n.WS)
	}
}

// A CometBFT task's WebSocket is /websocket on the port its ws meta names (its RPC port); https RPC means wss.
func TestNodesCometBFTWebSocket(t *testing.T) {
	w := New(nil, "node-1", nil, nil)
	meta := map[string]string{MetaKind: "cometbft", MetaService: "comet", MetaNetwork: "test-chain",
		MetaRPCPort: "rpc", MetaWSPort: "rpc", MetaScheme: "https"}
	rpc := nomadapi.PortMapping{Label: "rpc", Value: 26657, HostIP: "10.0.1.6"}
	nodes := w.nodes([]*nomadapi.Allocation{alloc("c1", "comet", "comet", 0, 10, meta, rpc)})
	if len(nodes) != 1 || nodes[0].WS != "wss://10.0.1.6:26657/websocket" {
		t.Fatalf("nodes %+v", nodes)
	}
}

func TestNodesSkipsWhatIsNotARunningChainTask(t *testing.T) {
	rpc := nomadapi.PortMapping{Label: "rpc", Value: 21001, HostIP: "127.0.0.1"}
	stopped := alloc("a2", "geth", "geth", 1, 11, gethMeta(), rpc)
	stopped.DesiredStatus = nomadapi.AllocDesiredStatusStop
	pending := alloc("a3", "geth", "geth", 2, 12, gethMeta(), rpc)
	pending.ClientStatus = nomadapi.AllocClientStatusPending
	taskDead := alloc("a4", "geth", "geth", 3, 13, gethMeta(), rpc)
	taskDead.TaskStates["node"].State = "dead"
	noMeta := alloc("a5", "web", "web", 0, 14, map[string]string{"team": "x"}, rpc)
	noPort := alloc("a6", "geth", "geth", 4, 15, gethMeta())
	badChain := gethMeta()
	badChain[MetaChainID] = "one"
	badChainID := alloc("a7", "geth", "geth", 5, 16, badChain, rpc)
	noChainMeta := gethMeta()
	delete(noChainMeta, MetaChainID)
	missingChainID := alloc("a8", "geth", "geth", 6, 17, noChainMeta, rpc)

	w := New(nil, "node-1", nil, nil)
	nodes := w.nodes([]*nomadapi.Allocation{stopped, pending, taskDead, noMeta, noPort, badChainID, missingChainID})
	if len(nodes) != 0 {
		t.Fatalf("want no nodes, got %+v", nodes)
	}
	// The invalid ones were reported once each and are remembered, so the log isn't flooded every query.
	for _, k := range []string{"a6/node", "a7/node", "a8/node"} {
		if w.warned[k] == "" {
			t.Errorf("no warning recorded for %s: %v", k, w.warned)
		}
	}
	if !strings.Contains(w.warned["a6/node"], `no port labelled "rpc"`) {
		t.Errorf("port warning: %q", w.warned["a6/node"])
	}
	if !strings.Contains(w.warned["a8/node"], "chain_id is required") {
		t.Errorf("chain id warning: %q", w.warned["a8/node"])
	}
	// Once the allocation is gone, its warning is forgotten.
	w.nodes(nil)
	if len(w.warned) != 0 {
		t.Errorf("warnings kept for gone allocations: %v", w.warned)
	}
}

func TestNewestAllocationWinsTheName(t *testing.T) {
	oldA := alloc("old", "geth", "geth", 0, 10, gethMeta(), nomadapi.PortMapping{Label: "rpc", Value: 21001, HostIP: "127.0.0.1"})
	newA := alloc("new", "geth", "geth", 0, 20, gethMeta(), nomadapi.PortMapping{Label: "rpc", Value: 22002, HostIP: "127.0.0.1"})
	w := New(nil, "node-1", nil, nil)
	nodes := w.nodes([]*nomadapi.Allocation{newA, oldA})
	if len(nodes) != 1 || nodes[0].Port != 22002 {
		t.Fatalf("want only the newest allocation's node, got %+v", nodes)
	}
}

func TestMetaInterpolationAndInheritance(t *testing.T) {
	meta := map[string]string{MetaKind: "cometbft", MetaNetwork: "irita-hub", MetaRole: "validator-${NOMAD_ALLOC_INDEX}"}
	a := alloc("a1", "irita", "validator", 2, 10, meta, nomadapi.PortMapping{Label: "rpc", Value: 26657, HostIP: "10.0.0.9"})
	// chainwarden_service from the job's meta, chainwarden_client from the group's: the task inherits both.
	a.Job.Meta = map[string]string{MetaService: "irita", MetaClient: "job-level"}
	a.Job.TaskGroups[0].Meta = map[string]string{MetaClient: "irita"}
	nodes := New(nil, "", nil, nil).nodes([]*nomadapi.Allocation{a})
	if len(nodes) != 1 {
		t.Fatalf("nodes: %+v", nodes)
	}
	n := nodes[0]
	if n.Name != "irita-validator-2" || n.Service != "irita" || n.Client != "irita" || n.Role != "validator-2" {
		t.Errorf("got %+v", n)
	}
}

func TestNetworkResourcePorts(t *testing.T) {
	// Task-level (legacy) network resources carry the port too.
	a := alloc("a1", "cometbft", "cometbft", 0, 10, map[string]string{MetaKind: "cometbft", MetaService: "cmt", MetaNetwork: "c1"})
	a.AllocatedResources.Tasks = map[string]*nomadapi.AllocatedTaskResources{"node": {Networks: []*nomadapi.NetworkResource{{
		IP: "192.168.1.7", DynamicPorts: []nomadapi.Port{{Label: "rpc", Value: 25000}},
	}}}}
	nodes := New(nil, "", nil, nil).nodes([]*nomadapi.Allocation{a})
	if len(nodes) != 1 || nodes[0].RPC != "http://192.168.1.7:25000" {
		t.Fatalf("nodes: %+v", nodes)
	}
}

func TestNodeName(t *testing.T) {
	cases := []struct {
		ns, job, group, task string
		index                int
		withTask             bool
		want                 string
	}{
		{"default", "geth", "geth", "geth", 0, false, "geth-geth-0"},
		{"", "IRITA.Hub", "validator", "irita", 3, false, "irita-hub-validator-3"},
		{"prod", "cometbft", "node", "cometbft", 1, true, "prod-cometbft-node-1-cometbft"},
		{"default", "my_job", "grp", "t", 0, false, "my-job-grp-0"},
	}
	for _, c := range cases {
		a := &nomadapi.Allocation{Namespace: c.ns, JobID: c.job, TaskGroup: c.group, Name: c.job + "." + c.group + "[" + strconv.Itoa(c.index) + "]"}
		if got := NodeName(a, c.task, c.withTask); got != c.want {
			t.Errorf("NodeName(%s/%s/%s[%d]) = %q, want %q", c.ns, c.job, c.group, c.index, got, c.want)
		}
	}
	long := &nomadapi.Allocation{JobID: strings.Repeat("ethereum-archive-", 5), TaskGroup: "g", Name: "x.g[0]"}
	got := NodeName(long, "t", false)
	if len(got) > 63 || !strings.HasPrefix(got, "ethereum-archive-") {
		t.Errorf("long name %q (%d chars)", got, len(got))
	}
	other := &nomadapi.Allocation{JobID: strings.Repeat("ethereum-archive-", 5) + "x", TaskGroup: "g", Name: "x.g[0]"}
	if NodeName(other, "t", false) == got {
		t.Errorf("two long names collide: %q", got)
	}
}

// Run hands the agent the node set at first and on every change, keeps the last set while Nomad fails, retries
// with backoff on the clock, and picks up again when Nomad answers.
func TestRunFollowsAllocations(t *testing.T) {
	nomad := fakes.NewNomad("node-1")
	clk := fakes.NewClock(time.Unix(1e9, 0))
	w := New(nomad, "", nil, clk)
	updates := make(chan []nodespec.Node, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx, func(n []nodespec.Node) { updates <- n }) }()

	if got := <-updates; len(got) != 0 {
		t.Fatalf("first update: %+v", got)
	}
	rpc := nomadapi.PortMapping{Label: "rpc", Value: 21001, HostIP: "10.0.1.5"}
	nomad.SetAllocations("node-1", alloc("a1", "geth", "geth", 0, 10, gethMeta(), rpc))
	if got := <-updates; len(got) != 1 || got[0].Name != "geth-geth-0" || got[0].Port != 21001 {
		t.Fatalf("after a placement: %+v", got)
	}
	if w.NodeID() != "node-1" {
		t.Fatalf("node id %q", w.NodeID())
	}

	// The same set again (another allocation of another job, not a chain node): no update.
	other := alloc("b1", "web", "web", 0, 11, nil)
	nomad.SetAllocations("node-1", alloc("a1", "geth", "geth", 0, 10, gethMeta(), rpc), other)

	// Nomad fails: no update (the containers keep running); the retry waits on the clock.
	nomad.SetError(errors.New("connection refused"))
	clk.BlockUntil(1)
	nomad.SetError(nil)
	nomad.SetAllocations("node-1", other)
	clk.Advance(w.MinBackoff) // the first retry waits at most MinBackoff
	if got := <-updates; len(got) != 0 {
		t.Fatalf("after the node stopped: %+v", got)
	}
	select {
	case got := <-updates:
		t.Fatalf("an update without a change: %+v", got)
	default:
	}
	cancel()
	<-done
}

// An allocation whose deployment has not found it healthy (yet, or at all) is marked Deploying (the restarter leaves
// it to the deployment); one the deployment found healthy, or one placed without a deployment, is not.
func TestDeployingAllocations(t *testing.T) {
	rpc := nomadapi.PortMapping{Label: "rpc", Value: 21001, HostIP: "127.0.0.1"}
	judging := alloc("a1", "geth", "geth", 0, 10, gethMeta(), rpc)
	judging.DeploymentID = "d1"
	decided := alloc("a2", "geth2", "geth", 0, 11, gethMeta(), rpc)
	decided.DeploymentID, decided.DeploymentStatus = "d1", &nomadapi.AllocDeploymentStatus{Healthy: ptr(true)}
	plain := alloc("a3", "geth3", "geth", 0, 12, gethMeta(), rpc)
	failed := alloc("a4", "geth4", "geth", 0, 13, gethMeta(), rpc)
	failed.DeploymentID, failed.DeploymentStatus = "d1", &nomadapi.AllocDeploymentStatus{Healthy: ptr(false)}
	nodes := New(nil, "node-1", nil, nil).nodes([]*nomadapi.Allocation{judging, decided, plain, failed})
	got := map[string]bool{}
	for _, n := range nodes {
		got[n.AllocID] = n.Deploying
	}
	if !got["a1"] || got["a2"] || got["a3"] || !got["a4"] || len(got) != 4 {
		t.Fatalf("deploying: %v", got)
	}
}
