package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// startAgent runs an agent with the given node blocks against a real Consul until the test ends (or stop is called).
func startAgent(t *testing.T, c *testenv.Consul, id, blocks string) (a *Agent, listen string, stop func()) {
	t.Helper()
	return startAgentWith(t, c, id, "", blocks)
}

// startAgentWith is startAgent with extra attributes in the consul block.
func startAgentWith(t *testing.T, c *testenv.Consul, id, consulExtra, blocks string) (a *Agent, listen string, stop func()) {
	t.Helper()
	listen = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	src := fmt.Sprintf("consul {\n  address = %q\n  deregister_after = \"1m\"\n  check_ttl = \"2s\"\n%s}\nlisten = %q\ninterval = \"500ms\"\nhead_max_age = \"10s\"\n%s",
		c.Addr, consulExtra, listen, blocks)
	cfg, err := config.Parse([]byte(src), id+".hcl")
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: id, Level: hclog.Info, Output: t.Output()})
	a, err = New(cfg, log, Options{ID: id, Consul: ConsulAPI(c.Client)})
	if err != nil {
		t.Fatal(err)
	}
	stop = testenv.Background(t, "agent "+id, a.Run)
	testenv.WaitHTTP(t, nil, "http://"+listen+"/v1/health", 10*time.Second)
	return a, listen, stop
}

func gethBlock(name string, g *testenv.Geth, chainID int, extra string) string {
	return fmt.Sprintf("node %q {\n  kind = \"ethereum\"\n  rpc = %q\n  service = \"eth-devnet\"\n  chain_id = %d\n%s}\n", name, g.RPC, chainID, extra)
}

func TestAgentGethDevPassingAndWrongChain(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	g := testenv.StartGethDev(t, "geth-dev")
	blocks := gethBlock("geth-a", g, testenv.DevChainID, "  min_peers = 0\n") +
		strings.Replace(gethBlock("geth-wrong", g, 1, "  min_peers = 0\n"), "eth-devnet", "eth-mainnet", 1)
	_, listen, _ := startAgent(t, c, "host-a", blocks)

	out := c.WaitCheck(t, "geth-a", 30*time.Second, "passing")
	if !strings.HasPrefix(out, "height ") || !strings.Contains(out, "0 peers") || !strings.Contains(out, "last block") {
		t.Fatalf("output %q", out)
	}
	out = c.WaitCheck(t, "geth-wrong", 30*time.Second, "critical")
	if !strings.Contains(out, "wrong chain 1337 (want 1)") {
		t.Fatalf("wrong-chain output %q", out)
	}
	s, _, err := c.Client.Agent().Service("geth-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Meta["client"] != "geth" || !strings.HasPrefix(s.Meta["client_version"], "Geth/v1.16.7") || s.Meta["chain_id"] != "1337" {
		t.Fatalf("meta %+v", s.Meta)
	}

	// The HTTP endpoint says the same, with the status codes load balancers read.
	code, body := get(t, "http://"+listen+"/v1/health/geth-a")
	if code != 200 || !strings.Contains(body, `"status": "passing"`) {
		t.Fatalf("/v1/health/geth-a: %d %s", code, body)
	}
	if code, _ := get(t, "http://"+listen+"/v1/health/geth-wrong"); code != 503 {
		t.Fatalf("/v1/health/geth-wrong: %d", code)
	}
	if code, _ := get(t, "http://"+listen+"/v1/health/nope"); code != 404 {
		t.Fatalf("/v1/health/nope: %d", code)
	}
	var all []NodeHealth
	_, body = get(t, "http://"+listen+"/v1/health")
	if err := json.Unmarshal([]byte(body), &all); err != nil || len(all) != 2 {
		t.Fatalf("/v1/health: %v %s", err, body)
	}
	_, metrics := get(t, "http://"+listen+"/metrics")
	for _, want := range []string{`chainwarden_node_height{kind="ethereum",node="geth-a",service="eth-devnet"}`,
		`chainwarden_node_status{kind="ethereum",node="geth-wrong",service="eth-mainnet"} 2`,
		`chainwarden_probe_duration_seconds_count{kind="ethereum"}`, `chainwarden_status_transitions_total`} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
}

