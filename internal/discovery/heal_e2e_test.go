package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/nomadjob"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// TestSelfHealingOnNomad runs a full node of a real CometBFT chain (one validator on the host makes the blocks) from
// the real cometbft spec on a real Nomad (docker driver, local image), judged by the real agent with a restart
// block, and checks the two ways chainwarden heals it:
//   - upgrade: Nomad judges deployments by the agent's verdict. A good upgrade is promoted; an upgrade that never
//     finds peers is failed at healthy_deadline and reverted automatically, and the old version passes again.
//   - restart: the node hangs (docker pause) while the chain goes on; after `after` the agent restarts its
//     allocation through Nomad, and the node comes back and passes, its check saying it was restarted.
//
// The deadlines are short here (-var min_healthy_time=3s healthy_deadline=40s, restart after 10s); the shipped
// defaults are tuned for real chains (docs/JOBS.md, docs/AGENT.md). The times are logged, not asserted.
func TestSelfHealingOnNomad(t *testing.T) {
	h := startHeal(t)
	if !t.Run("upgrade", h.upgrade) {
		return
	}
	t.Run("restart", h.restart)
}

// heal is the world of TestSelfHealingOnNomad.
type heal struct {
	c       *cluster
	nodes   *discovered
	vars    map[string]string // the first version of the full node's job
	peers   string            // its persistent_peers: the validator
	service string
	metrics string // the agent's /metrics URL
}

const fullNode = "cometbft-cometbft-0"

func startHeal(t *testing.T) *heal {
	tc := testenv.StartCluster(t, "cometbft-full")
	net := testenv.StartCometNetwork(t, 1)
	val := net.Nodes[0]
	h := &heal{service: "cometbft-heal", peers: fmt.Sprintf("%s@127.0.0.1:%d", val.ID, val.P2PPort)}
	// The validator is a node block of the same service: the chain's head, and the node that passes while the full
	// node is restarted.
	extra := fmt.Sprintf(`node "validator-0" {
  kind      = "cometbft"
  rpc       = %q
  service   = %q
  network   = %q
  min_peers = 0
}

restart {
  after   = "10s"
  backoff = "1m"
  hold    = "3m"
}
`, val.RPC, h.service, net.ChainID)
	a, port := startAgent(t, tc.Consul, extra, func(o *agent.Options) { o.Nomad = tc.Nomad.Client.Allocations() })
	h.c = &cluster{Cluster: tc, agent: a, agentPort: port}
	h.metrics = "http://127.0.0.1:" + port + "/metrics"
	h.nodes = watch(t, h.c)

	// The chain's genesis, and keys of the full node's own (it is not a validator), in the job's Nomad Variable.
	keys := t.TempDir()
	testenv.Run(t, testenv.Bin(t, "cometbft"), "init", "--home", keys)
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	h.c.PutVar(t, "nomad/jobs/cometbft", map[string]string{
		"genesis":            read(filepath.Join(val.Home, "config", "genesis.json")),
		"node_key":           read(filepath.Join(keys, "config", "node_key.json")),
		"priv_validator_key": read(filepath.Join(keys, "config", "priv_validator_key.json")),
	})
	h.vars = map[string]string{
		"image": tc.Docker.CometBFTImage(t), "host_volume": "cometbft-full", "chain_id": net.ChainID,
		"service": h.service, "proxy_app": "kvstore", "persistent_peers": h.peers,
		"p2p_port": strconv.Itoa(testenv.FreePort(t)), "cpu": "500", "memory": "512", "kill_timeout": "10s",
		"agent_port": port, "min_healthy_time": "3s", "healthy_deadline": "40s", "progress_deadline": "1m",
	}
	return h
}

