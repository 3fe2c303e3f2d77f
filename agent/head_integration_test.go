package agent

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// nodeBlock is a node block of service with extra attributes.
func nodeBlock(name, kind, rpc, service, chain, extra string) string {
	id := "chain_id = " + chain
	if kind == "cometbft" {
		id = fmt.Sprintf("network = %q", chain)
	}
	return fmt.Sprintf("node %q {\n  kind = %q\n  rpc = %q\n  service = %q\n  %s\n  min_peers = 0\n  fail_after = 1\n  pass_after = 2\n%s}\n",
		name, kind, rpc, service, id, extra)
}

func refBlock(name, rpc, service string) string {
	return fmt.Sprintf("reference %q {\n  service = %q\n  rpc = %q\n}\n", name, service, rpc)
}

// Real geth --dev nodes, real Consul with its default check settings, one agent:
//   - a node behind a proxy that inflates its height by 10^8 (a liar far ahead) does not move the head of its
//     service: it is critical and says why, the honest node passes;
//   - a reference that lies the same way is flagged in KV (status) and does not move the head;
//   - two geth --dev nodes are two chains with the same chain id 1337: with a reference on one of them, the node on
//     the other is on a fork; alone together, exactly one of the two is;
//   - a node whose finalized block stalls (a proxy freezing the "finalized" answer; geth --dev finalizes every 32
//     blocks) is warning once the network's finalized block has moved on for max_finalized_behind.
func TestAgentCorroboratedHeadGethDev(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	g1 := testenv.StartGethDev(t, "geth-one")
	g2 := testenv.StartGethDev(t, "geth-two")
	liar := testenv.RPCProxy(t, g1.RPC, testenv.InflateEthereumHeights(100_000_000))
	frozen := testenv.RPCProxy(t, g1.RPC, testenv.FreezeFinalized(0))
	id := fmt.Sprint(testenv.DevChainID)
	blocks := nodeBlock("liar-a", "ethereum", g1.RPC, "eth-liar", id, "") +
		nodeBlock("liar-x", "ethereum", liar, "eth-liar", id, "") +
		nodeBlock("ref-a", "ethereum", g1.RPC, "eth-ref", id, "") + refBlock("bad-ref", liar, "eth-ref") +
		nodeBlock("fork-a", "ethereum", g1.RPC, "eth-fork", id, "") +
		nodeBlock("fork-b", "ethereum", g2.RPC, "eth-fork", id, "") + refBlock("provider", g1.RPC, "eth-fork") +
		// A reference pointed at another network with the same chain id.
		nodeBlock("net-a", "ethereum", g1.RPC, "eth-net", id, "") + nodeBlock("net-b", "ethereum", g1.RPC, "eth-net", id, "") +
		refBlock("other-net", g2.RPC, "eth-net") +
		nodeBlock("pair-a", "ethereum", g1.RPC, "eth-pair", id, "") +
		nodeBlock("pair-b", "ethereum", g2.RPC, "eth-pair", id, "") +
		nodeBlock("final-a", "ethereum", g1.RPC, "eth-final", id, "  max_finalized_behind = \"3s\"\n") +
		nodeBlock("final-x", "ethereum", frozen, "eth-final", id, "  max_finalized_behind = \"3s\"\n")
	_, listen, _ := startAgent(t, c, "host-a", blocks)

	// The liar far ahead.
	// Two sources too far apart for either to vouch for the other: the first pass takes the lower claim, later ones
	// bound the liar by how far the chain can have grown since the last accepted head. (Waited for: between its
	// registration and the first update of the same pass, the check has a status and no output yet.)
	out := waitOutput(t, c, "liar-x", "critical", regexp.MustCompile(`^head 1000000\d+ not corroborated: no other source vouches for it, and `))
	t.Logf("liar: %s", out)
	out = c.WaitCheck(t, "liar-a", 30*time.Second, "passing")
	if !strings.Contains(out, "at head") || strings.Contains(out, "1000000") {
		t.Fatalf("honest node's output %q", out)
	}
	// The lying reference.
	c.WaitCheck(t, "ref-a", 30*time.Second, "passing")
	testenv.Eventually(t, 10*time.Second, "the lying reference flagged in KV", func() error {
		p, _, err := c.Client.KV().Get(kvlayout.New("").Flag("eth-ref", "host-a", "bad-ref"), nil)
		if err != nil || p == nil || !strings.Contains(string(p.Value), `"reference":true`) ||
			!strings.Contains(string(p.Value), "not corroborated") {
			return fmt.Errorf("flag %v (%v)", p, err)
		}
		return nil
	})

	// Two chains with one chain id.
	// fork-b may be critical for other reasons first (behind, damping from its first probe): wait for the fork.
	out = waitOutput(t, c, "fork-b", "critical", regexp.MustCompile(`^on a fork: block \d+ is 0x[0-9a-f]{10} here, 0x[0-9a-f]{10} on `))
	t.Logf("fork: %s", out)
	c.WaitCheck(t, "fork-a", 30*time.Second, "passing")
	c.WaitCheck(t, "net-a", 30*time.Second, "passing")
	testenv.Eventually(t, 30*time.Second, "the reference on another network flagged in KV", func() error {
		p, _, err := c.Client.KV().Get(kvlayout.New("").Flag("eth-net", "host-a", "other-net"), nil)
		if err != nil || p == nil || !strings.Contains(string(p.Value), `"kind":"fork"`) ||
			!strings.Contains(string(p.Value), `"reason":"on a fork: block `) {
			return fmt.Errorf("flag %v (%v)", p, err)
		}
		return nil
	})
	testenv.Eventually(t, 30*time.Second, "exactly one of the pair on a fork", func() error {
		var forked, passing int
		for _, n := range []string{"pair-a", "pair-b"} {
			st, out, err := c.CheckStatus(n)
			if err != nil {
				return err
			}
			switch {
			case st == "critical" && strings.HasPrefix(out, "on a fork: "):
				forked++
			case st == "passing":
				passing++
			}
		}
		if forked != 1 || passing != 1 {
			return fmt.Errorf("%d on a fork, %d passing", forked, passing)
		}
		return nil
	})

	// The stalled finalized block: once geth-one finalizes block 32 (at most 32 s after it started).
	out = c.WaitCheck(t, "final-x", 60*time.Second, "warning")
	if !regexp.MustCompile(`^finalized block 0 behind the network's (32|64) \(final-a\) for \d+(\.\d)?s, more than max_finalized_behind 3s — height \d+, `).MatchString(out) {
		t.Fatalf("stalled finality output %q", out)
	}
	t.Logf("finality: %s", out)
	if st, out, _ := c.CheckStatus("final-a"); st != "passing" || !regexp.MustCompile(`finalized (32|64)$`).MatchString(out) {
		t.Fatalf("final-a: %s %q", st, out)
	}

	_, metrics := get(t, "http://"+listen+"/metrics")
	for _, want := range []string{
		`chainwarden_head_source_flagged{kind="not_corroborated",service="eth-liar",source="liar-x"} 1`,
		`chainwarden_head_source_flagged{kind="not_corroborated",service="eth-ref",source="bad-ref"} 1`,
		`chainwarden_head_source_flagged{kind="fork",service="eth-fork",source="fork-b"} 1`,
		// flagged once, or again after a pass that could not compare it (a block-hash lookup that timed out)
		`chainwarden_head_flags_total{kind="fork",service="eth-fork",source="fork-b"} `,
		`chainwarden_network_finalized_height{service="eth-final"}`,
		`chainwarden_block_hash_lookups_total`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// Real CometBFT: two single-validator networks made with one chain id (two chains a node would report alike) and a
// proxy inflating one node's height by 10^6. The liar, as a node and as a reference, does not move the head; the
// node on the other chain is on a fork (the reference on the first chain breaks the tie), found by /blockchain.
func TestAgentCorroboratedHeadCometBFT(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	const chain = "cw-same-chain"
	a := testenv.StartCometChain(t, 1, chain).Nodes[0]
	b := testenv.StartCometChain(t, 1, chain).Nodes[0]
	liar := testenv.RPCProxy(t, a.RPC, testenv.InflateCometHeights(1_000_000))
	comet := func(name, rpc, service string) string { return nodeBlock(name, "cometbft", rpc, service, chain, "") }
	ref := func(name, rpc, service string) string {
		return fmt.Sprintf("reference %q {\n  kind = \"cometbft\"\n  service = %q\n  rpc = %q\n}\n", name, service, rpc)
	}
	blocks := comet("comet-a", a.RPC, "irita-liar") + comet("comet-liar", liar, "irita-liar") +
		comet("ref-a", a.RPC, "irita-ref") + ref("bad-ref", liar, "irita-ref") +
		comet("fork-a", a.RPC, "irita-fork") + comet("fork-b", b.RPC, "irita-fork") + ref("provider", a.RPC, "irita-fork")
	startAgent(t, c, "host-a", blocks)

	out := c.WaitCheck(t, "comet-liar", 30*time.Second, "critical")
	if !regexp.MustCompile(`^head 100\d{4} not corroborated: no other source vouches for it, and `).MatchString(out) {
		t.Fatalf("liar's output %q", out)
	}
	t.Logf("liar: %s", out)
	c.WaitCheck(t, "comet-a", 30*time.Second, "passing")
	c.WaitCheck(t, "ref-a", 30*time.Second, "passing")
	testenv.Eventually(t, 10*time.Second, "the lying reference flagged in KV", func() error {
		p, _, err := c.Client.KV().Get(kvlayout.New("").Flag("irita-ref", "host-a", "bad-ref"), nil)
		if err != nil || p == nil || !strings.Contains(string(p.Value), "not corroborated") {
			return fmt.Errorf("flag %v (%v)", p, err)
		}
		return nil
	})
	out = c.WaitCheck(t, "fork-b", 30*time.Second, "critical")
	// CometBFT hashes are SHA-256, shown like Ethereum's; a committed block is final, so the heads themselves compare.
	if !regexp.MustCompile(`^on a fork: block \d+ is 0x[0-9a-f]{10} here, 0x[0-9a-f]{10} on (fork-a|provider)`).MatchString(out) {
		t.Fatalf("forked node's output %q", out)
	}
	t.Logf("fork: %s", out)
	c.WaitCheck(t, "fork-a", 30*time.Second, "passing")
}

// waitOutput waits until node's check has status and an output that re matches, and returns the output.
func waitOutput(t *testing.T, c *testenv.Consul, node, status string, re *regexp.Regexp) string {
	t.Helper()
	var out string
	testenv.Eventually(t, 30*time.Second, node+" "+status+" with "+re.String(), func() error {
		st, o, err := c.CheckStatus(node)
		if err != nil {
			return err
		}
		if out = o; st != status || !re.MatchString(o) {
			return fmt.Errorf("%s is %s: %q", node, st, o)
		}
		return nil
	})
	return out
}

// Bounded publishers with real Consul and two agents on one geth --dev network, head_publishers = 2: exactly two
// nodes hold a publisher key (under their agent's session), the critical node never publishes, each agent sees the
// other's publishers; when host-a stops, its session goes with its keys and host-b's node takes a slot.
func TestAgentBoundedPublishers(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	g := testenv.StartGethDev(t, "geth-share")
	id := fmt.Sprint(testenv.DevChainID)
	const pubs = "  head_publishers = 2\n"
	a, _, stopA := startAgentWith(t, c, "host-a", pubs, nodeBlock("share-a", "ethereum", g.RPC, "eth-share", id, "")+
		nodeBlock("share-c", "ethereum", g.RPC, "eth-share", id, "")+
		nodeBlock("share-dead", "ethereum", "http://127.0.0.1:1", "eth-share", id, ""))
	b, _, _ := startAgentWith(t, c, "host-b", pubs, nodeBlock("share-b", "ethereum", g.RPC, "eth-share", id, ""))
	layout := kvlayout.New("")
	held := func() (map[string]string, error) { // node -> agent
		pairs, _, err := c.Client.KV().List(layout.ServiceHeads("eth-share"), nil)
		out := map[string]string{}
		for _, p := range pairs {
			if p.Session != "" {
				var h struct{ Agent string }
				if err := json.Unmarshal(p.Value, &h); err != nil {
					return nil, err
				}
				out[strings.TrimPrefix(p.Key, layout.ServiceHeads("eth-share"))] = h.Agent
			}
		}
		return out, err
	}
	sees := func(ag *Agent, node string) bool {
		for _, h := range ag.heads.All("eth-share") {
			if h.Node == node && h.Session != "" {
				return true
			}
		}
		return false
	}
	c.WaitCheck(t, "share-dead", 30*time.Second, "critical")
	testenv.Eventually(t, 30*time.Second, "two publishers, each agent seeing the other's", func() error {
		h, err := held()
		if err != nil {
			return err
		}
		if len(h) != 2 || h["share-dead"] != "" {
			return fmt.Errorf("held %v", h)
		}
		for node, agent := range h {
			if other := map[string]*Agent{"host-a": b, "host-b": a}[agent]; !sees(other, node) {
				return fmt.Errorf("the other agent does not see %s's head (held %v)", node, h)
			}
		}
		return nil
	})
	if k, _, _ := c.Client.KV().Get(layout.Head("eth-share", "share-dead"), nil); k != nil {
		t.Fatalf("the critical node published: %s", k.Value)
	}
	stopA()
	testenv.Eventually(t, 30*time.Second, "host-a's keys gone with its session, share-b publishing", func() error {
		h, err := held()
		if err != nil {
			return err
		}
		if len(h) != 1 || h["share-b"] != "host-b" {
			return fmt.Errorf("held %v", h)
		}
		return nil
	})
}
