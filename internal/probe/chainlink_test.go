package probe

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"io"
	"net/http"
	"strings"
	"testing"
)

const testAPIEmail = "ops@example.com"

// The fake node's credentials: made for each run, so that nothing secret-looking is written in the repo.
var (
	testAPIKey      = rand.Text()
	testAPISecret   = rand.Text()
	testAPIPassword = rand.Text()
)

func chainlinkCheckJSON(name, status, output string) string {
	return fmt.Sprintf(`{"type":"checks","id":%q,"attributes":{"name":%q,"status":%q,"output":%q}}`,
		name, name, status, output)
}

var (
	passingChecks = `{"data":[` + strings.Join([]string{
		chainlinkCheckJSON("EVM.1.HeadTracker", "passing", ""),
		chainlinkCheckJSON("EVM.1.Txm", "passing", ""),
		chainlinkCheckJSON("JobSpawner", "passing", ""),
	}, ",") + `]}`
	failingChecks = `{"data":[` + strings.Join([]string{
		chainlinkCheckJSON("EVM.1.HeadTracker", "failing", "waiting for new heads: no new heads received for 3m0s"),
		chainlinkCheckJSON("EVM.1.Txm", "passing", ""),
		chainlinkCheckJSON("Mercury.WSRPCPool", "failing", "connection refused"),
	}, ",") + `]}`

	// GET /v2/keys/evm of a node with three keys: funded, balance unknown (null), and disabled.
	evmKeysJSON = `{"data":[
	  {"type":"eTHKeys","id":"1/0x2aCFF2ec69aa9945Ed84f4F281eCCF6911A3B0eD","attributes":{
	    "address":"0x2aCFF2ec69aa9945Ed84f4F281eCCF6911A3B0eD","evmChainID":"1","ethBalance":"1500000000000000000",
	    "linkBalance":"0","disabled":false,"createdAt":"2024-01-01T00:00:00Z","updatedAt":"2024-01-01T00:00:00Z",
	    "maxGasPriceWei":"115792089237316195423570985008687907853269984665640564039457584007913129639935"}},
	  {"type":"eTHKeys","id":"137/0x9fB29AAc15b9A4B7F17c3385939b007540f4d791","attributes":{
	    "address":"0x9fB29AAc15b9A4B7F17c3385939b007540f4d791","evmChainID":"137","ethBalance":null,
	    "linkBalance":null,"disabled":false,"createdAt":"2024-01-01T00:00:00Z","updatedAt":"2024-01-01T00:00:00Z",
	    "maxGasPriceWei":null}},
	  {"type":"eTHKeys","id":"1/0x00000000000000000000000000000000000000aa","attributes":{
	    "address":"0x00000000000000000000000000000000000000aa","evmChainID":"1","ethBalance":"0",
	    "linkBalance":"0","disabled":true,"createdAt":"2024-01-01T00:00:00Z","updatedAt":"2024-01-01T00:00:00Z",
	    "maxGasPriceWei":null}}]}`
)

// pipelineRunsJSON renders GET /v2/pipeline/runs (newest first) with one run per entry of fatal: "" for a run
// without error, else its fatal error.
func pipelineRunsJSON(fatal ...string) string {
	var runs []string
	for i, f := range fatal {
		// As a real v2.23.0 node answers: the fatal error only says the final task had too many failed inputs,
		// the task's own error is in allErrors.
		fe, all, task := `[null]`, `[null]`, `null`
		if f != "" {
			task = fmt.Sprintf("%q", f)
			fe = `["task inputs: too many errors"]`
			all = fmt.Sprintf(`[%q,"task inputs: too many errors"]`, f)
		}
		runs = append(runs, fmt.Sprintf(`{"type":"pipelineRun","id":"%d","attributes":{"outputs":[null],`+
			`"errors":%s,"allErrors":%s,"fatalErrors":%s,"inputs":{},"taskRuns":[{"type":"http","createdAt":`+
			`"2024-03-14T10:00:00Z","finishedAt":"2024-03-14T10:00:01Z","output":null,"error":%s,"dotId":"fetch"}],`+
			`"createdAt":"2024-03-14T10:00:00Z","finishedAt":"2024-03-14T10:00:01Z","pipelineSpec":{"id":"1",`+
			`"jobID":3,"dotDagSource":"fetch [type=http]"}}}`, 100-i, fe, all, fe, task))
	}
	return `{"data":[` + strings.Join(runs, ",") + `],"meta":{"count":` + fmt.Sprint(len(fatal)) + `}}`
}

