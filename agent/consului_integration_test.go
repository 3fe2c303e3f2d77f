package agent

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/browsertest"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// What a person sees in the Consul UI is the servers' copy of each check, which a production Consul agent updates
// for output-only changes only every check_update_interval (5m). Against a real Consul with that setting and a real
// geth, in a real Chromium: a node critical from its first probe shows its reason on its health-check page (not a
// blank), and a passing node's figures there follow the agent's within 10 s.
func TestConsulUIShowsTheVerdict(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsulWith(t, testenv.ProductionChecks...)
	g := testenv.StartGethDev(t, "geth-dev")
	// geth-lonely keeps the default min_peers = 1: a --dev node has no peers, so it is critical from the start.
	blocks := gethBlock("geth-lonely", g, testenv.DevChainID, "") + gethBlock("geth-a", g, testenv.DevChainID, "  min_peers = 0\n")
	_, listen, _ := startAgent(t, c, "host-a", blocks)
	c.WaitCheck(t, "geth-a", 30*time.Second, "passing")

	nodeName, err := c.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	page := func(id string) string {
		return fmt.Sprintf("http://%s/ui/dc1/services/eth-devnet/instances/%s/%s/health-checks", c.Addr,
			url.PathEscape(nodeName), url.PathEscape(id))
	}
	b := browsertest.Start(t)

	b.Open(page("geth-lonely"))
	b.Wait(browsertest.Want{Text: []string{`0 peers, want at least 1`}, Within: 60 * time.Second})
	b.Screenshot("consul-ui-critical-from-start.png")

	// The figures: the height the UI shows for geth-a follows the agent's, never more than about 10 s of blocks
	// behind (geth --dev makes a block a second; the catalog gets new figures at least every 10 s; the UI updates
	// itself through blocking queries, without a reload). Without the catalog writes it would keep its first
	// figures for check_update_interval, 5 minutes.
	b.Open(page("geth-a"))
	b.Wait(browsertest.Want{Text: []string{"height "}, Within: 60 * time.Second}) // the page rendered the output
	heightRE := regexp.MustCompile(`height (\d+)`)
	agentHeight := func() uint64 {
		var h NodeHealth
		_, body := get(t, "http://"+listen+"/v1/health/geth-a")
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			t.Fatalf("/v1/health/geth-a: %v", err)
		}
		return h.Height
	}
	shown := func() (uint64, error) {
		m := heightRE.FindStringSubmatch(b.Text())
		if m == nil {
			return 0, fmt.Errorf("no height on the page")
		}
		return strconv.ParseUint(m[1], 10, 64)
	}
	first := agentHeight()
	worst := uint64(0)
	for last := first; last < first+40; {
		// Pace the samples by the chain: a new sample each time the agent has seen 4 more blocks.
		testenv.Eventually(t, 30*time.Second, "the chain going on", func() error {
			if h := agentHeight(); h < last+4 {
				return fmt.Errorf("agent at %d", h)
			}
			return nil
		})
		last = agentHeight()
		ui, err := shown()
		if err != nil {
			t.Fatal(err)
		}
		if ui+15 < last {
			t.Fatalf("the Consul UI shows height %d while the agent has %d", ui, last)
		}
		worst = max(worst, last-min(ui, last))
	}
	t.Logf("over 40 blocks the Consul UI was at most %d blocks behind the agent", worst)
	b.Screenshot("consul-ui-figures-fresh.png")
}
