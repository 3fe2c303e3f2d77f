package probe

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	jsonrpcclient "github.com/cometbft/cometbft/rpc/jsonrpc/client"
	rpctypes "github.com/cometbft/cometbft/rpc/jsonrpc/types"
)

// cometClients caches the JSON-RPC client of each CometBFT node by clientKey (see ethClients).
var cometClients sync.Map

func cometClient(hc *http.Client, rawURL string) (*jsonrpcclient.Client, error) {
	key := clientKey{rawURL, hc}
	if c, ok := cometClients.Load(key); ok {
		return c.(*jsonrpcclient.Client), nil
	}
	c, err := jsonrpcclient.NewWithHTTPClient(rawURL, hc)
	if err != nil {
		return nil, fmt.Errorf("rpc client: %w", tidy(err))
	}
	prev, _ := cometClients.LoadOrStore(key, c)
	return prev.(*jsonrpcclient.Client), nil
}

// cometStatus is the part of /status a probe needs. It is decoded by CometBFT's own JSON codec (int64 as strings,
// UTC times) but leaves out validator_info: its pub_key is a typed value that CometBFT only decodes for the key
// types it registers, and Tendermint forks such as IRITA report others ("tendermint/PubKeySm2").
type cometStatus struct {
	NodeInfo struct {
		Network string `json:"network"`
		Version string `json:"version"`
	} `json:"node_info"`
	SyncInfo struct {
		LatestBlockHash   string     `json:"latest_block_hash"`
		LatestBlockHeight *int64     `json:"latest_block_height"`
		LatestBlockTime   *time.Time `json:"latest_block_time"`
		CatchingUp        *bool      `json:"catching_up"`
	} `json:"sync_info"`
}

// cometNetInfo is the part of /net_info a probe needs (the peer list itself can be large).
type cometNetInfo struct {
	NPeers *int64 `json:"n_peers"`
}

// probeCometBFT asks a CometBFT (or Tendermint v0.34 fork, e.g. IRITA) node for its status and peer count through
// CometBFT's JSON-RPC client: status, then net_info, on one keep-alive connection.
func probeCometBFT(ctx context.Context, hc *http.Client, t Target) Result {
	r := Result{Client: "cometbft"}
	c, err := cometClient(hc, t.URL)
	if err != nil {
		r.Err = err
		return r
	}

	var st cometStatus
	if err := cometCall(ctx, c, "status", &st); err != nil {
		r.Err = err
		return r
	}
	si := &st.SyncInfo
	var errs [2]error
	switch {
	case st.NodeInfo.Network == "":
		errs[0] = errors.New("status: node_info.network missing")
	case si.LatestBlockHeight == nil:
		errs[0] = errors.New("status: sync_info.latest_block_height missing")
	case *si.LatestBlockHeight < 0:
		errs[0] = fmt.Errorf("status: sync_info.latest_block_height %d is negative", *si.LatestBlockHeight)
	case si.LatestBlockTime == nil:
		errs[0] = errors.New("status: sync_info.latest_block_time missing")
	case si.CatchingUp == nil:
		errs[0] = errors.New("status: sync_info.catching_up missing")
	}

	var ni cometNetInfo
	if err := cometCall(ctx, c, "net_info", &ni); err != nil {
		errs[1] = err
	} else if ni.NPeers == nil || *ni.NPeers < 0 {
		errs[1] = errors.New("net_info: n_peers missing")
	}
	if err := joinErrors(errs[:]...); err != nil {
		r.Err = err
		return r
	}

	r.Height = uint64(*si.LatestBlockHeight)
	r.HasHeight = true
	r.BlockTime = *si.LatestBlockTime
	r.Hash = ParseHash(si.LatestBlockHash)
	r.Syncing = *si.CatchingUp
	r.ChainID = clip(st.NodeInfo.Network, 128)
	r.Version = clip(st.NodeInfo.Version, 128)
	r.Peers = uint64(*ni.NPeers)
	return r
}

// cometCall calls method through CometBFT's client, decoding the answer into result. The client's decoder panics on
// some answers: a body of `null` makes RPCResponse.UnmarshalJSON dereference the nil pointer encoding/json leaves
// for it (cometbft v0.38.19; found by FuzzCometBFT). Such a panic becomes an error here: an answer from the network
// must never take the agent down.
func cometCall(ctx context.Context, c *jsonrpcclient.Client, method string, result any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s: the cometbft client could not decode the answer: %v", method, p)
		}
	}()
	if _, err := c.Call(ctx, method, nil, result); err != nil {
		return cometCallError(method, err)
	}
	return nil
}

// cometCallError names the call and, for a JSON-RPC error object, says so without the client's HTTP preamble.
func cometCallError(method string, err error) error {
	var re *rpctypes.RPCError
	if errors.As(err, &re) {
		msg := re.Message
		if re.Data != "" {
			msg += ": " + re.Data
		}
		return fmt.Errorf("%s: json-rpc error %d: %s", method, re.Code, clip(msg, 256))
	}
	return fmt.Errorf("%s: %w", method, tidy(err))
}

// cometBlockchain is the part of /blockchain a hash lookup needs.
type cometBlockchain struct {
	BlockMetas []struct {
		BlockID struct {
			Hash string `json:"hash"`
		} `json:"block_id"`
		Header struct {
			Height *int64 `json:"height"`
		} `json:"header"`
	} `json:"block_metas"`
}

// cometBlockHashes asks a CometBFT node for the hashes of blocks by height: one /blockchain call for the range the
// heights span when it is short (the node answers at most 20 block metas), else one call per height.
func cometBlockHashes(ctx context.Context, hc *http.Client, t Target, heights []uint64) ([]Hash, error) {
	c, err := cometClient(hc, t.URL)
	if err != nil {
		return nil, err
	}
	out := make([]Hash, len(heights))
	if len(heights) == 0 {
		return out, nil
	}
	lo, hi := heights[0], heights[0]
	for _, h := range heights {
		lo, hi = min(lo, h), max(hi, h)
	}
	ranges := [][2]uint64{{lo, hi}}
	if hi-lo >= 20 {
		ranges = ranges[:0]
		for _, h := range heights {
			ranges = append(ranges, [2]uint64{h, h})
		}
	}
	found := map[uint64]Hash{}
	for _, r := range ranges {
		var bc cometBlockchain
		params := map[string]any{"minHeight": int64(r[0]), "maxHeight": int64(r[1])}
		if _, err := c.Call(ctx, "blockchain", params, &bc); err != nil {
			return nil, cometCallError("blockchain", err)
		}
		for _, m := range bc.BlockMetas {
			if m.Header.Height != nil && *m.Header.Height > 0 {
				found[uint64(*m.Header.Height)] = ParseHash(m.BlockID.Hash)
			}
		}
	}
	for i, h := range heights {
		out[i] = found[h]
	}
	return out, nil
}
