package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// CometNode is one validator of a real CometBFT network.
type CometNode struct {
	Name    string
	Home    string
	RPC     string // http://127.0.0.1:PORT
	RPCPort int
	P2PPort int
	ID      string
	Proc    *Process

	t   testing.TB
	bin string
}

// CometNet is a real CometBFT network made by `cometbft testnet`, every validator on loopback ports of its own,
// running the built-in kvstore app.
type CometNet struct {
	ChainID string
	Nodes   []*CometNode
}

// StartCometNetwork starts a network of n validators (as IRITA's `irita testnet --v 4` does) and waits for blocks.
func StartCometNetwork(t testing.TB, n int) *CometNet {
	t.Helper()
	bin := Bin(t, "cometbft")
	dir := t.TempDir()
	Run(t, bin, "testnet", "--v", strconv.Itoa(n), "--o", dir, "--starting-ip", "127.0.0.1")
	net := &CometNet{}
	for i := 0; i < n; i++ {
		home := filepath.Join(dir, fmt.Sprintf("node%d", i))
		c := &CometNode{Name: fmt.Sprintf("comet-%d", i), Home: home, RPCPort: FreePort(t), P2PPort: FreePort(t), t: t, bin: bin}
		c.RPC = fmt.Sprintf("http://127.0.0.1:%d", c.RPCPort)
		c.ID = strings.TrimSpace(Run(t, bin, "show-node-id", "--home", home))
		net.Nodes = append(net.Nodes, c)
	}
	var genesis struct {
		ChainID string `json:"chain_id"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "node0", "config", "genesis.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &genesis); err != nil {
		t.Fatal(err)
	}
	net.ChainID = genesis.ChainID
	for _, c := range net.Nodes {
		var peers []string
		for _, o := range net.Nodes {
			if o != c {
				peers = append(peers, fmt.Sprintf("%s@127.0.0.1:%d", o.ID, o.P2PPort))
			}
		}
		cfgPath := filepath.Join(c.Home, "config", "config.toml")
		cfg, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		s := string(cfg)
		s = setTOML(s, "", "proxy_app", `"kvstore"`)
		s = setTOML(s, "rpc", "laddr", fmt.Sprintf(`"tcp://127.0.0.1:%d"`, c.RPCPort))
		s = setTOML(s, "p2p", "laddr", fmt.Sprintf(`"tcp://127.0.0.1:%d"`, c.P2PPort))
		s = setTOML(s, "p2p", "persistent_peers", `"`+strings.Join(peers, ",")+`"`)
		s = setTOML(s, "p2p", "addr_book_strict", "false")
		s = setTOML(s, "p2p", "allow_duplicate_ip", "true")
		s = setTOML(s, "p2p", "pex", "false")
		s = setTOML(s, "consensus", "timeout_commit", `"500ms"`)
		s = setTOML(s, "instrumentation", "prometheus", "false")
		if err := os.WriteFile(cfgPath, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range net.Nodes {
		c.Start()
	}
	Eventually(t, 90*time.Second, "cometbft blocks on every node", func() error {
		for _, c := range net.Nodes {
			h, err := c.Height()
			if err != nil {
				return err
			}
			if h < 2 {
				return fmt.Errorf("%s at height %d", c.Name, h)
			}
		}
		return nil
	})
	return net
}

// Start runs the node on its home.
func (c *CometNode) Start() {
	c.t.Helper()
	c.Proc = Start(c.t, c.Name, c.bin, "start", "--home", c.Home)
	WaitHTTP(c.t, c.Proc, c.RPC+"/health", 60*time.Second)
}

// Stop kills the node.
func (c *CometNode) Stop() { c.Proc.Kill() }

// Freeze stops the process with SIGSTOP.
func (c *CometNode) Freeze() error { return c.Proc.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen node.
func (c *CometNode) Thaw() error { return c.Proc.Signal(syscall.SIGCONT) }

// Height is the node's latest block height from /status.
func (c *CometNode) Height() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.RPC+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Result struct {
			SyncInfo struct {
				Height string `json:"latest_block_height"`
			} `json:"sync_info"`
		} `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	return strconv.ParseInt(st.Result.SyncInfo.Height, 10, 64)
}

// setTOML sets key = value in [section] ("" = top level) of a CometBFT config.toml.
func setTOML(s, section, key, value string) string {
	lines := strings.Split(s, "\n")
	cur := ""
	header := regexp.MustCompile(`^\[([a-z_.]+)\]\s*$`)
	for i, l := range lines {
		if m := header.FindStringSubmatch(strings.TrimSpace(l)); m != nil {
			cur = m[1]
			continue
		}
		if cur == section && strings.HasPrefix(strings.TrimSpace(l), key+" =") {
			lines[i] = key + " = " + value
			return strings.Join(lines, "\n")
		}
	}
	panic(fmt.Sprintf("config.toml has no %s in [%s]", key, section))
}