func (h *heal) upgrade(t *testing.T) {
	c := h.c
	start := time.Now()
	c.Run(t, "cometbft", h.vars)
	t.Logf("first deployment (empty volume: init, sync from genesis, %s of passing) successful in %s", h.vars["min_healthy_time"], since(start))
	first := h.runningAlloc(t)
	waitHealthyIn(t, c, fullNode)

	// A good upgrade: promoted once the agent passes the new allocation.
	good := maps.Clone(h.vars)
	good["extra_args"] = `["--moniker=upgraded"]`
	start = time.Now()
	c.Run(t, "cometbft", good)
	upgraded := h.runningAlloc(t)
	t.Logf("good upgrade promoted in %s (%s)", since(start), timeline(upgraded, start))
	if upgraded.ID == first.ID || !hasArg(upgraded, "--moniker=upgraded") {
		t.Fatalf("the upgrade did not replace the allocation: %s -> %s %v", first.ID, upgraded.ID, args(upgraded))
	}
	goodVersion := *upgraded.Job.Version
	if !h.stable(t, goodVersion) {
		t.Fatalf("version %d not marked stable after its deployment", goodVersion)
	}

	// A bad upgrade: no persistent peers, so it never finds the chain. The container runs (task_states would have
	// called it healthy); the agent calls it critical, the deployment fails at healthy_deadline and Nomad reverts.
	bad := maps.Clone(good)
	bad["persistent_peers"] = ""
	spec, err := nomadjob.Load("cometbft", bad)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		_, err := c.Jobs.Run(ctx, spec)
		errc <- err
	}()
	testenv.Eventually(t, 2*time.Minute, "the bad version running", func() error {
		if hasArg(h.runningAlloc(t), "--p2p.persistent_peers=") {
			return nil
		}
		return errors.New("old version still running")
	})
	out := c.Consul.WaitCheck(t, fullNode, 2*time.Minute, "critical")
	testenv.Eventually(t, time.Minute, "the restarter leaving the bad allocation to the deployment", func() error {
		_, o, err := c.Consul.CheckStatus(fullNode)
		if err != nil {
			return err
		}
		out = o
		if !strings.Contains(o, "restart withheld: its Nomad deployment has not found it healthy") {
			return fmt.Errorf("check output %q", o)
		}
		return nil
	})
	t.Logf("the bad version in consul: %s", out)
	err = <-errc
	var de *nomadjob.DeploymentError
	if !errors.As(err, &de) || de.Status != "failed" || !strings.Contains(de.Description, "rolling back to job version "+strconv.Itoa(int(goodVersion))) {
		t.Fatalf("the bad upgrade's deployment: %v", err)
	}
	failed := since(start)

	// Nomad's rollback is a new job version with the good version's spec, and a deployment of its own.
	var rollback *nomadapi.Deployment
	testenv.Eventually(t, time.Minute, "the rollback deployment", func() error {
		d, _, err := c.Nomad.Client.Jobs().LatestDeployment("cometbft", nil)
		if err != nil {
			return err
		}
		if d == nil || d.ID == de.ID {
			return errors.New("no rollback deployment yet")
		}
		rollback = d
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.Jobs.WatchDeployment(ctx, rollback.ID); err != nil {
		t.Fatalf("the rollback: %v", err)
	}
	t.Logf("bad upgrade: deployment failed after %s (healthy_deadline %s), rolled back and healthy again after %s",
		failed, bad["healthy_deadline"], since(start))
	back := h.runningAlloc(t)
	if !hasArg(back, "--p2p.persistent_peers="+h.peers) || !hasArg(back, "--moniker=upgraded") {
		t.Fatalf("the rollback runs %v", args(back))
	}
	t.Logf("rollback: %s", timeline(back, start))
	waitHealthyIn(t, c, fullNode)
}

func (h *heal) restart(t *testing.T) {
	c := h.c
	a := h.runningAlloc(t)
	ctr := strings.TrimSpace(c.Docker.Run(t, "ps", "-q", "--filter", "label=com.hashicorp.nomad.alloc_id="+a.ID,
		"--filter", "name=cometbft-"+a.ID)) // Nomad names a task's container <task>-<alloc id>
	if ctr == "" || strings.Contains(ctr, "\n") {
		t.Fatalf("container of %s: %q", a.ID, ctr)
	}
	restarts := a.TaskStates["cometbft"].Restarts

	// The node hangs: its RPC accepts connections and answers nothing, its height stands still, the chain goes on.
	start := time.Now()
	c.Docker.Run(t, "pause", ctr)
	c.Consul.WaitCheck(t, fullNode, time.Minute, "critical")
	critical := since(start)
	var restarted time.Duration
	testenv.Eventually(t, 2*time.Minute, "the agent restarting the allocation through Nomad", func() error {
		info, _, err := c.Nomad.Client.Allocations().Info(a.ID, nil)
		if err != nil {
			return err
		}
		ts := info.TaskStates["cometbft"]
		for _, e := range ts.Events {
			if e.Type == nomadapi.TaskRestartSignal && strings.Contains(e.RestartReason, "User requested task to restart") {
				restarted = since(start)
				return nil
			}
		}
		return fmt.Errorf("no restart signal yet (%d restarts)", ts.Restarts)
	})
	out := c.Consul.WaitCheck(t, fullNode, 3*time.Minute, "passing")
	passing := since(start)
	info, _, err := c.Nomad.Client.Allocations().Info(a.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hung node: critical after %s, restart signaled after %s, task started again after %s, passing again after %s: %q",
		critical, restarted, info.TaskStates["cometbft"].StartedAt.Sub(start).Round(100*time.Millisecond), passing, out)
	if !strings.Contains(out, "; restarted ") || !strings.HasSuffix(out, ", 1 of 3 this hour") {
		t.Fatalf("the check output does not say the node was restarted: %q", out)
	}
	if info.TaskStates["cometbft"].Restarts != restarts+1 {
		t.Fatalf("restarts %d, was %d", info.TaskStates["cometbft"].Restarts, restarts)
	}
	metrics := get(t, h.metrics)
	want := fmt.Sprintf(`chainwarden_node_restarts_total{node=%q,result="restarted",service=%q} 1`, fullNode, h.service)
	if !strings.Contains(metrics, want) {
		t.Fatalf("metrics lack %s", want)
	}
	// The service's lock was let go once the node passed.
	testenv.Eventually(t, 30*time.Second, "the restart lock released", func() error {
		p, _, err := c.Consul.Client.KV().Get(kvlayout.New("").RestartLock(h.service), nil)
		if err != nil {
			return err
		}
		if p != nil && p.Session != "" {
			return fmt.Errorf("held by session %s: %s", p.Session, p.Value)
		}
		return nil
	})
}

// runningAlloc is the job's allocation that runs (the newest, while an old one is still stopping), in full.
func (h *heal) runningAlloc(t *testing.T) *nomadapi.Allocation {
	t.Helper()
	stubs, _, err := h.c.Nomad.Client.Jobs().Allocations("cometbft", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var best *nomadapi.AllocationListStub
	for _, s := range stubs {
		if s.DesiredStatus == nomadapi.AllocDesiredStatusRun && (best == nil || s.CreateIndex > best.CreateIndex) {
			best = s
		}
	}
	if best == nil {
		t.Fatalf("no allocation of cometbft to run: %d allocations", len(stubs))
	}
	a, _, err := h.c.Nomad.Client.Allocations().Info(best.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// stable says whether Nomad marked a version of the job stable (its deployment succeeded).
func (h *heal) stable(t *testing.T, version uint64) bool {
	t.Helper()
	vs, _, _, err := h.c.Nomad.Client.Jobs().Versions("cometbft", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if *v.Version == version {
			return v.Stable != nil && *v.Stable
		}
	}
	return false
}

// args are the docker args of the allocation's cometbft task.
func args(a *nomadapi.Allocation) []string {
	for _, g := range a.Job.TaskGroups {
		for _, task := range g.Tasks {
			if task.Name == "cometbft" {
				var out []string
				if as, ok := task.Config["args"].([]any); ok {
					for _, v := range as {
						out = append(out, fmt.Sprint(v))
					}
				}
				return out
			}
		}
	}
	return nil
}

func hasArg(a *nomadapi.Allocation, arg string) bool {
	for _, s := range args(a) {
		if s == arg {
			return true
		}
	}
	return false
}

// timeline says when, counted from start, the allocation's chain task started and its deployment found it healthy.
func timeline(a *nomadapi.Allocation, start time.Time) string {
	out := "task started " + a.TaskStates["cometbft"].StartedAt.Sub(start).Round(100*time.Millisecond).String()
	if d := a.DeploymentStatus; d != nil && d.Healthy != nil && *d.Healthy {
		out += ", healthy for the deployment " + d.Timestamp.Sub(start).Round(100*time.Millisecond).String()
	}
	return out + " after the job was submitted"
}

// waitHealthyIn waits for the node to pass in Consul.
func waitHealthyIn(t *testing.T, c *cluster, node string) {
	t.Helper()
	c.Consul.WaitCheck(t, node, 2*time.Minute, "passing")
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
