package devnet

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

	logDir string
	bin    string
}

// CometNet is a real CometBFT network made by `cometbft testnet` (as IRITA's `irita testnet --v 4`), every
// validator on loopback ports of its own, running the built-in kvstore app.
type CometNet struct {
	ChainID string
	Nodes   []*CometNode
}

// StartComet starts a network of n validators under dir and waits until every node has made blocks.
func StartComet(ctx context.Context, dir string, n int) (*CometNet, error) {
	return StartCometChain(ctx, dir, n, "")
}

// StartCometChain is StartComet with the chain id given ("": the random one `cometbft testnet` makes): two networks
// with one chain id are two chains that a node would report alike.
func StartCometChain(ctx context.Context, dir string, n int, chainID string) (*CometNet, error) {
	bin, err := Bin("cometbft")
	if err != nil {
		return nil, err
	}
	out := filepath.Join(dir, "cometbft")
	if _, err := Output(bin, "testnet", "--v", strconv.Itoa(n), "--o", out); err != nil {
		return nil, err
	}
	if chainID != "" {
		for i := 0; i < n; i++ {
			if err := setGenesisChainID(filepath.Join(out, fmt.Sprintf("node%d", i), "config", "genesis.json"), chainID); err != nil {
				return nil, err
			}
		}
	}
	net := &CometNet{}
	for i := 0; i < n; i++ {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		home := filepath.Join(out, fmt.Sprintf("node%d", i))
		c := &CometNode{Name: fmt.Sprintf("comet-%d", i), Home: home, RPCPort: ports[0], P2PPort: ports[1], logDir: dir, bin: bin}
		c.RPC = fmt.Sprintf("http://127.0.0.1:%d", c.RPCPort)
		id, err := Output(bin, "show-node-id", "--home", home)
		if err != nil {
			return nil, err
		}
		c.ID = strings.TrimSpace(id)
		net.Nodes = append(net.Nodes, c)
	}
	var genesis struct {
		ChainID string `json:"chain_id"`
	}
	b, err := os.ReadFile(filepath.Join(out, "node0", "config", "genesis.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &genesis); err != nil {
		return nil, fmt.Errorf("read genesis: %w", err)
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
			return nil, err
		}
		s := string(cfg)
		for _, kv := range [][3]string{
			{"", "proxy_app", `"kvstore"`},
			{"rpc", "laddr", fmt.Sprintf(`"tcp://127.0.0.1:%d"`, c.RPCPort)},
			{"p2p", "laddr", fmt.Sprintf(`"tcp://127.0.0.1:%d"`, c.P2PPort)},
			{"p2p", "persistent_peers", `"` + strings.Join(peers, ",") + `"`},
			{"p2p", "addr_book_strict", "false"},
			{"p2p", "allow_duplicate_ip", "true"},
			{"p2p", "pex", "false"},
			{"consensus", "timeout_commit", `"500ms"`},
			{"instrumentation", "prometheus", "false"},
		} {
			if s, err = setTOML(s, kv[0], kv[1], kv[2]); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(cfgPath, []byte(s), 0o644); err != nil {
			return nil, err
		}
	}
	for _, c := range net.Nodes {
		if err := c.Start(ctx); err != nil {
			return net, err
		}
	}
	return net, Poll(ctx, 90*time.Second, "cometbft blocks on every node", nil, func() error {
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
}

// Stop kills every node.
func (n *CometNet) Stop() {
	for _, c := range n.Nodes {
		c.Stop()
	}
}

// Start runs the node on its home and waits for its RPC.
func (c *CometNode) Start(ctx context.Context) error {
	p, err := Start(c.logDir, "", nil, c.Name, c.bin, "start", "--home", c.Home)
	if err != nil {
		return err
	}
	c.Proc = p
	return Poll(ctx, 60*time.Second, c.Name+" rpc", p, func() error { return HTTPUp(c.RPC + "/health") })
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
	st, err := CometStatus(ctx, c.RPC)
	return st.Height, err
}

// CometNodeStatus is what a CometBFT node's /status says of its chain.
type CometNodeStatus struct {
	Height  int64  // latest block height
	Network string // chain id
}

// CometStatus reads /status from the CometBFT RPC at rpc (http://host:port).
func CometStatus(ctx context.Context, rpc string) (CometNodeStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rpc+"/status", nil)
	if err != nil {
		return CometNodeStatus{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return CometNodeStatus{}, err
	}
	defer resp.Body.Close()
	var st struct {
		Result struct {
			NodeInfo struct {
				Network string `json:"network"`
			} `json:"node_info"`
			SyncInfo struct {
				Height int64 `json:"latest_block_height,string"`
			} `json:"sync_info"`
		} `json:"result"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return CometNodeStatus{}, fmt.Errorf("decode %s/status: %w", rpc, err)
	}
	return CometNodeStatus{Height: st.Result.SyncInfo.Height, Network: st.Result.NodeInfo.Network}, nil
}

// setGenesisChainID rewrites the chain_id of a genesis file, keeping the rest as it is.
func setGenesisChainID(path, chainID string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var g map[string]json.RawMessage
	if err := json.Unmarshal(b, &g); err != nil {
		return fmt.Errorf("read genesis %s: %w", path, err)
	}
	id, _ := json.Marshal(chainID)
	g["chain_id"] = id
	if b, err = json.MarshalIndent(g, "", "  "); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

var tomlHeader = regexp.MustCompile(`^\[([a-z0-9_.]+)\]\s*$`)

// setTOML sets key = value in [section] ("" = top level) of a CometBFT config.toml.
// SetTOML sets key in section ("" for the top level) of a CometBFT config.toml's text to value (TOML, quoted as
// needed), as StartComet does for its own nodes.
func SetTOML(s, section, key, value string) (string, error) { return setTOML(s, section, key, value) }

func setTOML(s, section, key, value string) (string, error) {
	lines := strings.Split(s, "\n")
	cur := ""
	for i, l := range lines {
		if m := tomlHeader.FindStringSubmatch(strings.TrimSpace(l)); m != nil {
			cur = m[1]
			continue
		}
		if cur == section && strings.HasPrefix(strings.TrimSpace(l), key+" =") {
			lines[i] = key + " = " + value
			return strings.Join(lines, "\n"), nil
		}
	}
	return "", fmt.Errorf("config.toml has no %s in [%s]", key, section)
}
