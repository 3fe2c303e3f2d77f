package probe

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

const (
	testAPIKey    = "0c7a1d2f5e8b4a3c9d6e1f2a3b4c5d6e"
	testAPISecret = "s3cr3t-Zq8xW2vY7uT6rS5pO4nM3lK2jH1g"
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
		fe, all := `[null]`, `[null]`
		if f != "" {
			fe = fmt.Sprintf(`[%q]`, f)
			all = fmt.Sprintf(`[null,%q]`, f)
		}
		runs = append(runs, fmt.Sprintf(`{"type":"pipelineRun","id":"%d","attributes":{"outputs":[null],`+
			`"errors":%s,"allErrors":%s,"fatalErrors":%s,"inputs":{},"taskRuns":[{"type":"http","createdAt":`+
			`"2024-03-14T10:00:00Z","finishedAt":"2024-03-14T10:00:01Z","output":null,"error":%s,"dotId":"fetch"}],`+
			`"createdAt":"2024-03-14T10:00:00Z","finishedAt":"2024-03-14T10:00:01Z","pipelineSpec":{"id":"1",`+
			`"jobID":"3","dotDagSource":"fetch [type=http]"}}}`, 100-i, fe, all, fe, strings.Trim(fe, "[]")))
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
}

func (n *chainlinkNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	write := func(status int, body string) {
		w.Header().Set("Content-Type", "application/vnd.api+json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
	if r.URL.Path == "/health" {
		write(n.healthStatus, n.health)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/v2/") {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("X-API-KEY") != testAPIKey || r.Header.Get("X-API-SECRET") != testAPISecret {
		write(http.StatusUnauthorized, `{"errors":[{"detail":"Authentication failed"}]}`)
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
			runs: pipelineRunsJSON("", "", ""), buildInfo: `{"version":"2.10.0","commitSHA":"b4c2e61f"}`}
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
			wantErr(t, r.Err, "GET /health: HTTP 207, 2 failing check(s): EVM.1.HeadTracker "+
				"(waiting for new heads: no new heads received for 3m0s), Mercury.WSRPCPool (connection refused)")
			if strings.Join(r.FailingChecks, ",") != "EVM.1.HeadTracker,Mercury.WSRPCPool" {
				t.Errorf("FailingChecks %q", r.FailingChecks)
			}
			if len(r.Wallets) != 3 || !r.RunsChecked {
				t.Error("an unhealthy node's wallets and runs should still be read")
			}
		}},
		{name: "503 with failing checks (older versions)", noAuth: true, node: func(n *chainlinkNode) {
			n.healthStatus, n.health = http.StatusServiceUnavailable, failingChecks
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "GET /health: HTTP 503, 2 failing check(s)")
			if len(r.FailingChecks) != 2 {
				t.Errorf("FailingChecks %q", r.FailingChecks)
			}
		}},
		{name: "200 that lists a failing check is not healthy", noAuth: true, node: func(n *chainlinkNode) {
			n.health = failingChecks
		}, check: func(t *testing.T, r Result) { wantErr(t, r.Err, "GET /health: HTTP 200, 2 failing check(s)") }},
		{name: "503 without checks", noAuth: true, node: func(n *chainlinkNode) {
			n.healthStatus, n.health = http.StatusServiceUnavailable, `{"data":[]}`
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "GET /health: HTTP 503 without a failing check listed")
		}},
		{name: "long check output is truncated", noAuth: true, node: func(n *chainlinkNode) {
			n.healthStatus = http.StatusMultiStatus
			n.health = `{"data":[` + chainlinkCheckJSON("EVM.1.Txm", "failing", strings.Repeat("nonce too low ", 500)) + `]}`
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "EVM.1.Txm (nonce too low", "...(truncated)")
			if len(r.Err.Error()) > 2*maxErrText {
				t.Errorf("error is %d bytes", len(r.Err.Error()))
			}
		}},
		{name: "non-JSON health body", noAuth: true, node: func(n *chainlinkNode) {
			n.health = "<!doctype html><title>Operator UI</title>"
		}, check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "GET /health: HTTP 200: body is not the expected JSON: invalid character '<'")
		}},
		{name: "refused credentials (401)", secret: "wrong-secret-value", check: func(t *testing.T, r Result) {
			wantErr(t, r.Err, "GET /v2/keys/evm: HTTP 401: API credentials refused")
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
