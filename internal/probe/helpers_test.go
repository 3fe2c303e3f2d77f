package probe

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// probeTimeout is the deadline the table tests give a probe against a local fake node.
const probeTimeout = 5 * time.Second

func runProbe(t *testing.T, client *http.Client, tg Target) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	return Run(ctx, client, tg)
}

// newServer starts an httptest server that is closed when the test ends.
func newServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

// hugeBody is how much a misbehaving node sends in the size-cap tests.
const hugeBody = 100 << 20

// streamHuge writes prefix and then filler bytes up to hugeBody in total, from one reused 64 KB buffer, stopping
// as soon as the client hangs up. The filler keeps a JSON string open, so a decoder has to read on to find its end.
func streamHuge(w http.ResponseWriter, status int, prefix string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if _, err := w.Write([]byte(prefix)); err != nil {
		return
	}
	chunk := []byte(strings.Repeat("a", 64<<10))
	for sent := len(prefix); sent < hugeBody; sent += len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
}

// blockHandler answers nothing until the client gives up. It reads the request body first: net/http only notices
// a client hanging up (and cancels the request context) once the handler has consumed the body.
func blockHandler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	<-r.Context().Done()
}

// allocatedDuring returns how many bytes were allocated on the heap (by every goroutine, the fake server's too)
// while f ran.
func allocatedDuring(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// wantErr fails the test unless err is set and its message holds every one of parts.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error containing %q, got none", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func noErr(t *testing.T, r Result) {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("unexpected probe error: %v", r.Err)
	}
}

// TestProbeLimits runs every prober against a node that sends 100 MB, and one that never answers.
func TestProbeLimits(t *testing.T) {
	// Each prefix is how the node's real answer starts; the filler then keeps a string open for 100 MB.
	prefixes := map[string]string{
		"ethereum":  `[{"jsonrpc":"2.0","id":1,"result":"0x`,
		"cometbft":  `{"jsonrpc":"2.0","id":0,"result":{"node_info":{"network":"`,
		"chainlink": `{"data":[{"type":"checks","id":"x","attributes":{"name":"x","status":"passing","output":"`,
	}
	client := NewHTTPClient()
	for kind, prefix := range prefixes {
		t.Run(kind+"/100MB body", func(t *testing.T) {
			srv := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				streamHuge(w, http.StatusOK, prefix)
			}))
			var r Result
			alloc := allocatedDuring(func() { r = runProbe(t, client, Target{Name: "n", Kind: Kind(kind), URL: srv.URL}) })
			if !errors.Is(r.Err, ErrTooLarge) {
				t.Fatalf("want ErrTooLarge, got %v", r.Err)
			}
			if len(r.Err.Error()) > 2*maxErrText {
				t.Errorf("error message is %d bytes long", len(r.Err.Error()))
			}
			t.Logf("allocated %.1f MB reading a 100 MB answer: %v", float64(alloc)/(1<<20), r.Err)
			if alloc > 32<<20 {
				t.Errorf("allocated %d MB reading a 100 MB answer, want < 32 MB", alloc>>20)
			}
		})
		t.Run(kind+"/never answers", func(t *testing.T) {
			srv := newServer(t, http.HandlerFunc(blockHandler))
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			done := make(chan Result, 1)
			go func() {
				done <- Run(ctx, client, Target{Name: "n", Kind: Kind(kind), URL: srv.URL, APIKey: "k", APISecret: "s"})
			}()
			select {
			case r := <-done:
				if r.Err == nil {
					t.Fatal("a node that never answers gave no error")
				}
				if !errors.Is(r.Err, context.DeadlineExceeded) {
					t.Errorf("want an error wrapping context.DeadlineExceeded, got %v", r.Err)
				}
				t.Logf("returned after %s: %v", time.Since(start).Round(time.Millisecond), r.Err)
			case <-time.After(5 * time.Second): // a hang guard, not a speed target
				t.Fatal("probe still running 5 s after its 200 ms deadline")
			}
		})
	}
}

func TestRunUnknownKind(t *testing.T) {
	r := Run(context.Background(), NewHTTPClient(), Target{Name: "n", Kind: "bitcoin", URL: "http://127.0.0.1:1"})
	wantErr(t, r.Err, `no prober for kind "bitcoin"`)
}

func TestTidyRedactsURL(t *testing.T) {
	// An Infura-style URL carries its API key in the path; net/http quotes the URL in transport errors.
	srv := newServer(t, http.HandlerFunc(blockHandler))
	secretURL := srv.URL + "/v3/0123456789abcdef0123456789abcdef"
	for _, kind := range []string{"ethereum", "cometbft", "chainlink"} {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		r := Run(ctx, NewHTTPClient(), Target{Name: "n", Kind: Kind(kind), URL: secretURL})
		cancel()
		if r.Err == nil {
			t.Fatalf("%s: no error", kind)
		}
		if strings.Contains(r.Err.Error(), "0123456789abcdef") {
			t.Errorf("%s: error leaks the URL path: %v", kind, r.Err)
		}
		if !strings.Contains(r.Err.Error(), srv.URL) {
			t.Errorf("%s: error %q should still name the host %s", kind, r.Err, srv.URL)
		}
	}
}
