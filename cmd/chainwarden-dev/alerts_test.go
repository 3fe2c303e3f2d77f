package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/browsertest"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// The tour's "make a geth node fall behind" step, as a person follows it: run the demo, paste the printed
// admin_removePeer command, and watch Prometheus's alerts page (headless Chromium) show ChainNodeOutOfSync for that
// node go pending, then firing; paste the admin_addPeer command and watch it resolve. The demo runs with
// -alert-for 15s (every `for:` of the shipped rules shortened to 15s; the demo's default is 1m) and a lean network
// (2 geth, 2 CometBFT validators).
func TestTourLaggingNodeFiresAlert(t *testing.T) {
	for _, name := range []string{"consul", "geth-clique", "cometbft", "prometheus"} {
		testenv.Bin(t, name)
	}
	br := browsertest.Start(t) // before the demo: a missing browser fails (or skips) at once
	bin := testenv.GoBuild(t, "./cmd/chainwarden-dev")
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	out := runDemo(t, bin, "-dir", t.TempDir(), "-geth", "2", "-cometbft", "2", "-alert-for", "15s",
		"-consul-port", strconv.Itoa(testenv.FreePort(t)), "-listen", listen,
		"-prometheus-port", strconv.Itoa(testenv.FreePort(t)))

	alertsPage := match(t, out, `(?m)^  Prometheus:\s+(\S+)`)[1]
	promURL := strings.TrimSuffix(strings.TrimSuffix(alertsPage, "/alerts"), "/classic")
	remove := match(t, out, `curl -s -H 'content-type: application/json' (\S+) \\\n\s+-d '(\{[^']*admin_removePeer[^']*\})'`)
	add := match(t, out, `curl -s -H 'content-type: application/json' (\S+) \\\n\s+-d '(\{[^']*admin_addPeer[^']*\})'`)
	lagger := match(t, out, `-> (\S+) turns warning`)[1]
	if !strings.Contains(out, "ChainNodeOutOfSync alert goes pending as it turns warning") {
		t.Fatalf("the tour does not say what Prometheus shows:\n%s", out)
	}
	outOfSync := func(state string) error { return alertState(promURL, "ChainNodeOutOfSync", lagger, state) }

	// The agent's own page, as the tour points to it.
	br.Open("http://" + listen + "/")
	br.Wait(browsertest.Want{Text: []string{"chainwarden agent dev", lagger, "passing"}})

	// The nodes passed before the tour was printed; once Prometheus has seen that too, nothing is out of sync.
	testenv.Eventually(t, 30*time.Second, "no ChainNodeOutOfSync alert left from the start", func() error { return outOfSync("") })
	fellBehind := time.Now()
	rpc(t, remove[1], remove[2])
	testenv.Eventually(t, 60*time.Second, lagger+" out of sync: pending", func() error { return outOfSync("pending") })
	pending := time.Since(fellBehind)

	// The alert's row (its labels, then its state) shows once its rule is expanded, as a person clicks it.
	row := `alertname="ChainNodeOutOfSync"[^\n]*node="` + lagger + `"[^\n]*`
	expand := []string{`tr.alert_header:has-text("ChainNodeOutOfSync")`}
	br.Open(alertsPage)
	br.Wait(browsertest.Want{Text: []string{row + "(FIRING|firing)"}, Click: expand, Reload: true, Within: 90 * time.Second})
	firing := time.Since(fellBehind)
	br.Screenshot("prometheus-alert-firing.png")

	rpc(t, add[1], add[2])
	caughtUp := time.Now()
	br.Wait(browsertest.Want{Text: []string{`ChainNodeOutOfSync \(0 active\)`}, Absent: []string{row}, Click: expand,
		Reload: true, Within: 90 * time.Second})
	resolved := time.Since(caughtUp)
	br.Screenshot("prometheus-alert-resolved.png")
	t.Logf("%s fell behind: pending after %s, firing after %s (for: 15s); resolved %s after admin_addPeer",
		lagger, pending.Round(100*time.Millisecond), firing.Round(100*time.Millisecond), resolved.Round(100*time.Millisecond))
}

// runDemo starts the demo binary from the repository root, as `make demo` does, and returns its output up to the
// end of the tour; the demo is interrupted (Ctrl-C) and waited for when the test ends.
func runDemo(t *testing.T, bin string, args ...string) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			t.Errorf("the demo did not stop within a minute of Ctrl-C")
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		go func() {
			for range lines { // drain what it said while stopping
			}
		}()
		r.Close()
	})
	var out strings.Builder
	timeout := time.After(3 * time.Minute)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended before it was up:\n%s", out.String())
			}
			out.WriteString(l + "\n")
			if strings.HasPrefix(l, "Press Ctrl-C") {
				t.Logf("the demo's tour:\n%s", out.String())
				return out.String()
			}
		case <-timeout:
			t.Fatalf("the demo was not up after 3 minutes:\n%s", out.String())
		}
	}
}

func match(t *testing.T, s, re string) []string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("the demo's output has no %s:\n%s", re, s)
	}
	return m
}

// rpc posts a JSON-RPC body as the tour's curl command does, and fails the test unless the call worked.
func rpc(t *testing.T, url, body string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res struct {
		Result bool `json:"result"`
		Error  any  `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || !res.Result {
		t.Fatalf("%s %s: %v %+v", url, body, err, res)
	}
}

// alertState returns nil when Prometheus's alert for node is in state ("": no such alert).
func alertState(promURL, alert, node, state string) error {
	resp, err := http.Get(promURL + "/api/v1/alerts")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return err
	}
	got := ""
	for _, a := range body.Data.Alerts {
		if a.Labels["alertname"] == alert && a.Labels["node"] == node {
			got = a.State
		}
	}
	if got != state {
		return fmt.Errorf("%s for %s is %q, want %q", alert, node, got, state)
	}
	return nil
}