// chainlinkNode is a fake Chainlink node API: /health without auth, the /v2 routes behind X-API-KEY/X-API-SECRET
// (401 with a JSON:API error otherwise, as core/web/auth does).
type chainlinkNode struct {
	t            testing.TB
	healthStatus int
	health       string
	keys, runs   string
	buildInfo    string // "" = the route does not exist (older node): 404
	keysStatus   int    // 0 = 200
	jobs         map[string]string
	dbDown       bool // authenticated routes answer 401 with the database dial error, as a real node does

	mu       sync.Mutex
	sessions map[string]bool // live session cookies
	logins   int
	calls    map[string]int // authenticated calls by path
}

// dbDownDetail is what a real Chainlink v2.23.0 answered to an authenticated request with its Postgres stopped.
const dbDownDetail = "failed to connect to `user=chainlink database=chainlink`: 127.0.0.1:45432 (127.0.0.1): " +
	"dial error: dial tcp 127.0.0.1:45432: connect: connection refused"

// expireSessions forgets every session, as the node does after its SessionTimeout.
func (n *chainlinkNode) expireSessions() {
	n.mu.Lock()
	clear(n.sessions)
	n.mu.Unlock()
}

func (n *chainlinkNode) count(path string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.calls[path]
}

func (n *chainlinkNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	write := func(status int, body string) {
		w.Header().Set("Content-Type", "application/vnd.api+json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if r.URL.Path == "/sessions" && r.Method == http.MethodPost {
		var req struct{ Email, Password string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			write(http.StatusBadRequest, `{"errors":[{"detail":"error binding json"}]}`)
			return
		}
		if req.Email != testAPIEmail || req.Password != testAPIPassword {
			write(http.StatusUnauthorized, `{"errors":[{"detail":"Invalid email"}]}`)
			return
		}
		n.logins++
		id := fmt.Sprintf("session-%d", n.logins)
		if n.sessions == nil {
			n.sessions = map[string]bool{}
		}
		n.sessions[id] = true
		http.SetCookie(w, &http.Cookie{Name: "clsession", Value: id, Path: "/", HttpOnly: true})
		write(http.StatusOK, `{"data":{"type":"session","id":"sessionID","attributes":{"authenticated":true}}}`)
		return
	}
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path == "/health" {
		write(n.healthStatus, n.health)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/v2/") {
		http.NotFound(w, r)
		return
	}
	if n.calls == nil {
		n.calls = map[string]int{}
	}
	n.calls[r.URL.Path]++
	if n.dbDown {
		write(http.StatusUnauthorized, fmt.Sprintf(`{"errors":[{"detail":%q}]}`, dbDownDetail))
		return
	}
	ck, err := r.Cookie("clsession")
	bySession := err == nil && n.sessions[ck.Value]
	if !bySession && (r.Header.Get("X-API-KEY") != testAPIKey || r.Header.Get("X-API-SECRET") != testAPISecret) {
		write(http.StatusUnauthorized, `{"errors":[{"detail":"Authentication failed"}]}`)
		return
	}
	if id, ok := strings.CutPrefix(r.URL.Path, "/v2/jobs/"); ok {
		name, found := n.jobs[id]
		if !found {
			write(http.StatusNotFound, `{"errors":[{"detail":"JobSpec not found"}]}`)
			return
		}
		write(http.StatusOK, fmt.Sprintf(`{"data":{"type":"jobs","id":%q,"attributes":{"name":%q,"type":"cron"}}}`, id, name))
		return
	}
	switch r.URL.Path {
	case "/v2/keys/evm":
		status := n.keysStatus
		if status == 0 {
			status = http.StatusOK
		}
		write(status, n.keys)
	case "/v2/pipeline/runs":
		if got := r.URL.Query().Get("size"); got != fmt.Sprint(ChainlinkRecentRuns) {
			n.t.Errorf("runs size=%q, want %d", got, ChainlinkRecentRuns)
		}
		write(http.StatusOK, n.runs)
	case "/v2/build_info":
		if n.buildInfo == "" {
			http.NotFound(w, r)
			return
		}
		write(http.StatusOK, n.buildInfo)
	default:
		http.NotFound(w, r)
	}
}

func TestChainlinkProbe(t *testing.T) {
	healthy := func() *chainlinkNode {
		return &chainlinkNode{healthStatus: http.StatusOK, health: passingChecks, keys: evmKeysJSON,
			runs: pipelineRunsJSON("", "", ""), buildInfo: `{"version":"2.10.0","commitSHA":"b4c2e61f"}`,
			jobs: map[string]string{"3": "eth-usd price"}}
	}
	cases := []struct {
		name   string
		node   func(n *chainlinkNode)
		noAuth bool
		secret string // overrides the API secret the probe sends
		check  func(t *testing.T, r Result)
	}{
		{name: "healthy, no credentials", noAuth: true, check: func(t *testing.T, r Result) {
			noErr(t, r)
			want := Result{Client: "chainlink"}
			if !equalResult(r, want) || r.Wallets != nil || r.FailingChecks != nil {
				t.Errorf("got  %+v\nwant %+v", r, want)
			}
		}},
		{name: "healthy with credentials: wallets, runs, version", check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.Client != "chainlink" || r.Version != "2.10.0" || r.HasHeight || len(r.FailingChecks) != 0 {
				t.Errorf("got %+v", r)
			}
			if !r.RunsChecked || r.FailedRuns != 0 {
				t.Errorf("runs checked %v, failed %d", r.RunsChecked, r.FailedRuns)
			}
			if len(r.Wallets) != 3 {
				t.Fatalf("wallets %+v", r.Wallets)
			}
			w0, w1, w2 := r.Wallets[0], r.Wallets[1], r.Wallets[2]
			if w0.Address != "0x2aCFF2ec69aa9945Ed84f4F281eCCF6911A3B0eD" || w0.ChainID != "1" ||
				w0.Balance == nil || w0.Balance.String() != "1500000000000000000" || w0.Disabled {
				t.Errorf("wallet 0 %+v", w0)
			}
			if w1.ChainID != "137" || w1.Balance != nil {
				t.Errorf("wallet 1 (null ethBalance) %+v: balance must stay unknown (nil), not zero", w1)
			}
			if !w2.Disabled || w2.Balance == nil || w2.Balance.Sign() != 0 {
				t.Errorf("wallet 2 %+v", w2)
			}
		}},
		{name: "207 with failing checks (current versions)", node: func(n *chainlinkNode) {
			n.healthStatus, n.health = http.StatusMultiStatus, failingChecks
		}, check: func(t *testing.T, r Result) {
			noErr(t, r) // 207 is an answer
			want := []Check{{"EVM.1.HeadTracker", "waiting for new heads: no new heads received for 3m0s"},
				{"Mercury.WSRPCPool", "connection refused"}}
			if !slices.Equal(r.FailingChecks, want) {
				t.Errorf("FailingChecks %q", r.FailingChecks)
			}
			if len(r.Wallets) != 3 || !r.RunsChecked {
				t.Error("an unhealthy node's wallets and runs should still be read")
			}
		}},
		{name: "503 with failing checks (older versions)", noAuth: true, node: func(n *chainlinkNode) {
			n.healthStatus, n.health = http.StatusServiceUnavailable, failingChecks
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if len(r.FailingChecks) != 2 {
				t.Errorf("FailingChecks %q", r.FailingChecks)
			}
		}},
		{name: "200 that lists a failing check is not healthy", noAuth: true, node: func(n *chainlinkNode) {
			n.health = failingChecks
		}, check: func(t *testing.T, r Result) {
			if len(r.FailingChecks) != 2 {
				t.Errorf("FailingChecks %q", r.FailingChecks)
			}
		}},
		{name: "503 without checks", noAuth: true, node: func(n *chainlinkNode) {
			n.healthStatus, n.health = http.StatusServiceUnavailable, `{"data":[]}`
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "GET /health: HTTP 503 without a failing check listed")
		}},
		{name: "long check output is truncated", noAuth: true, node: func(n *chainlinkNode) {
			n.healthStatus = http.StatusMultiStatus
			n.health = `{"data":[` + chainlinkCheckJSON("EVM.1.Txm", "failing", strings.Repeat("nonce too low ", 500)) + `]}`
		}, check: func(t *testing.T, r Result) {
			if len(r.FailingChecks) != 1 || !strings.HasPrefix(r.FailingChecks[0].Output, "nonce too low") ||
				!strings.HasSuffix(r.FailingChecks[0].Output, "...(truncated)") || len(r.FailingChecks[0].Output) > 250 {
				t.Errorf("FailingChecks %q", r.FailingChecks)
			}
		}},
		{name: "non-JSON health body", noAuth: true, node: func(n *chainlinkNode) {
			n.health = "<!doctype html><title>Operator UI</title>"
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "GET /health: HTTP 200: body is not the expected JSON: invalid character '<'")
		}},
		{name: "refused credentials (401)", secret: "wrong-secret-value", check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "GET /v2/keys/evm: HTTP 401: API credentials refused: Authentication failed")
			if !errors.Is(r.Err, ErrCredentialsRefused) {
				t.Errorf("error does not wrap ErrCredentialsRefused: %v", r.Err)
			}
			for _, s := range []string{testAPIKey, "wrong-secret-value", testAPISecret} {
				if strings.Contains(r.Err.Error(), s) {
					t.Errorf("error leaks a credential: %v", r.Err)
				}
			}
			if strings.Contains(r.Err.Error(), "/health") || r.RunsChecked || r.Wallets != nil {
				t.Errorf("health passed and nothing else can be read; got %+v", r)
			}
		}},
		{name: "forbidden (403)", node: func(n *chainlinkNode) { n.keysStatus = http.StatusForbidden; n.keys = `{}` },
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "HTTP 403: API credentials refused")
			}},
		{name: "failed runs are counted", node: func(n *chainlinkNode) {
			n.runs = pipelineRunsJSON("", "fetch: HTTP 500 from bridge", "", "parse: no value at path $.data.price", "")
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if !r.RunsChecked || r.FailedRuns != 2 {
				t.Errorf("runs checked %v, failed %d, want 2", r.RunsChecked, r.FailedRuns)
			}
			// One entry per job, with the task's own error (allErrors), not "task inputs: too many errors".
			want := []RunFailure{{JobID: "3", Job: "eth-usd price", Error: "fetch: HTTP 500 from bridge"}}
			if !slices.Equal(r.RunFailures, want) {
				t.Errorf("RunFailures %+v, want %+v", r.RunFailures, want)
			}
		}},
		{name: "runs of a version without fatalErrors", node: func(n *chainlinkNode) {
			n.runs = `{"data":[{"type":"pipelineRun","id":"7","attributes":{"errors":["boom"],"outputs":[null]}},` +
				`{"type":"pipelineRun","id":"6","attributes":{"errors":[null],"outputs":["42"]}}]}`
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if r.FailedRuns != 1 {
				t.Errorf("failed %d, want 1", r.FailedRuns)
			}
		}},
		{name: "no build_info route: version stays empty", node: func(n *chainlinkNode) { n.buildInfo = "" },
			check: func(t *testing.T, r Result) {
				noErr(t, r)
				if r.Version != "" || len(r.Wallets) != 3 {
					t.Errorf("got %+v", r)
				}
			}},
		{name: "malformed balance", node: func(n *chainlinkNode) {
			n.keys = strings.Replace(evmKeysJSON, `"1500000000000000000"`, `"1.5"`, 1)
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, `ethBalance "1.5" is not a whole number of wei`)
		}},
		{name: "negative balance", node: func(n *chainlinkNode) {
			n.keys = strings.Replace(evmKeysJSON, `"1500000000000000000"`, `"-1"`, 1)
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, `ethBalance "-1" is negative`)
		}},
		{name: "balance as a JSON number", node: func(n *chainlinkNode) {
			n.keys = strings.Replace(evmKeysJSON, `"1500000000000000000"`, `1500000000000000000`, 1)
		}, check: func(t *testing.T, r Result) {
			noErr(t, r)
			if b := r.Wallets[0].Balance; b == nil || b.String() != "1500000000000000000" {
				t.Errorf("balance %v, want 1500000000000000000", b)
			}
		}},
		{name: "keys body is not JSON", node: func(n *chainlinkNode) { n.keys = "Internal Server Error" },
			check: func(t *testing.T, r Result) {
				wantErr(t, r.Err, "GET /v2/keys/evm: HTTP 200: body is not the expected JSON")
			}},
	}
	client := NewHTTPClient()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := healthy()
			n.t = t
			if tc.node != nil {
				tc.node(n)
			}
			srv := newServer(t, n)
			tg := Target{Name: "cl-0", Kind: "chainlink", URL: srv.URL + "/", APIKey: testAPIKey, APISecret: testAPISecret}
			if tc.noAuth {
				tg.APIKey, tg.APISecret = "", ""
			}
			if tc.secret != "" {
				tg.APISecret = tc.secret
			}
			tc.check(t, runProbe(t, client, tg))
		})
	}
}

