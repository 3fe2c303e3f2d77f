package discovery_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/discovery"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/nomadjob"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/testenv"
	"github.com/chainwarden/chainwarden/jobs"
)

// logWriter sends the deployment watcher's progress to the test log.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// cluster is a real Nomad (docker driver, host volumes) with Consul, the local images, and the chainwarden agent
// of this host, fed by the discovery watcher.
type cluster struct {
	consul *testenv.Consul
	docker *testenv.Docker
	nomad  *testenv.Nomad
	jobs   *nomadjob.Client
	agent  *agent.Agent
}

func startCluster(t *testing.T, volumes ...string) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real Nomad and dockerd")
	}
	c := &cluster{consul: testenv.StartConsul(t), docker: testenv.StartDocker(t)}
	c.nomad = testenv.StartNomad(t, testenv.NomadOptions{HostVolumes: volumes, Docker: c.docker, ConsulAddr: c.consul.Addr})
	c.jobs = &nomadjob.Client{API: c.nomad.Client, Out: logWriter{t}, Poll: time.Second}
	c.agent = startAgent(t, c.consul)
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

// startAgent runs the real agent, with one static node, against the test's Consul until the test ends.
func startAgent(t *testing.T, consul *testenv.Consul) *agent.Agent {
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	src := fmt.Sprintf("consul {\n  address = %q\n  deregister_after = \"1m\"\n}\nlisten = %q\ninterval = \"500ms\"\nnomad {}\n%s", consul.Addr, listen, staticNode)
	cfg, err := config.Parse([]byte(src), "agent.hcl")
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "agent", Level: hclog.Warn, Output: logWriter{t}})
	a, err := agent.New(cfg, log, agent.Options{ID: "host-a", Consul: agent.ConsulAPI(consul.Client)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	testenv.WaitHTTP(t, nil, "http://"+listen+"/v1/health", 10*time.Second)
	return a
}

// waitConsul waits until the agent registered node in Consul with its check passing, and checks the
// registration is the discovered one.
func waitConsul(t *testing.T, c *cluster, n nodespec.Node) {
	t.Helper()
	testenv.Eventually(t, 90*time.Second, n.Name+" passing in consul", func() error {
		st, out, err := c.consul.CheckStatus(n.Name)
		if err != nil {
			return err
		}
		if st != "passing" {
			return fmt.Errorf("check is %q: %s", st, out)
		}
		return nil
	})
	svcs, err := c.consul.Client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	svc := svcs[n.Name]
	if svc == nil || svc.Service != n.Service || svc.Address != n.Address || svc.Port != n.Port || !contains(svc.Tags, "chainwarden") {
		t.Fatalf("consul service %s: %+v, want service %s at %s:%d tagged chainwarden", n.Name, svc, n.Service, n.Address, n.Port)
	}
	checks, err := c.consul.Client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	if checks["chainwarden:"+n.Name] == nil {
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
		svcs, err := c.consul.Client.Agent().Services()
		if err != nil {
			return err
		}
		if svcs[name] != nil {
			return fmt.Errorf("still registered")
		}
		return nil
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// run runs an embedded spec as `chainwarden job run NAME -var ...` does and waits for its deployment.
func (c *cluster) run(t *testing.T, name string, vars map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	spec, err := nomadjob.Load(name, vars)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.jobs.Run(ctx, spec)
	if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
}

func (c *cluster) stop(t *testing.T, jobID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.jobs.Stop(ctx, jobID, false); err != nil {
		t.Fatal(err)
	}
}

// watch runs a discovery Watcher on the cluster's client until the test ends and returns a function giving the
// latest node set it reported.
func watch(t *testing.T, c *cluster) func() map[string]nodespec.Node {
	t.Helper()
	var mu sync.Mutex
	latest := map[string]nodespec.Node{}
	updates := 0
	w := discovery.New(discovery.Client(c.nomad.Client), "", hclog.New(&hclog.LoggerOptions{Name: "discovery", Output: logWriter{t}, Level: hclog.Info}), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, func(nodes []nodespec.Node) {
			c.agent.SetNodes("nomad", nodes)
			mu.Lock()
			defer mu.Unlock()
			updates++
			latest = map[string]nodespec.Node{}
			for _, n := range nodes {
				latest[n.Name] = n
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 10*time.Second, "first discovery update", func() error {
		mu.Lock()
		defer mu.Unlock()
		if updates == 0 {
			return fmt.Errorf("no update yet")
		}
		if w.NodeID() != c.nomad.NodeID {
			return fmt.Errorf("watching node %q, want %q", w.NodeID(), c.nomad.NodeID)
		}
		return nil
	})
	return func() map[string]nodespec.Node {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[string]nodespec.Node, len(latest))
		for k, v := range latest {
			out[k] = v
		}
		return out
	}
}

func waitNode(t *testing.T, nodes func() map[string]nodespec.Node, name string) nodespec.Node {
	t.Helper()
	var n nodespec.Node
	testenv.Eventually(t, 30*time.Second, "discovery of "+name, func() error {
		var ok bool
		if n, ok = nodes()[name]; !ok {
			return fmt.Errorf("not discovered; have %v", keys(nodes()))
		}
		return nil
	})
	return n
}

func waitGone(t *testing.T, nodes func() map[string]nodespec.Node, name string, stopped time.Time) {
	t.Helper()
	defer func() {
		t.Logf("%s gone from discovery %s after the job stop was submitted", name, time.Since(stopped).Round(10*time.Millisecond))
	}()
	testenv.Eventually(t, 60*time.Second, name+" gone from discovery", func() error {
		if _, ok := nodes()[name]; ok {
			return fmt.Errorf("still discovered")
		}
		return nil
	})
}

func keys(m map[string]nodespec.Node) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func gethHeight(ctx context.Context, rpc string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	body := strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, rpc, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Result string `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("decode eth_blockNumber: %w", err)
	}
	return strconv.ParseUint(strings.TrimPrefix(r.Result, "0x"), 16, 64)
}

// TestGethOnNomad runs the real geth spec (a --dev chain, the static geth in a FROM-scratch image) on Nomad with
// the docker driver: the node mines, discovery finds it at its allocated address, a stop/start keeps the chain (its
// data is on the host volume) and a stop removes it from the set.
func TestGethOnNomad(t *testing.T) {
	c := startCluster(t, "geth-dev")
	image := c.docker.GethImage(t)
	nodes := watch(t, c)
	vars := map[string]string{
		"image": image, "host_volume": "geth-dev", "network": "dev", "chain_id": "1337", "service": "eth-dev",
		"p2p_port": strconv.Itoa(testenv.FreePort(t)), "cpu": "500", "memory": "1024", "min_healthy_time": "2s",
		"kill_timeout": "20s", "extra_args": `["--dev.period=1"]`, "min_peers": "0",
	}
	c.run(t, "geth", vars)

	// The job submission keeps the HCL and the -var values (the Nomad UI's job definition).
	sub, _, err := c.nomad.Client.Jobs().Submission("geth", 0, nil)
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
	if len(n.Tags) != 1 || !strings.HasPrefix(n.Tags[0], "ws_port=") {
		t.Errorf("ws tag: %v", n.Tags)
	}
	ctx := context.Background()
	var before uint64
	testenv.Eventually(t, 60*time.Second, "geth mining through its discovered RPC", func() error {
		h, err := gethHeight(ctx, n.RPC)
		if err != nil {
			return err
		}
		if h < 5 {
			return fmt.Errorf("height %d", h)
		}
		before = h
		return nil
	})
	if _, err := os.Stat(filepath.Join(c.nomad.HostVolumes["geth-dev"], "geth", "chaindata")); err != nil {
		t.Fatalf("chain data not on the host volume: %v", err)
	}
	waitConsul(t, c, n)

	stopped := time.Now()
	c.stop(t, "geth")
	waitGone(t, nodes, "geth-geth-0", stopped)
	waitDeregistered(t, c, "geth-geth-0", stopped)

	c.run(t, "geth", vars)
	n2 := waitNode(t, nodes, "geth-geth-0")
	testenv.Eventually(t, 60*time.Second, "geth continuing from its height", func() error {
		h, err := gethHeight(ctx, n2.RPC)
		if err != nil {
			return err
		}
		if h < before {
			return fmt.Errorf("height %d after the restart, was %d before: the chain did not survive", h, before)
		}
		if h == before {
			return fmt.Errorf("not mining yet at %d", h)
		}
		return nil
	})
	waitConsul(t, c, n2)

	stopped = time.Now()
	c.stop(t, "geth")
	waitGone(t, nodes, "geth-geth-0", stopped)
	waitDeregistered(t, c, "geth-geth-0", stopped)

	// The static node block kept working beside discovery.
	svcs, err := c.consul.Client.Agent().Services()
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

func cometHeight(ctx context.Context, rpc string) (int64, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rpc+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var st struct {
		Result struct {
			NodeInfo struct {
				Network string `json:"network"`
			} `json:"node_info"`
			SyncInfo struct {
				LatestBlockHeight int64 `json:"latest_block_height,string"`
			} `json:"sync_info"`
		} `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, "", fmt.Errorf("decode /status: %w", err)
	}
	return st.Result.SyncInfo.LatestBlockHeight, st.Result.NodeInfo.Network, nil
}

// TestCometBFTOnNomad runs the real cometbft spec: init prestart task on the empty volume, genesis and keys from a
// Nomad Variable, blocks made, discovered, continued after a stop/start, removed after a stop.
func TestCometBFTOnNomad(t *testing.T) {
	c := startCluster(t, "cometbft-dev")
	image := c.docker.CometBFTImage(t)
	nodes := watch(t, c)
	if _, _, err := c.nomad.Client.Variables().Create(&nomadapi.Variable{Path: "nomad/jobs/cometbft", Items: cometbftKeys(t, "cw-test")}, nil); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"image": image, "host_volume": "cometbft-dev", "chain_id": "cw-test", "service": "cometbft-test",
		"proxy_app": "persistent_kvstore", "p2p_port": strconv.Itoa(testenv.FreePort(t)), "cpu": "500", "memory": "512",
		"min_healthy_time": "2s", "extra_args": `["--consensus.create_empty_blocks_interval=0s"]`, "min_peers": "0",
	}
	c.run(t, "cometbft", vars)

	n := waitNode(t, nodes, "cometbft-cometbft-0")
	if n.Kind != probe.CometBFT || n.Network != "cw-test" || n.Service != "cometbft-test" || n.Address != "127.0.0.1" {
		t.Fatalf("discovered node: %+v", n)
	}
	ctx := context.Background()
	var before int64
	testenv.Eventually(t, 60*time.Second, "cometbft making blocks", func() error {
		h, network, err := cometHeight(ctx, n.RPC)
		if err != nil {
			return err
		}
		if network != "cw-test" {
			t.Fatalf("network %q: the genesis from the Nomad Variable was not used", network)
		}
		if h < 3 {
			return fmt.Errorf("height %d", h)
		}
		before = h
		return nil
	})
	vol := c.nomad.HostVolumes["cometbft-dev"]
	if _, err := os.Stat(filepath.Join(vol, "data", "blockstore.db")); err != nil {
		t.Fatalf("block store not on the host volume: %v", err)
	}
	// Blocks are signed with the validator key from the Nomad Variable (rendered into secrets/): it is the only
	// validator in the genesis, so a chain that grows proves it. init's own key stays unused on the volume.
	waitConsul(t, c, n)

	// The Nomad agent goes down (an upgrade): the container keeps running, discovery keeps the last set and the
	// node stays passing in Consul; when Nomad is back it picks the task up and nothing changed.
	c.nomad.Stop()
	time.Sleep(3 * time.Second)
	if got, ok := nodes()[n.Name]; !ok || got.RPC != n.RPC {
		t.Fatalf("node dropped or changed while Nomad was down: %+v", nodes())
	}
	if st, out, err := c.consul.CheckStatus(n.Name); err != nil || st != "passing" {
		t.Fatalf("check while Nomad was down: %q %q %v", st, out, err)
	}
	c.nomad.Restart()
	time.Sleep(3 * time.Second)
	if got, ok := nodes()[n.Name]; !ok || got.RPC != n.RPC {
		t.Fatalf("node lost after Nomad came back: %+v", nodes())
	}
	waitConsul(t, c, n)

	stopped := time.Now()
	c.stop(t, "cometbft")
	waitGone(t, nodes, "cometbft-cometbft-0", stopped)
	waitDeregistered(t, c, "cometbft-cometbft-0", stopped)

	c.run(t, "cometbft", vars)
	n2 := waitNode(t, nodes, "cometbft-cometbft-0")
	testenv.Eventually(t, 60*time.Second, "cometbft continuing from its height", func() error {
		h, _, err := cometHeight(ctx, n2.RPC)
		if err != nil {
			return err
		}
		if h < before {
			return fmt.Errorf("height %d after the restart, was %d: the chain did not survive", h, before)
		}
		if h == before {
			return fmt.Errorf("no new block yet at %d", h)
		}
		return nil
	})
	waitConsul(t, c, n2)
	stopped = time.Now()
	c.stop(t, "cometbft")
	waitGone(t, nodes, "cometbft-cometbft-0", stopped)
	waitDeregistered(t, c, "cometbft-cometbft-0", stopped)
}
