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
