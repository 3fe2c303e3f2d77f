package discovery_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/discovery"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/testenv"
	"github.com/chainwarden/chainwarden/jobs"
)

// cluster is a real Nomad (docker driver, host volumes) with Consul, the local images, and the chainwarden agent
// of this host, fed by the discovery watcher.
type cluster struct {
	*testenv.Cluster
	agent *agent.Agent
	// agentPort is the agent's HTTP port: the job specs' deployment check asks it (-var agent_port).
	agentPort string
}

func startCluster(t *testing.T, volumes ...string) *cluster {
	t.Helper()
	c := &cluster{Cluster: testenv.StartCluster(t, volumes...)}
	c.agent, c.agentPort = startAgent(t, c.Consul, "")
	return c
}

// staticNode is a node block beside the discovered nodes: it must stay registered while they come and go.
const staticNode = `node "static-geth" {
  kind     = "ethereum"
  rpc      = "http://127.0.0.1:9"
  service  = "eth-static"
  chain_id = 1
}
`

// startAgent runs the real agent, with one static node and more configuration (extra), against the test's Consul
// until the test ends; it returns the agent and its HTTP port.
func startAgent(t *testing.T, consul *testenv.Consul, extra string, opts ...func(*agent.Options)) (*agent.Agent, string) {
	t.Helper()
	port := strconv.Itoa(testenv.FreePort(t))
	listen := "127.0.0.1:" + port
	src := fmt.Sprintf("consul {\n  address = %q\n  deregister_after = \"1m\"\n}\nlisten = %q\ninterval = \"500ms\"\nnomad {}\n%s%s", consul.Addr, listen, staticNode, extra)
	cfg, err := config.Parse([]byte(src), "agent.hcl")
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "agent", Level: hclog.Warn, Output: t.Output()})
	o := agent.Options{ID: "host-a", Consul: agent.ConsulAPI(consul.Client)}
	for _, f := range opts {
		f(&o)
	}
	a, err := agent.New(cfg, log, o)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "agent", a.Run)
	testenv.WaitHTTP(t, nil, "http://"+listen+"/v1/health", 10*time.Second)
	return a, port
}

// waitConsul waits until the agent registered node in Consul with its check passing, and checks the
// registration is the discovered one.
func waitConsul(t *testing.T, c *cluster, n nodespec.Node) {
	t.Helper()
	testenv.Eventually(t, 90*time.Second, n.Name+" passing in consul", func() error {
		st, out, err := c.Consul.CheckStatus(n.Name)
		if err != nil {
			return err
		}
		if st != "passing" {
			return fmt.Errorf("check is %q: %s", st, out)
		}
		return nil
	})
	svcs, err := c.Consul.Client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	svc := svcs[n.Name]
	if svc == nil || svc.Service != n.Service || svc.Address != n.Address || svc.Port != n.Port || !slices.Contains(svc.Tags, "chainwarden") {
		t.Fatalf("consul service %s: %+v, want service %s at %s:%d tagged chainwarden", n.Name, svc, n.Service, n.Address, n.Port)
	}
	checks, err := c.Consul.Client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	if checks[registry.CheckID(n.Name)] == nil {
		t.Errorf("no check chainwarden:%s", n.Name)
	}
}

// waitDeregistered waits for the node's service to leave Consul and logs how long that took since stopped.
func waitDeregistered(t *testing.T, c *cluster, name string, stopped time.Time) {
	t.Helper()
	start := stopped
	defer func() {
		t.Logf("%s deregistered from consul %s after the job stop was submitted", name, time.Since(start).Round(10*time.Millisecond))
	}()
	testenv.Eventually(t, 30*time.Second, name+" deregistered from consul", func() error {
		svcs, err := c.Consul.Client.Agent().Services()
		if err != nil {
			return err
		}
		if svcs[name] != nil {
			return fmt.Errorf("still registered")
		}
		return nil
	})
}

// discovered is what a discovery Watcher reported: every update, when it came, and how many Nomad queries failed.
type discovered struct {
	mu       sync.Mutex
	updates  []update
	failures atomic.Int64
}

type update struct {
	at    time.Time
	nodes map[string]nodespec.Node
}

// Write counts the watcher's warnings, each a failed Nomad query (its log goes to the test log as well).
func (d *discovered) Write(p []byte) (int, error) {
	d.failures.Add(int64(bytes.Count(p, []byte("[WARN]"))))
	return len(p), nil
}