// healthyChainlink is a fake node that passes every check.
func healthyChainlink(t *testing.T) *chainlinkNode {
	return &chainlinkNode{t: t, healthStatus: http.StatusOK, health: passingChecks, keys: evmKeysJSON,
		runs: pipelineRunsJSON("", ""), buildInfo: `{"version":"2.23.0","commitSHA":"b4c2e61f"}`}
}

// noSecrets fails the test when err's message holds any credential.
func noSecrets(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range []string{testAPIKey, testAPISecret, testAPIEmail, testAPIPassword} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error leaks a credential: %v", err)
		}
	}
}

func TestChainlinkSessionLogin(t *testing.T) {
	n := healthyChainlink(t)
	srv := newServer(t, n)
	client := NewHTTPClient()
	sess := NewChainlinkSession(nil)
	tg := Target{Name: "cl", Kind: Chainlink, URL: srv.URL, APIEmail: testAPIEmail, APIPassword: testAPIPassword, Session: sess}

	r := runProbe(t, client, tg)
	noErr(t, r)
	if len(r.Wallets) != 3 || r.Version != "2.23.0" || n.logins != 1 {
		t.Fatalf("first probe: wallets %d version %q logins %d", len(r.Wallets), r.Version, n.logins)
	}
	r = runProbe(t, client, tg)
	noErr(t, r)
	if n.logins != 1 {
		t.Errorf("the session cookie was not reused: %d logins", n.logins)
	}
	n.expireSessions()
	r = runProbe(t, client, tg)
	noErr(t, r)
	if n.logins != 2 || len(r.Wallets) != 3 {
		t.Errorf("after the session expired: logins %d, wallets %d; want a new login and the checks", n.logins, len(r.Wallets))
	}

	t.Run("wrong password", func(t *testing.T) {
		bad := tg
		bad.APIPassword, bad.Session = "not-the-password", NewChainlinkSession(nil)
		r := runProbe(t, client, bad)
		wantErr(t, r.Err, "log in with the API email and password: POST /sessions: HTTP 401: API credentials refused: Invalid email")
		if !errors.Is(r.Err, ErrCredentialsRefused) {
			t.Errorf("not ErrCredentialsRefused: %v", r.Err)
		}
		noSecrets(t, r.Err)
	})
	t.Run(".api file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), ".api")
		if err := os.WriteFile(path, []byte(testAPIEmail+"\n"+testAPIPassword+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runProbe(t, client, Target{Name: "cl", Kind: Chainlink, URL: srv.URL, APICredentialsFile: path})
		noErr(t, r)
		if len(r.Wallets) != 3 {
			t.Errorf("wallets %d", len(r.Wallets))
		}
		if err := os.WriteFile(path, []byte(testAPIEmail+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		r = runProbe(t, client, Target{Name: "cl", Kind: Chainlink, URL: srv.URL, APICredentialsFile: path})
		wantErr(t, r.Err, "want the email on the first line and the password on the second")
		noSecrets(t, r.Err)
	})
}

// A node whose database is down answers 401 with the dial error: that is the cause, not the credentials, and it
// is said once.
func TestChainlinkDatabaseDown(t *testing.T) {
	for _, way := range []string{"token", "session"} {
		t.Run(way, func(t *testing.T) {
			n := healthyChainlink(t)
			srv := newServer(t, n)
			client := NewHTTPClient()
			tg := Target{Name: "cl", Kind: Chainlink, URL: srv.URL, APIKey: testAPIKey, APISecret: testAPISecret,
				Session: NewChainlinkSession(nil)}
			if way == "session" {
				tg.APIKey, tg.APISecret, tg.APIEmail, tg.APIPassword = "", "", testAPIEmail, testAPIPassword
				noErr(t, runProbe(t, client, tg)) // logged in before the database went away
			}
			n.dbDown = true
			r := runProbe(t, client, tg)
			wantErr(t, r.Err, "database unreachable (the node answers GET /v2/keys/evm with HTTP 401: failed to connect to",
				"connect: connection refused")
			if !errors.Is(r.Err, ErrDatabaseUnreachable) || errors.Is(r.Err, ErrCredentialsRefused) {
				t.Errorf("wrong cause: %v", r.Err)
			}
			if strings.Count(r.Err.Error(), "database unreachable") != 1 || n.count("/v2/pipeline/runs") > 1 {
				t.Errorf("one reason per cause, and no more calls once the database is known down: %v", r.Err)
			}
			noSecrets(t, r.Err)
		})
	}
}

// A node that does not answer gives one reason, not one per endpoint.
func TestChainlinkDeadNodeOneReason(t *testing.T) {
	srv := newServer(t, healthyChainlink(t))
	url := srv.URL
	srv.Close()
	r := runProbe(t, NewHTTPClient(), Target{Name: "cl", Kind: Chainlink, URL: url, APIKey: testAPIKey, APISecret: testAPISecret})
	wantErr(t, r.Err, "GET /health:", "connection refused")
	if strings.Count(r.Err.Error(), "connection refused") != 1 {
		t.Errorf("want one reason, got %v", r.Err)
	}
}

// The authenticated checks run at their own cadence; in between, their last results are reused with their age.
func TestChainlinkAuthCadence(t *testing.T) {
	n := healthyChainlink(t)
	srv := newServer(t, n)
	client := NewHTTPClient()
	clk := fakes.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	tg := Target{Name: "cl", Kind: Chainlink, URL: srv.URL, APIKey: testAPIKey, APISecret: testAPISecret,
		AuthEvery: time.Minute, Session: NewChainlinkSession(clk)}

	r := runProbe(t, client, tg)
	noErr(t, r)
	if n.count("/v2/keys/evm") != 1 || r.AuthAge != 0 {
		t.Fatalf("first probe: %d keys calls, auth age %s", n.count("/v2/keys/evm"), r.AuthAge)
	}
	clk.Advance(30 * time.Second)
	n.mu.Lock()
	n.health, n.healthStatus = failingChecks, http.StatusMultiStatus
	n.mu.Unlock()
	r = runProbe(t, client, tg)
	if n.count("/v2/keys/evm") != 1 || n.count("/v2/pipeline/runs") != 1 {
		t.Errorf("authenticated checks ran again within auth_checks_interval: keys %d runs %d",
			n.count("/v2/keys/evm"), n.count("/v2/pipeline/runs"))
	}
	if len(r.FailingChecks) != 2 {
		t.Errorf("/health is checked every probe: %+v", r.FailingChecks)
	}
	if len(r.Wallets) != 3 || !r.RunsChecked || r.Version != "2.23.0" || r.AuthAge != 30*time.Second {
		t.Errorf("reused results: wallets %d runs %v version %q age %s", len(r.Wallets), r.RunsChecked, r.Version, r.AuthAge)
	}
	clk.Advance(30 * time.Second)
	r = runProbe(t, client, tg)
	if n.count("/v2/keys/evm") != 2 || r.AuthAge != 0 {
		t.Errorf("after the interval: keys calls %d, age %s", n.count("/v2/keys/evm"), r.AuthAge)
	}

	// A failure is not reused: the next probe tries again.
	n.mu.Lock()
	n.dbDown = true
	n.mu.Unlock()
	clk.Advance(time.Minute)
	wantErr(t, runProbe(t, client, tg).Err, "database unreachable")
	clk.Advance(time.Second)
	n.mu.Lock()
	n.dbDown = false
	n.mu.Unlock()
	r = runProbe(t, client, tg)
	if r.Err != nil || n.count("/v2/keys/evm") != 4 {
		t.Errorf("after a failure: err %v, keys calls %d, want 4", r.Err, n.count("/v2/keys/evm"))
	}
}
