package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The fuzz targets feed arbitrary answers to the real probers: Run, the shared capped HTTP client and the RPC
// libraries' own decoders, with a transport that answers in memory (no socket, so an iteration costs microseconds).
// Each iteration uses a fresh *http.Client, hence fresh cached RPC clients whose request ids start from the same
// number every time (go-ethereum: 1..6 in batch order; CometBFT: 0 for status, 1 for net_info), so the seeds'
// ids match and the fuzzer mutates real-shaped answers.

// fuzzURL is the node URL of every fuzz probe; the transport never dials it.
const fuzzURL = "http://node.invalid:8545"

// fuzzHangGuard is how long one probe of an in-memory answer may run before the input counts as a hang. It is a
// hang guard, not a speed target: a probe of these answers takes microseconds.
const fuzzHangGuard = 10 * time.Second

// maxCheckOutput is the size of a Consul check's output, where probe errors end up.
const maxCheckOutput = 4 << 10

// fuzzTransport answers each request with the status and body that answer picks for it.
type fuzzTransport func(req *http.Request, reqBody []byte) (status int, body []byte)

func (f fuzzTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		req.Body.Close()
	}
	status, body := f(req, reqBody)
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", status, http.StatusText(status)),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}, nil
}

// fuzzStatus maps a fuzzed number onto an HTTP status from 200 to 599 (0 is 200).
func fuzzStatus(n uint16) int { return 200 + int(n)%400 }

// fuzzProbe runs one probe of tg through answer, failing the input if the probe panics (the fuzzer's own check)
// or does not return in time. It drops the RPC clients the probe cached for its one-off HTTP client.
func fuzzProbe(t *testing.T, tg Target, answer fuzzTransport) Result {
	t.Helper()
	hc := &http.Client{Transport: capTransport{answer}}
	defer func() {
		key := clientKey{tg.URL, hc}
		ethClients.Delete(key)
		cometClients.Delete(key)
	}()
	done := make(chan Result, 1)
	go func() { done <- Run(context.Background(), hc, tg) }() // a panic here crashes the input, as it should
	guard := time.NewTimer(fuzzHangGuard)
	defer guard.Stop()
	select {
	case r := <-done:
		return r
	case <-guard.C:
		t.Fatalf("probe still running after %s on an in-memory answer", fuzzHangGuard)
		return Result{}
	}
}