// Two agents share one Clique network's heads through Consul KV: the node of agent B falls behind when isolated
// from its peers, goes warning then critical, and passes again once reconnected. A frozen (SIGSTOP) node goes critical.
func TestAgentCliqueLagAcrossAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	net := testenv.StartCliqueNetwork(t, 3)
	lag := "  warn_lag = 2\n  max_lag = 8\n  min_peers = 0\n  fail_after = 1\n  pass_after = 2\n"
	// A node that lies about its height (a proxy adding 10^8 in front of clique-1) is in the service too: its head
	// reaches host-b through KV, and must not move the head there either.
	liar := testenv.RPCProxy(t, net.Nodes[1].RPC, testenv.InflateEthereumHeights(100_000_000))
	startAgent(t, c, "host-a", gethBlock("clique-0", net.Nodes[0], testenv.CliqueChainID, lag)+
		gethBlock("clique-1", net.Nodes[1], testenv.CliqueChainID, lag)+
		fmt.Sprintf("node \"clique-liar\" {\n  kind = \"ethereum\"\n  rpc = %q\n  service = \"eth-devnet\"\n  chain_id = %d\n}\n",
			liar, testenv.CliqueChainID))
	startAgent(t, c, "host-b", gethBlock("clique-2", net.Nodes[2], testenv.CliqueChainID, lag))
	for _, n := range []string{"clique-0", "clique-1", "clique-2"} {
		out := c.WaitCheck(t, n, 60*time.Second, "passing")
		if strings.Contains(out, "finalized") { // Clique has no finality: geth v1.13 answers the tag with an error
			t.Fatalf("%s: %q", n, out)
		}
	}
	if out := c.WaitCheck(t, "clique-liar", 30*time.Second, "critical"); !strings.HasPrefix(out, "head 1000000") ||
		!strings.Contains(out, "not corroborated: the other sources put the chain at") {
		t.Fatalf("liar: %q", out)
	}
	// The honest nodes are publishers (each claims within the claim window, 10 s); the liar, flagged, never is.
	testenv.Eventually(t, 30*time.Second, "clique-0, clique-1 and clique-2 publishing", func() error {
		pairs, _, err := c.Client.KV().List("chainwarden/heads/eth-devnet/", nil)
		var held []string
		for _, p := range pairs {
			if p.Session != "" {
				held = append(held, strings.TrimPrefix(p.Key, "chainwarden/heads/eth-devnet/"))
			}
		}
		if err != nil || strings.Join(held, ",") != "clique-0,clique-1,clique-2" {
			return fmt.Errorf("held %v (%v)", held, err)
		}
		return nil
	})

	if err := net.Isolate(net.Nodes[2]); err != nil {
		t.Fatal(err)
	}
	out := c.WaitCheck(t, "clique-2", 30*time.Second, "warning")
	if !strings.Contains(out, "behind head") || !(strings.Contains(out, "(clique-0)") || strings.Contains(out, "(clique-1)")) {
		t.Fatalf("warning output does not name the head from the other agent: %q", out)
	}
	out = c.WaitCheck(t, "clique-2", 30*time.Second, "critical")
	// Lag in time too: how long it has been behind the head.
	if !strings.Contains(out, "more than max_lag 8") || !regexp.MustCompile(`behind head \d+ \(clique-[01]\) for \d`).MatchString(out) {
		t.Fatalf("critical output %q", out)
	}
	if err := net.Connect(net.Nodes[2]); err != nil {
		t.Fatal(err)
	}
	c.WaitCheck(t, "clique-2", 60*time.Second, "passing")

	// A hung node: its RPC port is open but nothing answers.
	if err := net.Nodes[1].Freeze(); err != nil {
		t.Fatal(err)
	}
	out = c.WaitCheck(t, "clique-1", 30*time.Second, "critical")
	if !strings.Contains(out, "probe failed") {
		t.Fatalf("frozen node output %q", out)
	}
	if err := net.Nodes[1].Thaw(); err != nil {
		t.Fatal(err)
	}
	c.WaitCheck(t, "clique-1", 60*time.Second, "passing")
}

