package browsertest

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
)

// The helper against pages served here: waiting for text, clicking a link, reloading a page that changes on each
// load, absent text, screenshots as PNG files in the output directory, and JavaScript on or off.
func TestBrowserDrivesPages(t *testing.T) {
	var visits atomic.Int64
	mux := http.NewServeMux()
	page := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, "<!DOCTYPE html><html><body>%s</body></html>", body)
		}
	}
	mux.HandleFunc("/{$}", page(`<h1>hello</h1><p style="display:none">hidden words</p><a href="/details">Details</a>`+
		`<p id="js">no script ran</p><script>document.getElementById("js").textContent = "script ran";</script>`))
	mux.HandleFunc("/details", page(`<p>the details</p>`))
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		page(fmt.Sprintf("<p>visit %d</p>", visits.Add(1)))(w, r)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	b := Start(t)
	if code := b.Open(srv.URL + "/"); code != 200 {
		t.Fatalf("status %d", code)
	}
	text := b.Wait(Want{Text: []string{`^hello`, `script ran`}, Absent: []string{`hidden words`, `no script ran`}})
	if !strings.Contains(text, "Details") {
		t.Fatalf("visible text %q", text)
	}
	shot := b.Screenshot("home.png")
	if png, err := os.ReadFile(shot); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	b.Wait(Want{Click: []string{`text=Details`}, Text: []string{`the details`}})

	b.Open(srv.URL + "/count")
	b.Wait(Want{Text: []string{`visit [3-9]`}, Reload: true})
	if n := visits.Load(); n < 3 {
		t.Fatalf("%d visits", n)
	}

	off := StartWith(t, Options{NoScript: true})
	off.Open(srv.URL + "/")
	if text := off.Text(); !strings.Contains(text, "no script ran") {
		t.Fatalf("with JavaScript off the page says %q", text)
	}
}