// checkErrParts fails unless err is short enough for a Consul check and every error it joins says what failed:
// it starts with one of prefixes.
func checkErrParts(t *testing.T, err error, prefixes ...string) {
	t.Helper()
	if n := len(err.Error()); n > maxCheckOutput {
		t.Errorf("error is %d bytes, more than a Consul check output holds", n)
	}
	parts := []error{err}
	if j, ok := err.(*joinedError); ok {
		parts = j.errs
	}
	for _, e := range parts {
		if !hasAnyPrefix(e.Error(), prefixes) {
			t.Errorf("error %q does not say what failed (want a prefix among %q)", clip(e.Error(), 200), prefixes)
		}
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// checkFailed fails unless a failed probe reports nothing but its error (and the kind's client name).
func checkFailed(t *testing.T, r Result, client string) {
	t.Helper()
	if r.HasHeight || r.Height != 0 || r.Peers != 0 || r.ChainID != "" || r.Version != "" || r.Client != client ||
		!r.BlockTime.IsZero() {
		t.Errorf("a failed probe reports more than its error: %+v", r)
	}
}

var decimal = regexp.MustCompile(`^(0|[1-9][0-9]*)$`)

// ethBatchBody renders the answer of a geth-like node to the prober's batch: one entry per call, in order, with
// ids 1..6, from gethMembers with override applied; a member "" leaves the call out.
func ethBatchBody(override map[string]string) []byte {
	var b strings.Builder
	b.WriteByte('[')
	for i, m := range []string{"eth_blockNumber", "eth_syncing", "net_peerCount", "eth_chainId",
		"eth_getBlockByNumber", "web3_clientVersion"} {
		member, ok := override[m]
		if !ok {
			member = gethMembers[m]
		}
		if member == "" {
			continue
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"jsonrpc":"2.0","id":%d,%s}`, i+1, member)
	}
	b.WriteByte(']')
	return []byte(b.String())
}

// FuzzEthereumBatch feeds the prober arbitrary answers to its JSON-RPC batch (eth_blockNumber, eth_syncing,
// net_peerCount, eth_chainId, eth_getBlockByNumber, web3_clientVersion) under an arbitrary HTTP status.
func FuzzEthereumBatch(f *testing.F) {
	for _, o := range []map[string]string{
		nil,
		{"web3_clientVersion": `"result":"Nethermind/v1.25.4+20b10b35/linux-x64/dotnet8.0.2"`},
		// IRITA's Ethermint: net_peerCount as a JSON number and its odd client version.
		{"net_peerCount": `"result":1`, "eth_chainId": `"result":"0x4c7"`,
			"web3_clientVersion": `"result":"Version dev ()\nCompiled at  using Go go1.26.8 (amd64)"`},
		{"eth_syncing": `"result":{"currentBlock":"0x11d1b5a","healedBytecodeBytes":"0x0","highestBlock":"0x12a05f3",` +
			`"startingBlock":"0x0","syncedAccounts":"0x0","txIndexRemainingBlocks":"0x1"}`},
		{"eth_syncing": `"result":{"currentBlock":"0x12a05f3","highestBlock":"0x12a05f3","txIndexRemainingBlocks":"0x2f00"}`},
		{"eth_blockNumber": `"result":"0x0"`, "eth_getBlockByNumber": `"result":{"number":"0x0","timestamp":"0x0"}`},
		{"eth_chainId": `"result":"0xaa36a7"`, "web3_clientVersion": `"error":{"code":-32601,"message":"Method not found"}`},
		{"eth_blockNumber": `"result":"0xzz"`, "eth_syncing": `"result":null`, "eth_getBlockByNumber": `"result":null`},
		{"net_peerCount": `"error":{"code":-32601,"message":"the method net_peerCount does not exist/is not available"}`},
		{"eth_chainId": ""},
	} {
		f.Add(uint16(0), ethBatchBody(o))
	}
	f.Add(uint16(0), []byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch not supported"}}`))
	f.Add(uint16(0), []byte(`<html><body>It works!</body></html>`))
	f.Add(uint16(303), []byte("upstream connect error or disconnect/reset before headers"))
	f.Add(uint16(229), []byte(`{"jsonrpc":"2.0","error":{"code":-32005,"message":"daily request count exceeded"}}`))

	f.Fuzz(func(t *testing.T, code uint16, body []byte) {
		status := fuzzStatus(code)
		r := fuzzProbe(t, Target{Name: "n", Kind: Ethereum, URL: fuzzURL},
			func(*http.Request, []byte) (int, []byte) { return status, body })
		if r.Err != nil {
			checkFailed(t, r, "")
			checkErrParts(t, r.Err, "json-rpc batch: ", "eth_blockNumber: ", "eth_syncing: ", "net_peerCount: ",
				"eth_chainId: ", "eth_getBlockByNumber: ")
			return
		}
		if status/100 != 2 {
			t.Fatalf("HTTP %d gave a result: %+v", status, r)
		}
		if !r.HasHeight || !decimal.MatchString(r.ChainID) || len(r.Version) > 256+len("...(truncated)") {
			t.Errorf("result out of shape: %+v", r)
		}
		if name, _, _ := strings.Cut(r.Version, "/"); r.Client != "" && r.Client != strings.ToLower(name) {
			t.Errorf("client %q from version %q", r.Client, r.Version)
		}
		checkEthAgainstBody(t, r, body)
	})
}

// checkEthAgainstBody decodes the answers for height, peers, chain id and block time from body independently of
// the prober (encoding/json and hexutil, the first answer with each id, as go-ethereum matches them) and fails
// unless the probe reported those values: every answer lands in its own field, nothing is left over from an
// earlier probe (the decode buffers are pooled).
func checkEthAgainstBody(t *testing.T, r Result, body []byte) {
	t.Helper()
	var msgs []*struct {
		ID     json.RawMessage `json:"id"`
		Result json.RawMessage `json:"result"`
	}
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&msgs); err != nil {
		t.Fatalf("the prober decoded a batch that encoding/json does not: %v", err)
	}
	answer := func(id string) json.RawMessage {
		for _, m := range msgs {
			if m != nil && string(m.ID) == id {
				return m.Result
			}
		}
		t.Fatalf("the prober decoded a batch without an answer with id %s", id)
		return nil
	}
	var block ethBlock
	if err := json.Unmarshal(answer("5"), &block); err != nil {
		t.Fatalf("answer 5: the prober accepted a block that does not decode: %v", err)
	}
	height, peers, chainID := oracleQuantity(t, answer("1")), oracleQuantity(t, answer("3")), oracleQuantity(t, answer("4"))
	if !height.IsUint64() || !peers.IsUint64() || r.Height != height.Uint64() || r.Peers != peers.Uint64() ||
		r.ChainID != chainID.String() || block.Timestamp == nil || r.BlockTime.Unix() != int64(*block.Timestamp) {
		t.Errorf("probe reported height %d peers %d chain %s block time %d; the answers say %d, %d, %s, %v",
			r.Height, r.Peers, r.ChainID, r.BlockTime.Unix(), height, peers, chainID, block.Timestamp)
	}
}

