package probe_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// probeOnce runs one probe with a deadline, as the agent does.
func probeOnce(client *http.Client, tg probe.Target) probe.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return probe.Run(ctx, client, tg)
}

// waitAdvance probes until the height is above first.Height, checking every answer on the way.
func waitAdvance(t *testing.T, client *http.Client, tg probe.Target, first probe.Result, check func(probe.Result) error) probe.Result {
	t.Helper()
	var last probe.Result
	testenv.Eventually(t, 30*time.Second, "the height to advance past "+strconv.FormatUint(first.Height, 10), func() error {
		last = probeOnce(client, tg)
		if last.Err != nil {
			return last.Err
		}
		if err := check(last); err != nil {
			t.Fatalf("second probe: %v (%+v)", err, last)
		}
		if last.Height <= first.Height {
			return fmt.Errorf("height still %d", last.Height)
		}
		return nil
	})
	return last
}

// TestIntegrationGeth probes a real geth v1.16 in --dev mode (chain id 1337, a block a second).
func TestIntegrationGeth(t *testing.T) {
	bin := testenv.Bin(t, "geth")
	port := testenv.FreePort(t)
	p := testenv.Start(t, "geth", bin, "--dev", "--dev.period", "1", "--datadir", t.TempDir(), "--ipcdisable",
		"--http", "--http.addr", "127.0.0.1", "--http.port", strconv.Itoa(port), "--http.api", "eth,net,web3",
		"--port", "0", "--authrpc.port", strconv.Itoa(testenv.FreePort(t)), "--nodiscover", "--verbosity", "2")
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.WaitHTTP(t, p, url, 60*time.Second)

	client := probe.NewHTTPClient()
	tg := probe.Target{Name: "geth-dev", Kind: "ethereum", URL: url, Finality: true}
	check := func(r probe.Result) error {
		switch {
		case r.Hash.IsZero() || r.ParentHash.IsZero():
			return fmt.Errorf("hash %s parent %s", r.Hash, r.ParentHash)
		case !r.HasFinalized || r.Finalized > r.Height: // geth --dev finalizes every 32nd block, block 0 at first
			return fmt.Errorf("finalized %d (%v) at height %d", r.Finalized, r.HasFinalized, r.Height)
		case !r.HasSafe || r.Safe < r.Finalized || r.Safe > r.Height: // geth --dev's safe block is its head
			return fmt.Errorf("safe %d (%v), finalized %d, at height %d", r.Safe, r.HasSafe, r.Finalized, r.Height)
		case r.ChainID != "1337":
			return fmt.Errorf("chain id %q, want 1337", r.ChainID)
		case r.Client != "geth" || !strings.HasPrefix(r.Version, "Geth/v1.16.7"):
			return fmt.Errorf("client %q version %q", r.Client, r.Version)
		case !r.HasHeight:
			return errors.New("no height")
		case r.Height > 0 && time.Since(r.BlockTime) > time.Minute:
			return fmt.Errorf("latest block time %v is old", r.BlockTime)
		}
		return nil
	}
	// Just after it starts, geth can answer eth_syncing with a progress object (seen here once in five runs, at
	// height 1): wait for it to report itself synced.
	var first probe.Result
	testenv.Eventually(t, 30*time.Second, "a probe of a synced node", func() error {
		first = probeOnce(client, tg)
		if first.Err == nil && first.Syncing {
			return fmt.Errorf("syncing at height %d", first.Height)
		}
		if first.Err == nil && first.Height == 0 { // the genesis block has no parent to check
			return fmt.Errorf("at the genesis block")
		}
		return first.Err
	})
	if err := check(first); err != nil {
		t.Fatalf("first probe: %v (%+v)", err, first)
	}
	last := waitAdvance(t, client, tg, first, check)
	// Blocks by number: the parent of the last head, and the first head, are the blocks the probes saw.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	hs, err := probe.BlockHashes(ctx, client, tg, []uint64{last.Height - 1, first.Height, last.Height + 1000})
	if err != nil || hs[0] != last.ParentHash || hs[1] != first.Hash || !hs[2].IsZero() {
		t.Fatalf("block hashes %v (%v), want %s %s and none", hs, err, last.ParentHash, first.Hash)
	}
	t.Logf("geth: height %d -> %d, peers %d, %s, finalized %d, probe took %s", first.Height, last.Height, last.Peers,
		last.Version, last.Finalized, last.Duration)
}

// TestIntegrationCometBFT probes a real single-validator CometBFT v0.38 running the kvstore app.
func TestIntegrationCometBFT(t *testing.T) {
	bin := testenv.Bin(t, "cometbft")
	home := t.TempDir()
	testenv.Run(t, bin, "init", "--home", home, "--log_level", "error")
	genesis, err := os.ReadFile(filepath.Join(home, "config", "genesis.json"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		ChainID string `json:"chain_id"`
	}
	if err := json.Unmarshal(genesis, &g); err != nil || g.ChainID == "" {
		t.Fatalf("genesis chain_id: %v %q", err, g.ChainID)
	}
	rpcPort := testenv.FreePort(t)
	p := testenv.Start(t, "cometbft", bin, "start", "--home", home, "--proxy_app=kvstore", "--log_level", "error",
		"--rpc.laddr", fmt.Sprintf("tcp://127.0.0.1:%d", rpcPort),
		"--p2p.laddr", fmt.Sprintf("tcp://127.0.0.1:%d", testenv.FreePort(t)))
	url := fmt.Sprintf("http://127.0.0.1:%d", rpcPort)
	testenv.WaitHTTP(t, p, url+"/health", 60*time.Second)

	client := probe.NewHTTPClient()
	tg := probe.Target{Name: "cometbft-0", Kind: "cometbft", URL: url}
	check := func(r probe.Result) error {
		switch {
		case r.ChainID != g.ChainID:
			return fmt.Errorf("chain id %q, want %q", r.ChainID, g.ChainID)
		case r.Client != "cometbft" || r.Version != "0.38.19":
			return fmt.Errorf("client %q version %q", r.Client, r.Version)
		case !r.HasHeight || r.Syncing:
			return fmt.Errorf("HasHeight %v Syncing %v", r.HasHeight, r.Syncing)
		case r.Peers != 0:
			return fmt.Errorf("peers %d, a lone validator has none", r.Peers)
		case r.Hash.IsZero():
			return errors.New("no block hash")
		case r.Height > 0 && time.Since(r.BlockTime) > time.Minute:
			return fmt.Errorf("latest block time %v is old", r.BlockTime)
		}
		return nil
	}
	var first probe.Result
	testenv.Eventually(t, 30*time.Second, "a first block", func() error {
		first = probeOnce(client, tg)
		if first.Err == nil && first.Height == 0 {
			return errors.New("no block yet")
		}
		return first.Err
	})
	if err := check(first); err != nil {
		t.Fatalf("first probe: %v (%+v)", err, first)
	}
	last := waitAdvance(t, client, tg, first, check)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	hs, err := probe.BlockHashes(ctx, client, tg, []uint64{first.Height, last.Height})
	if err != nil || hs[0] != first.Hash || hs[1] != last.Hash {
		t.Fatalf("block hashes %v (%v), want %s %s", hs, err, first.Hash, last.Hash)
	}
	t.Logf("cometbft: chain %s height %d -> %d, probe took %s", last.ChainID, first.Height, last.Height, last.Duration)
}
