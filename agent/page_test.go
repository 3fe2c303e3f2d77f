package agent

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The page lists every node with its verdict and the latest transitions, and escapes what came from the nodes: a
// client version and an error body carrying markup show as text, and no script element reaches the browser.
func TestPageEscapesWhatNodesSay(t *testing.T) {
	clk := start()
	good, goodURL := newFakeEth(t, 100, clk)
	good.ClientVersion = `<script>alert("version")</script>`
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `<script>alert("reason")</script><img src=x onerror=alert(1)>`, http.StatusBadGateway)
	}))
	t.Cleanup(evil.Close)
	a := newUnit(t, clk, node("geth-a", goodURL, 2)+node("geth-evil", evil.URL, 2))
	for range 2 {
		a.Step(context.Background())
		clk.Advance(time.Second)
	}
	if h := health(t, a.Agent, "geth-a"); h.Status != "passing" {
		t.Fatalf("geth-a %s", h.Status)
	}

	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("GET /: %d %v", resp.StatusCode, resp.Header)
	}
	if strings.Contains(strings.ToLower(page), "<script") || strings.Contains(page, "<img") {
		t.Fatalf("markup from a node reached the page unescaped:\n%s", page)
	}
	for _, want := range []string{
		`&lt;script&gt;alert(&#34;version&#34;)&lt;/script&gt;`, // the client version, as text
		`probe failed: json-rpc batch: http 502 Bad Gateway: &lt;script&gt;alert(&#34;reason&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;`,
		`<a href="/v1/health">`, `<a href="/metrics">`, `<a href="/v1/health/geth-a">geth-a</a>`,
		`<span class="status passing">passing</span>`, `<span class="status critical">critical</span>`,
		`<td class="num">100<div class="muted">finalized `, // geth-a's height and its finalized block
		`since the agent started`,                          // geth-evil has been critical from the start
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if p, c := strings.Index(page, `<span class="status passing">1 passing</span>`), strings.Index(page, `<span class="status critical">1 critical</span>`); p < 0 || c < p {
		t.Errorf("counts: passing at %d, critical at %d (want both, passing first)", p, c)
	}
	// geth-a's one transition, critical to passing after its second good probe, with its time.
	tr := a.Transitions()
	if len(tr) != 1 || tr[0].Node != "geth-a" || tr[0].From != "critical" || tr[0].To != "passing" ||
		!tr[0].Time.Equal(start().Now().Add(time.Second)) {
		t.Fatalf("transitions %+v", tr)
	}
	if !strings.Contains(page, `<span class="status critical">critical</span> &rarr; <span class="status passing">passing</span>`) ||
		!strings.Contains(page, "2026-11-21 12:00:01Z") {
		t.Errorf("page lacks geth-a's transition:\n%s", page)
	}
	if t.Failed() {
		t.Logf("page:\n%s", page)
	}

	// Only / is the page: other paths are not found.
	if code, _ := get(t, srv.URL+"/nope"); code != http.StatusNotFound {
		t.Fatalf("/nope: %d", code)
	}
}

// The agent keeps the latest 50 transitions, newest first.
func TestTransitionsKeepTheLatest(t *testing.T) {
	clk := start()
	a := newUnit(t, clk, "")
	for i := range maxTransitions + 7 {
		a.mu.Lock()
		a.recordTransition(Transition{Node: fmt.Sprintf("n%d", i)})
		a.mu.Unlock()
	}
	tr := a.Transitions()
	if len(tr) != maxTransitions || tr[0].Node != fmt.Sprintf("n%d", maxTransitions+6) || tr[len(tr)-1].Node != "n7" {
		t.Fatalf("%d transitions, first %s, last %s", len(tr), tr[0].Node, tr[len(tr)-1].Node)
	}
}