// oracleQuantity decodes an Ethereum quantity as real clients write it, independently of the prober: a "0x" hex
// string (geth, and leading zeros some clients send) or a plain JSON number (Ethermint's net_peerCount).
func oracleQuantity(t *testing.T, raw json.RawMessage) *big.Int {
	t.Helper()
	var s string
	base := 10
	if err := json.Unmarshal(raw, &s); err == nil {
		if !strings.HasPrefix(s, "0x") {
			t.Fatalf("the prober accepted the quantity %q without 0x", s)
		}
		s, base = s[2:], 16
	} else {
		s = string(bytes.TrimSpace(raw))
	}
	digits := "0123456789abcdefABCDEF"[:map[int]int{10: 10, 16: 22}[base]]
	if s == "" || strings.Trim(s, digits) != "" {
		t.Fatalf("the prober accepted the quantity %s", raw)
	}
	n, _ := new(big.Int).SetString(s, base)
	return n
}

// cometAnswer wraps a CometBFT RPC result as the node sends it, with the id the client's request carries.
func cometAnswer(id int, result string) []byte {
	return []byte(`{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"result":` + result + `}`)
}

// FuzzCometBFT feeds the prober arbitrary /status and /net_info answers under an arbitrary HTTP status.
func FuzzCometBFT(f *testing.F) {
	irita := strings.NewReplacer(`"tendermint/PubKeyEd25519"`, `"tendermint/PubKeySm2"`, `"0.38.19"`, `"0.34.12"`,
		`"latest_block_height": "123456"`, `"latest_block_height": "8061032"`).Replace(cometStatusJSON)
	for _, s := range []string{
		cometStatusJSON,
		irita,
		strings.Replace(cometStatusJSON, `"catching_up": false`, `"catching_up": true`, 1),
		strings.Replace(cometStatusJSON, `"latest_block_height": "123456"`, `"latest_block_height": 123456`, 1),
		strings.Replace(cometStatusJSON, `"latest_block_height": "123456"`, `"latest_block_height": "-5"`, 1),
		strings.Replace(cometStatusJSON, `"2024-03-14T10:00:00.123456789Z"`, `"2024-03-14T10:00:00+02:00"`, 1),
		`{"node_info":{"network":"irita-hub","version":"0.38.19"}}`,
		`null`,
	} {
		f.Add(uint16(0), cometAnswer(0, s), cometAnswer(1, cometNetInfoJSON))
	}
	f.Add(uint16(0), cometAnswer(0, cometStatusJSON), cometAnswer(1, `{"listening":true,"listeners":[],"peers":[]}`))
	f.Add(uint16(0), cometAnswer(0, cometStatusJSON),
		[]byte(`{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found"}}`))
	f.Add(uint16(0), []byte(`{"jsonrpc":"2.0","id":0,"error":{"code":-32603,"message":"Internal error","data":"node is shutting down"}}`), []byte{})
	f.Add(uint16(0), cometAnswer(9999, cometStatusJSON), cometAnswer(1, cometNetInfoJSON))
	f.Add(uint16(302), []byte(`<html><h1>502 Bad Gateway</h1></html>`), []byte{})

	f.Fuzz(func(t *testing.T, code uint16, status, netInfo []byte) {
		httpStatus := fuzzStatus(code)
		r := fuzzProbe(t, Target{Name: "n", Kind: CometBFT, URL: fuzzURL},
			func(_ *http.Request, req []byte) (int, []byte) {
				if bytes.Contains(req, []byte(`"method":"net_info"`)) {
					return httpStatus, netInfo
				}
				return httpStatus, status
			})
		if r.Err != nil {
			checkFailed(t, r, "cometbft")
			checkErrParts(t, r.Err, "status: ", "net_info: ")
			return
		}
		if !r.HasHeight || r.BlockTime.Location() != time.UTC || len(r.ChainID) > 128+len("...(truncated)") {
			t.Errorf("result out of shape: %+v", r)
		}
		height, network := cometField(t, status, "sync_info", "latest_block_height"), cometField(t, status, "node_info", "network")
		peers := cometField(t, netInfo, "n_peers")
		if strconv.FormatUint(r.Height, 10) != height || strconv.FormatUint(r.Peers, 10) != peers ||
			r.ChainID != clip(network, 128) {
			t.Errorf("probe reported height %d peers %d network %q; the answers say %q, %q, %q",
				r.Height, r.Peers, r.ChainID, height, peers, network)
		}
	})
}

