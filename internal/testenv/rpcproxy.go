package testenv

import (
	"bytes"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// RPCEdit rewrites the result of one JSON-RPC call (method, its params) on its way back to the client; it returns
// the result unchanged for calls it leaves alone.
type RPCEdit func(method string, params json.RawMessage, result json.RawMessage) json.RawMessage

// RPCProxy is a JSON-RPC 2.0 proxy in front of a real node (Ethereum or CometBFT, single calls and batches over
// HTTP POST) that rewrites answers with edit: a node that lies, in front of one that doesn't. It returns the proxy's
// URL; the proxy stops when the test ends.
func RPCProxy(t testing.TB, upstream string, edit RPCEdit) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), r.Method, upstream+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		answer, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		if r.Method == http.MethodPost && resp.StatusCode == http.StatusOK {
			answer = rewrite(body, answer, edit)
		}
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(answer)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type rpcCall struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
}

// rewrite applies edit to every result of answer, matching each to its call in body by id.
func rewrite(body, answer []byte, edit RPCEdit) []byte {
	var calls []rpcCall
	batch := bytes.HasPrefix(bytes.TrimSpace(body), []byte("["))
	if batch {
		_ = json.Unmarshal(body, &calls)
	} else {
		var c rpcCall
		_ = json.Unmarshal(body, &c)
		calls = []rpcCall{c}
	}
	byID := map[string]rpcCall{}
	for _, c := range calls {
		byID[string(c.ID)] = c
	}
	var resps []map[string]json.RawMessage
	if batch {
		if json.Unmarshal(answer, &resps) != nil {
			return answer
		}
	} else {
		var one map[string]json.RawMessage
		if json.Unmarshal(answer, &one) != nil {
			return answer
		}
		resps = []map[string]json.RawMessage{one}
	}
	for _, r := range resps {
		c, ok := byID[string(r["id"])]
		if res, has := r["result"]; ok && has {
			r["result"] = edit(c.Method, c.Params, res)
		}
	}
	var out []byte
	if batch {
		out, _ = json.Marshal(resps)
	} else {
		out, _ = json.Marshal(resps[0])
	}
	return out
}

// InflateEthereumHeights is an RPCEdit that adds by to the height an Ethereum node reports (eth_blockNumber and
// the latest block's number) and leaves blocks asked for by number alone: a node that lies about its head.
func InflateEthereumHeights(by uint64) RPCEdit {
	return func(method string, params, result json.RawMessage) json.RawMessage {
		switch {
		case method == "eth_blockNumber":
			return addHex(result, by)
		case method == "eth_getBlockByNumber" && strings.Contains(string(params), `"latest"`):
			var b map[string]json.RawMessage
			if json.Unmarshal(result, &b) != nil || b["number"] == nil {
				return result
			}
			b["number"] = addHex(b["number"], by)
			out, _ := json.Marshal(b)
			return out
		}
		return result
	}
}

// FreezeFinalized is an RPCEdit that answers eth_getBlockByNumber("finalized") with the first finalized block it
// saw at or after height from, forever: a node whose finalized block stalls.
func FreezeFinalized(from uint64) RPCEdit {
	var mu sync.Mutex
	var frozen json.RawMessage
	return func(method string, params, result json.RawMessage) json.RawMessage {
		if method != "eth_getBlockByNumber" || !strings.Contains(string(params), `"finalized"`) {
			return result
		}
		mu.Lock()
		defer mu.Unlock()
		if frozen != nil {
			return frozen
		}
		var b struct {
			Number string `json:"number"`
		}
		if json.Unmarshal(result, &b) == nil {
			if n, err := strconv.ParseUint(strings.TrimPrefix(b.Number, "0x"), 16, 64); err == nil && n >= from {
				frozen = result
			}
		}
		return result
	}
}

// InflateCometHeights is an RPCEdit that adds by to the height a CometBFT node reports in /status.
func InflateCometHeights(by int64) RPCEdit {
	return func(method string, params, result json.RawMessage) json.RawMessage {
		if method != "status" {
			return result
		}
		var st map[string]json.RawMessage
		var si map[string]json.RawMessage
		if json.Unmarshal(result, &st) != nil || json.Unmarshal(st["sync_info"], &si) != nil {
			return result
		}
		var h string
		if json.Unmarshal(si["latest_block_height"], &h) != nil {
			return result
		}
		n, err := strconv.ParseInt(h, 10, 64)
		if err != nil {
			return result
		}
		si["latest_block_height"], _ = json.Marshal(strconv.FormatInt(n+by, 10))
		st["sync_info"], _ = json.Marshal(si)
		out, _ := json.Marshal(st)
		return out
	}
}

func addHex(q json.RawMessage, by uint64) json.RawMessage {
	var s string
	if json.Unmarshal(q, &s) != nil {
		return q
	}
	n, ok := new(big.Int).SetString(strings.TrimPrefix(s, "0x"), 16)
	if !ok {
		return q
	}
	out, _ := json.Marshal("0x" + n.Add(n, new(big.Int).SetUint64(by)).Text(16))
	return out
}