// latest is the node set of the last update.
func (d *discovered) latest() map[string]nodespec.Node {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.updates) == 0 {
		return nil
	}
	return maps.Clone(d.updates[len(d.updates)-1].nodes)
}

// since returns the updates that came at or after from.
func (d *discovered) since(from time.Time) []update {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []update
	for _, u := range d.updates {
		if !u.at.Before(from) {
			out = append(out, u)
		}
	}
	return out
}

// watch runs a discovery Watcher on the cluster's client, handing its nodes to the agent, until the test ends.
func watch(t *testing.T, c *cluster) *discovered {
	t.Helper()
	d := &discovered{}
	log := hclog.New(&hclog.LoggerOptions{Name: "discovery", Output: io.MultiWriter(t.Output(), d), Level: hclog.Info})
	w := discovery.New(discovery.Client(c.Nomad.Client), "", log, nil)
	testenv.Background(t, "discovery", func(ctx context.Context) error {
		w.Run(ctx, func(nodes []nodespec.Node) {
			c.agent.SetNodes(nodespec.SourceNomad, nodes)
			u := update{at: time.Now(), nodes: map[string]nodespec.Node{}}
			for _, n := range nodes {
				u.nodes[n.Name] = n
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			d.updates = append(d.updates, u)
		})
		return nil
	})
	testenv.Eventually(t, 10*time.Second, "first discovery update", func() error {
		if d.latest() == nil {
			return fmt.Errorf("no update yet")
		}
		if w.NodeID() != c.Nomad.NodeID {
			return fmt.Errorf("watching node %q, want %q", w.NodeID(), c.Nomad.NodeID)
		}
		return nil
	})
	return d
}

func waitNode(t *testing.T, d *discovered, name string) nodespec.Node {
	t.Helper()
	var n nodespec.Node
	testenv.Eventually(t, 30*time.Second, "discovery of "+name, func() error {
		var ok bool
		if n, ok = d.latest()[name]; !ok {
			return fmt.Errorf("not discovered; have %v", slices.Sorted(maps.Keys(d.latest())))
		}
		return nil
	})
	return n
}

func waitGone(t *testing.T, d *discovered, name string, stopped time.Time) {
	t.Helper()
	defer func() {
		t.Logf("%s gone from discovery %s after the job stop was submitted", name, time.Since(stopped).Round(10*time.Millisecond))
	}()
	testenv.Eventually(t, 60*time.Second, name+" gone from discovery", func() error {
		if _, ok := d.latest()[name]; ok {
			return fmt.Errorf("still discovered")
		}
		return nil
	})
}

// waitProbed waits until the agent has probed node again since its check output was last (the output names the
// height, which moves with every block), failing if the check is not passing; it returns the new output.
func waitProbed(t *testing.T, c *cluster, node, last string) string {
	t.Helper()
	var out string
	testenv.Eventually(t, 30*time.Second, node+" probed again", func() error {
		st, o, err := c.Consul.CheckStatus(node)
		if err != nil {
			return err
		}
		if st != "passing" {
			t.Fatalf("%s is %s: %s", node, st, o)
		}
		if o == last {
			return fmt.Errorf("check output unchanged: %s", o)
		}
		out = o
		return nil
	})
	return out
}

// gethHeight is the head of the geth node at rpc.
func gethHeight(rpc string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h, err := devnet.BlockNumber(ctx, rpc)
	return int64(h), err
}

// cometHeight is the latest block of the CometBFT node at rpc, failing the test if the node is on another chain
// than network.
func cometHeight(t *testing.T, rpc, network string) func() (int64, error) {
	return func() (int64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := devnet.CometStatus(ctx, rpc)
		if err == nil && st.Network != network {
			t.Fatalf("network %q, want %q: the genesis from the Nomad Variable was not used", st.Network, network)
		}
		return st.Height, err
	}
}

// waitHeight waits until the chain at height() is past from, and returns the height reached. After a restart
// (restarted) a height below from fails the test at once: the chain did not survive.
func waitHeight(t *testing.T, what string, from int64, restarted bool, height func() (int64, error)) int64 {
	t.Helper()
	var h int64
	testenv.Eventually(t, 60*time.Second, what, func() error {
		var err error
		if h, err = height(); err != nil {
			return err
		}
		if restarted && h < from {
			t.Fatalf("%s: height %d, was %d before: the chain did not survive", what, h, from)
		}
		if h <= from {
			return fmt.Errorf("at height %d", h)
		}
		return nil
	})
	return h
}

// stopJob stops a job and waits for its node to leave discovery and Consul.
func stopJob(t *testing.T, c *cluster, d *discovered, job, node string) {
	t.Helper()
	stopped := time.Now()
	c.Stop(t, job)
	waitGone(t, d, node, stopped)
	waitDeregistered(t, c, node, stopped)
}

// TestGethOnNomad runs the real geth spec (a --dev chain, the static geth in a FROM-scratch image) on Nomad with
// the docker driver: the node mines, discovery finds it at its allocated address, a stop/start keeps the chain (its
// data is on the host volume) and a stop removes it from the set.
func TestGethOnNomad(t *testing.T) {
	c := startCluster(t, "geth-dev")
	image := c.Docker.GethImage(t)
	nodes := watch(t, c)
	vars := map[string]string{
		"image": image, "host_volume": "geth-dev", "network": "dev", "chain_id": "1337", "service": "eth-dev",
		"p2p_port": strconv.Itoa(testenv.FreePort(t)), "cpu": "500", "memory": "1024", "min_healthy_time": "2s", "agent_port": c.agentPort,
		"kill_timeout": "20s", "extra_args": `["--dev.period=1"]`, "min_peers": "0",
	}
	c.Run(t, "geth", vars)

	// The job submission keeps the HCL and the -var values (the Nomad UI's job definition).
	sub, _, err := c.Nomad.Client.Jobs().Submission("geth", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := jobs.Source("geth")
	if sub.Format != "hcl2" || sub.Source != src || sub.VariableFlags["image"] != image {
		t.Errorf("job submission: format %q, source kept %v, variable flags %v", sub.Format, sub.Source == src, sub.VariableFlags)
	}

	n := waitNode(t, nodes, "geth-geth-0")
	if n.Kind != probe.Ethereum || n.Service != "eth-dev" || n.Client != "geth" || n.ChainID == nil || *n.ChainID != 1337 ||
		n.Address != "127.0.0.1" || n.Port == 0 || n.RPC != fmt.Sprintf("http://127.0.0.1:%d", n.Port) || n.Source != "nomad" {
		t.Fatalf("discovered node: %+v", n)
	}
	if len(n.Tags) != 1 || !strings.HasPrefix(n.Tags[0], "ws_port=") || n.WS != "ws://127.0.0.1:"+strings.TrimPrefix(n.Tags[0], "ws_port=") {
		t.Errorf("ws tag %v, ws URL %q", n.Tags, n.WS)
	}
	before := waitHeight(t, "geth mining through its discovered RPC", 4, false, func() (int64, error) { return gethHeight(n.RPC) })
	if _, err := os.Stat(filepath.Join(c.Nomad.HostVolumes["geth-dev"], "geth", "chaindata")); err != nil {
		t.Fatalf("chain data not on the host volume: %v", err)
	}
	waitConsul(t, c, n)

	stopJob(t, c, nodes, "geth", n.Name)

	c.Run(t, "geth", vars)
	n2 := waitNode(t, nodes, n.Name)
	waitHeight(t, "geth continuing from its height", before, true, func() (int64, error) { return gethHeight(n2.RPC) })
	waitConsul(t, c, n2)
	stopJob(t, c, nodes, "geth", n.Name)

	// The static node block kept working beside discovery.
	svcs, err := c.Consul.Client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if svcs["static-geth"] == nil || svcs["static-geth"].Service != "eth-static" {
		t.Errorf("the static node is not registered: %v", svcs)
	}
}

// cometbftKeys makes a one-validator chain's genesis (chain id chainID) and keys with the real cometbft binary,
// as an operator would before putting them into a Nomad Variable.
func cometbftKeys(t *testing.T, chainID string) map[string]string {
	home := t.TempDir()
	testenv.Run(t, testenv.Bin(t, "cometbft"), "init", "--home", home)
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(home, "config", p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	var gen map[string]any
	if err := json.Unmarshal([]byte(read("genesis.json")), &gen); err != nil {
		t.Fatal(err)
	}
	gen["chain_id"] = chainID
	b, _ := json.MarshalIndent(gen, "", "  ")
	return map[string]string{"genesis": string(b), "node_key": read("node_key.json"), "priv_validator_key": read("priv_validator_key.json")}
}

// TestCometBFTOnNomad runs the real cometbft spec: init prestart task on the empty volume, genesis and keys from a
// Nomad Variable, blocks made, discovered, continued after a stop/start, removed after a stop.
func TestCometBFTOnNomad(t *testing.T) {
	c := startCluster(t, "cometbft-dev")
	image := c.Docker.CometBFTImage(t)
	nodes := watch(t, c)
	c.PutVar(t, "nomad/jobs/cometbft", cometbftKeys(t, "cw-test"))
	vars := map[string]string{
		"image": image, "host_volume": "cometbft-dev", "chain_id": "cw-test", "service": "cometbft-test",
		"proxy_app": "persistent_kvstore", "p2p_port": strconv.Itoa(testenv.FreePort(t)), "cpu": "500", "memory": "512",
		"min_healthy_time": "2s", "agent_port": c.agentPort, "extra_args": `["--consensus.create_empty_blocks_interval=0s"]`, "min_peers": "0",
		// This test restarts the one Nomad agent that is both server and client: its client restores the allocation
		// before its server has a leader, and the Nomad-provider service of the deployment check then fails the
		// restore ("group_services ... Permission denied"). Production has separate servers; TestSelfHealingOnNomad
		// covers the deployment check.
		"health_check": "task_states",
	}
	c.Run(t, "cometbft", vars)

	n := waitNode(t, nodes, "cometbft-cometbft-0")
	if n.Kind != probe.CometBFT || n.Network != "cw-test" || n.Service != "cometbft-test" || n.Address != "127.0.0.1" ||
		n.WS != fmt.Sprintf("ws://127.0.0.1:%d/websocket", n.Port) {
		t.Fatalf("discovered node: %+v", n)
	}
	before := waitHeight(t, "cometbft making blocks", 2, false, cometHeight(t, n.RPC, "cw-test"))
	vol := c.Nomad.HostVolumes["cometbft-dev"]
	if _, err := os.Stat(filepath.Join(vol, "data", "blockstore.db")); err != nil {
		t.Fatalf("block store not on the host volume: %v", err)
	}
	// Blocks are signed with the validator key from the Nomad Variable (rendered into secrets/): it is the only
	// validator in the genesis, so a chain that grows proves it. init's own key stays unused on the volume.
	waitConsul(t, c, n)

	// The Nomad agent goes down (an upgrade): the container keeps running, discovery keeps the last set and the
	// node stays passing in Consul; when Nomad is back it picks the task up and nothing changed.
	_, out, err := c.Consul.CheckStatus(n.Name)
	if err != nil {
		t.Fatal(err)
	}
	down, failures := time.Now(), nodes.failures.Load()
	c.Nomad.Stop()
	testenv.Eventually(t, 30*time.Second, "discovery seeing Nomad gone", func() error {
		if nodes.failures.Load() == failures {
			return fmt.Errorf("no failed nomad query yet")
		}
		return nil
	})
	out = waitProbed(t, c, n.Name, out)
	c.Nomad.Restart()
	waitProbed(t, c, n.Name, out)
	waitConsul(t, c, n)

	stopped := time.Now()
	stopJob(t, c, nodes, "cometbft", n.Name)
	// The watcher saw the stop only once it was back on the restarted Nomad: no update before that, while Nomad was
	// down or coming back, may have dropped or changed the node.
	for _, u := range nodes.since(down) {
		got, ok := u.nodes[n.Name]
		if (!ok && u.at.Before(stopped)) || (ok && got.RPC != n.RPC) {
			t.Errorf("discovery update at %s (Nomad stopped at %s, the job at %s): node %+v, present %v",
				u.at.Format(time.StampMilli), down.Format(time.StampMilli), stopped.Format(time.StampMilli), got, ok)
		}
	}

	c.Run(t, "cometbft", vars)
	n2 := waitNode(t, nodes, n.Name)
	waitHeight(t, "cometbft continuing from its height", before, true, cometHeight(t, n2.RPC, "cw-test"))
	waitConsul(t, c, n2)
	stopJob(t, c, nodes, "cometbft", n.Name)
}
