package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// ChainlinkAPIEmail is the test Chainlink nodes' API user.
const ChainlinkAPIEmail = "ops@chainwarden.test"

// Passwords of the test Chainlink nodes and their databases: made for each test run, never written in the repo.
var (
	ChainlinkAPIPassword = NewPassword()
	chainlinkKeystorePW  = NewPassword()
)

// NewPassword makes a random password that Chainlink accepts for its API user and its keystore: 16+ characters
// with at least three each of upper- and lower-case letters, digits and symbols, and no character four times in a
// row.
func NewPassword() string {
	for {
		t := rand.Text() // 26 characters of A-Z and 2-7
		pw := "Cw#1" + t[:10] + "-x2!" + strings.ToLower(t[10:20]) + "$Q3" + t[20:]
		if !repeats(pw, 4) {
			return pw
		}
	}
}

// repeats says whether some character of s stands n times in a row.
func repeats(s string, n int) bool {
	run := 1
	for i := 1; i < len(s); i++ {
		if s[i] == s[i-1] {
			if run++; run >= n {
				return true
			}
		} else {
			run = 1
		}
	}
	return false
}

// GethWS is a `geth --dev --dev.period 1` with HTTP and WebSocket RPC, which a Chainlink node needs (chain 1337).
type GethWS struct {
	Proc     *Process
	HTTP, WS string
	args     []string
	bin, log string
	t        testing.TB
}

// StartGethWS starts a dev geth with HTTP and WS on free ports of 127.0.0.1.
func StartGethWS(t testing.TB, name string) *GethWS {
	t.Helper()
	bin := Bin(t, "geth")
	dir := t.TempDir()
	httpPort, wsPort, authPort := FreePort(t), FreePort(t), FreePort(t)
	g := &GethWS{bin: bin, log: dir, t: t,
		HTTP: fmt.Sprintf("http://127.0.0.1:%d", httpPort), WS: fmt.Sprintf("ws://127.0.0.1:%d", wsPort)}
	g.args = []string{"--dev", "--dev.period", "1", "--datadir", filepath.Join(dir, "data"), "--ipcdisable",
		"--nodiscover", "--port", "0", "--authrpc.port", strconv.Itoa(authPort),
		"--http", "--http.addr", "127.0.0.1", "--http.port", strconv.Itoa(httpPort), "--http.api", "eth,net,web3",
		"--ws", "--ws.addr", "127.0.0.1", "--ws.port", strconv.Itoa(wsPort), "--ws.api", "eth,net,web3",
		"--verbosity", "2"}
	g.Start()
	return g
}

// Start runs geth (again) on its data dir and ports and waits for its HTTP RPC.
func (g *GethWS) Start() {
	g.t.Helper()
	p, err := devnet.Start(g.log, "", nil, "geth", g.bin, g.args...)
	if err != nil {
		g.t.Fatal(err)
	}
	track(g.t, p)
	g.Proc = p
	Eventually(g.t, 60*time.Second, "geth rpc", func() error {
		var n string
		return g.Call(&n, "eth_blockNumber")
	})
}

// Stop kills geth; its chain stays on disk.
func (g *GethWS) Stop() { g.Proc.Kill() }

// Call makes one JSON-RPC call over HTTP.
func (g *GethWS) Call(result any, method string, params ...any) error {
	if params == nil {
		params = []any{}
	}
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.HTTP, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if out.Error != nil {
		return fmt.Errorf("%s: %s", method, out.Error.Message)
	}
	return json.Unmarshal(out.Result, result)
}

// Fund sends wei from geth's prefunded dev account to address.
func (g *GethWS) Fund(address string, wei uint64) {
	g.t.Helper()
	var accounts []string
	if err := g.Call(&accounts, "eth_accounts"); err != nil || len(accounts) == 0 {
		g.t.Fatalf("dev account: %v %v", accounts, err)
	}
	var tx string
	if err := g.Call(&tx, "eth_sendTransaction", map[string]string{"from": accounts[0], "to": address,
		"value": "0x" + strconv.FormatUint(wei, 16)}); err != nil {
		g.t.Fatal(err)
	}
}