func TestAgentSurvivesConsulLosingStateAndExpiresWhenKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	g := testenv.StartGethDev(t, "geth-dev")
	_, _, stop := startAgent(t, c, "host-a", gethBlock("geth-a", g, testenv.DevChainID, "  min_peers = 0\n"))
	c.WaitCheck(t, "geth-a", 30*time.Second, "passing")
	// geth-a claims a publisher slot (within the claim window, 10 s).
	testenv.Eventually(t, 30*time.Second, "geth-a's head published", func() error {
		keys, _, err := c.Client.KV().Keys("chainwarden/heads/eth-devnet/", "", nil)
		if err != nil || len(keys) != 1 {
			return fmt.Errorf("keys %v (%v)", keys, err)
		}
		return nil
	})

	// A key only this test writes shows that the restart lost every state (the agent re-registers its check within
	// a pass of Consul coming back, so the check itself cannot show it).
	if _, err := c.Client.KV().Put(&consulapi.KVPair{Key: "test/before-the-restart", Value: []byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	c.Restart() // all state gone
	if p, _, err := c.Client.KV().Get("test/before-the-restart", nil); err != nil || p != nil {
		t.Fatalf("consul kept its state across the restart (%v, %v)", p, err)
	}
	// Registered again, with the agent's current verdict. The publisher claims its slot again at once (a new
	// session; no claim window for a slot it held).
	c.WaitCheck(t, "geth-a", 30*time.Second, "passing")
	testenv.Eventually(t, 5*time.Second, "heads published again after consul lost state", func() error {
		keys, _, err := c.Client.KV().Keys("chainwarden/heads/eth-devnet/", "", nil)
		if err != nil || len(keys) != 1 {
			return fmt.Errorf("keys %v (%v)", keys, err)
		}
		return nil
	})

	// The agent dies without deregistering: the TTL check expires and the node goes critical.
	stop()
	out := c.WaitCheck(t, "geth-a", 15*time.Second, "critical")
	if !strings.Contains(out, "TTL expired") {
		t.Fatalf("expired check output %q", out)
	}
}

func TestAgentRemovedNodeIsDeregistered(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	g := testenv.StartGethDev(t, "geth-dev")
	a, _, _ := startAgent(t, c, "host-a", gethBlock("geth-a", g, testenv.DevChainID, "  min_peers = 0\n")+
		gethBlock("geth-b", g, testenv.DevChainID, "  min_peers = 0\n"))
	c.WaitCheck(t, "geth-b", 30*time.Second, "passing")
	var keep []nodespec.Node
	for _, n := range a.cfg.Nodes {
		if n.Name == "geth-a" {
			keep = append(keep, n)
		}
	}
	a.SetNodes(nodespec.SourceConfig, keep)
	testenv.Eventually(t, 10*time.Second, "geth-b deregistered, its head gone", func() error {
		if st, _, err := c.CheckStatus("geth-b"); err != nil || st != "" {
			return fmt.Errorf("geth-b still %q (%v)", st, err)
		}
		keys, _, err := c.Client.KV().Keys("chainwarden/heads/eth-devnet/", "", nil)
		if err != nil || slices.Contains(keys, "chainwarden/heads/eth-devnet/geth-b") {
			return fmt.Errorf("heads keys %v (%v)", keys, err)
		}
		return nil
	})
	// geth-a publishes its head, if it did not already, once its claim (spread over the claim window) comes due.
	testenv.Eventually(t, heads.DefaultClaimWindow+10*time.Second, "geth-a's head published", func() error {
		keys, _, err := c.Client.KV().Keys("chainwarden/heads/eth-devnet/", "", nil)
		if err != nil || !slices.Equal(keys, []string{"chainwarden/heads/eth-devnet/geth-a"}) {
			return fmt.Errorf("heads keys %v (%v)", keys, err)
		}
		return nil
	})
	if st, _, _ := c.CheckStatus("geth-a"); st != "passing" {
		t.Fatalf("geth-a is %q", st)
	}
}

func TestAgentCometBFTNetwork(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	net := testenv.StartCometNetwork(t, 4)
	var blocks string
	for _, n := range net.Nodes {
		blocks += fmt.Sprintf("node %q {\n  kind = \"cometbft\"\n  rpc = %q\n  service = \"irita-test\"\n  network = %q\n  max_block_age = \"5s\"\n  fail_after = 1\n  pass_after = 2\n}\n",
			n.Name, n.RPC, net.ChainID)
	}
	blocks += fmt.Sprintf("node \"comet-wrongnet\" {\n  kind = \"cometbft\"\n  rpc = %q\n  service = \"irita-other\"\n  network = \"irishub-1\"\n}\n", net.Nodes[0].RPC)
	startAgent(t, c, "host-a", blocks)
	for _, n := range net.Nodes {
		// Passing as soon as it has a peer (min_peers 1); the output says 3 once every validator has connected.
		testenv.Eventually(t, 60*time.Second, n.Name+" passing with 3 peers", func() error {
			st, out, err := c.CheckStatus(n.Name)
			if err != nil || st != "passing" || !strings.Contains(out, "3 peers") {
				return fmt.Errorf("%s is %q: %q (%v)", n.Name, st, out, err)
			}
			return nil
		})
	}
	out := c.WaitCheck(t, "comet-wrongnet", 30*time.Second, "critical")
	if !strings.Contains(out, "wrong chain "+net.ChainID+" (want irishub-1)") {
		t.Fatalf("wrong network output %q", out)
	}
	// A validator that stops: critical. The rest (3 of 4 still have 2/3 of the power) keep passing.
	net.Nodes[3].Stop()
	c.WaitCheck(t, "comet-3", 30*time.Second, "critical")
	for _, n := range net.Nodes[:3] {
		if st, o, _ := c.CheckStatus(n.Name); st == "critical" {
			t.Fatalf("%s went critical when comet-3 stopped: %s", n.Name, o)
		}
	}
	net.Nodes[3].Start()
	c.WaitCheck(t, "comet-3", 90*time.Second, "passing")
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