// cometField decodes the string at path in the result of a CometBFT answer independently of the prober
// (encoding/json, keys matched exactly as CometBFT's codec does). An int64 field is a string holding the number;
// it comes back in canonical decimal for comparison.
func cometField(t *testing.T, answer []byte, path ...string) string {
	t.Helper()
	var env struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(answer, &env); err != nil {
		t.Fatalf("the prober decoded an answer that encoding/json does not: %v", err)
	}
	raw := env.Result
	for _, key := range path {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		raw = obj[key]
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%q: the prober accepted %s: %v", path, raw, err)
	}
	if path[len(path)-1] == "network" {
		return s
	}
	// CometBFT's codec hands what is between the quotes to encoding/json, which allows surrounding whitespace.
	if n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil {
		return strconv.FormatInt(n, 10)
	}
	return s
}

// FuzzChainlink feeds the prober (with API credentials) arbitrary /health, /v2/keys/evm, /v2/pipeline/runs and
// /v2/build_info answers under arbitrary HTTP statuses.
func FuzzChainlink(f *testing.F) {
	runs := pipelineRunsJSON("", "fetch: HTTP 500 from bridge", "", "parse: no value at path $.data.price", "")
	v223Health := `{"data":[` + chainlinkCheckJSON("EVM.1337.HeadTracker.HeadListener", "failing",
		"Listener is not connected") + `,` + chainlinkCheckJSON("EVM.1337.Txm", "passing", "") + `]}`
	v223Runs := `{"data":[{"type":"pipelineRun","id":"2","attributes":{"errors":["task inputs: too many errors"],` +
		`"allErrors":["task inputs: too many errors","http: connection refused"],` +
		`"fatalErrors":["task inputs: too many errors"],"outputs":[null]}}],"meta":{"count":1}}`
	build := `{"version":"2.23.0","commitSHA":"b4c2e61f"}`
	for _, s := range []struct {
		healthCode, keysCode, runsCode uint16
		health, keys, runs, build      string
	}{
		{0, 0, 0, passingChecks, evmKeysJSON, runs, build},
		{7, 0, 0, failingChecks, evmKeysJSON, pipelineRunsJSON("", ""), ""},
		{303, 0, 0, failingChecks, `{"data":[]}`, `{"data":[]}`, build},
		{7, 0, 0, v223Health, evmKeysJSON, v223Runs, build},
		{303, 0, 0, `{"data":[]}`, evmKeysJSON, runs, build},
		{0, 201, 0, passingChecks, `{"errors":[{"detail":"Authentication failed"}]}`, runs, build},
		{0, 0, 203, passingChecks, evmKeysJSON, `{"errors":[{"detail":"Forbidden"}]}`, build},
		{0, 0, 0, "<!doctype html><title>Operator UI</title>", "Internal Server Error", `{"data":[{"attributes":{"errors":["boom"]}}]}`, `{}`},
		{0, 0, 0, passingChecks, strings.Replace(evmKeysJSON, `"1500000000000000000"`, `"1.5"`, 1), runs, build},
		{0, 0, 0, passingChecks, strings.Replace(evmKeysJSON, `"evmChainID":"137"`, `"evmChainID":137`, 1), runs, build},
	} {
		f.Add(s.healthCode, []byte(s.health), s.keysCode, []byte(s.keys), s.runsCode, []byte(s.runs), []byte(s.build))
	}

	f.Fuzz(func(t *testing.T, healthCode uint16, health []byte, keysCode uint16, keys []byte, runsCode uint16,
		runs, build []byte) {
		healthStatus, keysStatus, runsStatus := fuzzStatus(healthCode), fuzzStatus(keysCode), fuzzStatus(runsCode)
		var asked []string
		r := fuzzProbe(t, Target{Name: "n", Kind: Chainlink, URL: fuzzURL, APIKey: "k", APISecret: "s"},
			func(req *http.Request, _ []byte) (int, []byte) {
				asked = append(asked, req.URL.Path)
				switch req.URL.Path {
				case "/health":
					return healthStatus, health
				case "/v2/keys/evm":
					return keysStatus, keys
				case "/v2/pipeline/runs":
					return runsStatus, runs
				case "/v2/build_info":
					return http.StatusOK, build
				}
				if strings.HasPrefix(req.URL.Path, "/v2/jobs/") { // the name of a job whose runs failed
					return http.StatusOK, []byte(`{"data":{"type":"jobs","id":"3","attributes":{"name":"price"}}}`)
				}
				t.Errorf("unexpected request for %s", req.URL.Path)
				return http.StatusNotFound, nil
			})
		if r.Client != "chainlink" || r.HasHeight || r.Height != 0 || r.FailedRuns < 0 {
			t.Errorf("result out of shape: %+v", r)
		}
		if r.Err != nil {
			checkErrParts(t, r.Err, "GET /health: ", "GET /v2/keys/evm: ", "GET /v2/pipeline/runs: ")
		}
		refused := func(s int) bool { return s == http.StatusUnauthorized || s == http.StatusForbidden }
		askedKeys := slices.Contains(asked, "/v2/keys/evm") // only after /health answered
		askedRuns := slices.Contains(asked, "/v2/pipeline/runs")
		authErr := errors.Is(r.Err, ErrCredentialsRefused) || errors.Is(r.Err, ErrDatabaseUnreachable)
		if refused(healthStatus) || (askedKeys && refused(keysStatus)) || (askedRuns && refused(runsStatus)) {
			if !authErr {
				t.Errorf("keys HTTP %d, runs HTTP %d: error %v does not say the credentials (or the database) were refused",
					keysStatus, runsStatus, r.Err)
			}
		} else if authErr {
			t.Errorf("credentials refused without a 401 or 403: %v", r.Err)
		}
		if askedKeys && refused(keysStatus) && askedRuns {
			t.Errorf("refused credentials, then asked again: %q", asked)
		}
		// A non-200 /health is an answer when it lists the failing checks (207 now, 503 in older versions), else
		// an error naming the status.
		if healthStatus != http.StatusOK && len(r.FailingChecks) == 0 && !strings.Contains(errString(r.Err), "GET /health") {
			t.Errorf("/health HTTP %d with no failing check, but the error does not say so: %v", healthStatus, r.Err)
		}
		for _, c := range r.FailingChecks {
			if c.Name == "" || len(c.Name) > 128+len("...(truncated)") || len(c.Output) > 200+len("...(truncated)") {
				t.Errorf("failing check out of shape: %+v", c)
			}
		}
		for _, w := range r.Wallets {
			if len(w.Address) > 64+len("...(truncated)") || len(w.ChainID) > 80+len("...(truncated)") {
				t.Errorf("wallet fields not clipped: %+v", w)
			}
		}
		if len(r.Version) > 128+len("...(truncated)") {
			t.Errorf("version not clipped: %d bytes", len(r.Version))
		}
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