// Chainlink is a real Chainlink node (the `chainlink` binary make deps builds) for one test, on a database of a
// private Postgres and an EVM chain of a dev geth.
type Chainlink struct {
	Name    string
	URL     string // http://127.0.0.1:PORT
	Proc    *Process
	Dir     string // RootDir, config, secrets and the API credentials file (0600), removed with the test
	APIFile string // email and password, one a line, as the node's .api file
	Boot    time.Duration
	bin     string
	t       testing.TB
}

// ChainlinkOptions tune a node.
type ChainlinkOptions struct {
	Name        string // default "chainlink"
	DatabaseURL string // required
	Geth        *GethWS
	// LeaseDuration of the database lock (the active/standby pair): default Chainlink's.
	LeaseDuration time.Duration
	// NoWait returns without waiting for /health (a standby waiting on the lock does not serve).
	NoWait bool
	// NoLock runs without the database lease lock (Database.Lock.Enabled = false). With the lock, a node whose
	// database goes away loses its lease and exits; without it, it keeps serving and answers 401 with the dial error.
	NoLock bool
}

// StartChainlink writes config.toml and secrets.toml (0600) in a temp dir and runs
// `chainlink node -c config.toml -s secrets.toml start -a apicredentials`, waiting for /health to answer.
func StartChainlink(t testing.TB, o ChainlinkOptions) *Chainlink {
	t.Helper()
	bin := Bin(t, "chainlink")
	if o.Name == "" {
		o.Name = "chainlink"
	}
	dir, err := os.MkdirTemp("", "chainwarden-cl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	port := FreePort(t)
	lock := ""
	if o.NoLock {
		lock = "\n[Database.Lock]\nEnabled = false\n"
	}
	if o.LeaseDuration > 0 {
		lock = fmt.Sprintf("\n[Database.Lock]\nLeaseDuration = '%s'\nLeaseRefreshInterval = '%s'\n",
			o.LeaseDuration, o.LeaseDuration/4)
	}
	config := fmt.Sprintf(`RootDir = '%s'

[Log]
Level = 'warn'

[WebServer]
HTTPPort = %d
ListenIP = '127.0.0.1'
SecureCookies = false
SessionTimeout = '15m'

[WebServer.TLS]
HTTPSPort = 0

[P2P.V2]
Enabled = false
%s
[[EVM]]
ChainID = '1337'
FinalityDepth = 1
MinIncomingConfirmations = 1

[[EVM.Nodes]]
Name = 'geth'
WSURL = '%s'
HTTPURL = '%s'
`, filepath.Join(dir, "root"), port, lock, o.Geth.WS, o.Geth.HTTP)
	secrets := fmt.Sprintf("[Database]\nURL = '%s'\n\n[Password]\nKeystore = '%s'\n", o.DatabaseURL, chainlinkKeystorePW)
	cl := &Chainlink{Name: o.Name, URL: fmt.Sprintf("http://127.0.0.1:%d", port), Dir: dir, bin: bin, t: t,
		APIFile: filepath.Join(dir, ".api")}
	for name, body := range map[string]string{"config.toml": config, "secrets.toml": secrets,
		".api": ChainlinkAPIEmail + "\n" + ChainlinkAPIPassword + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cl.Start(o.NoWait)
	return cl
}

// Start runs the node and, unless noWait, waits for /health (it migrates the database first), recording how long
// that took in Boot.
func (cl *Chainlink) Start(noWait bool) {
	cl.t.Helper()
	start := time.Now()
	p, err := devnet.Start(cl.Dir, cl.Dir, nil, cl.Name, cl.bin, "node", "-c", "config.toml", "-s", "secrets.toml",
		"start", "-a", ".api")
	if err != nil {
		cl.t.Fatal(err)
	}
	track(cl.t, p)
	cl.Proc = p
	if noWait {
		return
	}
	cl.WaitServing(3 * time.Minute)
	cl.Boot = time.Since(start)
}

// WaitServing waits until /health answers with its list of checks (while it migrates the database, the node
// already answers other requests with 404).
func (cl *Chainlink) WaitServing(timeout time.Duration) {
	cl.t.Helper()
	if err := devnet.Poll(context.Background(), timeout, cl.Name+" /health", cl.Proc, func() error {
		resp, err := http.Get(cl.URL + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var doc struct {
			Data []json.RawMessage `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || len(doc.Data) == 0 {
			return fmt.Errorf("GET /health: HTTP %d, no checks yet", resp.StatusCode)
		}
		return nil
	}); err != nil {
		cl.t.Fatal(err)
	}
}

// Kill kills the node (SIGKILL: no clean shutdown, the database lock stays until its lease runs out).
func (cl *Chainlink) Kill() { cl.Proc.Kill() }

// API is a logged-in client of the node's API (session cookie), for test setup: tokens, keys, jobs.
type ChainlinkAPI struct {
	cl *Chainlink
	hc *http.Client
}

// Login logs in with the API email and password.
func (cl *Chainlink) Login() *ChainlinkAPI {
	cl.t.Helper()
	jar, _ := cookiejar.New(nil)
	api := &ChainlinkAPI{cl: cl, hc: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
	api.Do(http.MethodPost, "/sessions", map[string]string{"email": ChainlinkAPIEmail, "password": ChainlinkAPIPassword}, nil)
	return api
}

// Do sends a JSON request and decodes a 2xx answer into out (may be nil); any other status fails the test.
func (api *ChainlinkAPI) Do(method, path string, in, out any) {
	api.cl.t.Helper()
	var body []byte
	if in != nil {
		body, _ = json.Marshal(in)
	}
	req, _ := http.NewRequest(method, api.cl.URL+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := api.hc.Do(req)
	if err != nil {
		api.cl.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	_ = json.NewDecoder(resp.Body).Decode(&raw)
	if resp.StatusCode/100 != 2 {
		api.cl.t.Fatalf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			api.cl.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
}

// Token makes a user token (POST /v2/user/token) for the X-API-KEY/X-API-SECRET headers.
func (api *ChainlinkAPI) Token() (key, secret string) {
	api.cl.t.Helper()
	var doc struct {
		Data struct {
			Attributes struct {
				AccessKey string `json:"accessKey"`
				Secret    string `json:"secret"`
			} `json:"attributes"`
		} `json:"data"`
	}
	api.Do(http.MethodPost, "/v2/user/token", map[string]string{"password": ChainlinkAPIPassword}, &doc)
	return doc.Data.Attributes.AccessKey, doc.Data.Attributes.Secret
}

// EVMKeys lists the node's EVM key addresses.
func (api *ChainlinkAPI) EVMKeys() []string {
	api.cl.t.Helper()
	var doc struct {
		Data []struct {
			Attributes struct {
				Address string `json:"address"`
			} `json:"attributes"`
		} `json:"data"`
	}
	api.Do(http.MethodGet, "/v2/keys/evm", nil, &doc)
	var out []string
	for _, d := range doc.Data {
		out = append(out, d.Attributes.Address)
	}
	return out
}

// CreateJob creates a job from its TOML spec and returns its id.
func (api *ChainlinkAPI) CreateJob(toml string) string {
	api.cl.t.Helper()
	var doc struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	api.Do(http.MethodPost, "/v2/jobs", map[string]string{"toml": toml}, &doc)
	return doc.Data.ID
}

// DeleteJob deletes a job.
func (api *ChainlinkAPI) DeleteJob(id string) {
	api.cl.t.Helper()
	api.Do(http.MethodDelete, "/v2/jobs/"+id, nil, nil)
}
