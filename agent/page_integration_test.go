package agent

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/browsertest"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// The agent's page in a real browser with JavaScript off, as a person opens it: a real agent watching a real geth
// (and the same geth configured as another chain), its nodes with status, reasons and figures, geth-a's transition
// to passing, and the link to /v1/health.
func TestAgentPageInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	br := browsertest.StartWith(t, browsertest.Options{NoScript: true})
	c := testenv.StartConsul(t)
	g := testenv.StartGethDev(t, "geth-dev")
	blocks := gethBlock("geth-a", g, testenv.DevChainID, "  min_peers = 0\n") +
		strings.Replace(gethBlock("geth-wrong", g, 1, "  min_peers = 0\n"), "eth-devnet", "eth-mainnet", 1)
	a, listen, _ := startAgent(t, c, "host-a", blocks)
	c.WaitCheck(t, "geth-a", 30*time.Second, "passing")

	if code := br.Open("http://" + listen + "/"); code != 200 {
		t.Fatalf("GET /: %d", code)
	}
	text := br.Wait(browsertest.Want{Text: []string{
		`chainwarden agent host-a`, `2 nodes, probed every 500ms`,
		`geth-a\s+ethereum\s+eth-devnet\s+passing`, // name, kind, service, status
		`geth-wrong\s+ethereum\s+eth-mainnet\s+critical\s+since the agent started\s+wrong chain 1337 \(want 1\)`,
		`Geth/v1\.16\.7`, // the client version geth reported
		`Recent transitions[\s\S]*geth-a\s+eth-devnet\s+critical → passing`,
	}, Reload: true})
	br.Screenshot("agent-page.png")

	// The figures on the page are the agent's: geth-a's height is one the agent had found when the page was made.
	m := regexp.MustCompile(`geth-a\s[^\t]*\t[^\t]*\t[^\t]*\t[^\n]*\n?[^\n]*height (\d+), at head (\d+)`).FindStringSubmatch(text)
	h := health(t, a, "geth-a")
	if m == nil {
		t.Fatalf("no height of geth-a on the page:\n%s", text)
	}
	if height, _ := strconv.ParseUint(m[1], 10, 64); height == 0 || height > h.Height || m[1] != m[2] {
		t.Fatalf("geth-a on the page: height %s, head %s; the agent now: %d", m[1], m[2], h.Height)
	}

	// The /v1/health link leads to the JSON verdicts.
	br.Wait(browsertest.Want{Click: []string{`a[href="/v1/health"]`}, Text: []string{`"node": "geth-a"`, `"status": "passing"`}})
}
