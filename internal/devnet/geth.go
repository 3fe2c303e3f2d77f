package devnet

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ethereum/go-ethereum/accounts/keystore"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/rpc"
)

// CliqueChainID is the chain id of the local Clique networks.
const CliqueChainID = 4242

// DevChainID is the chain id of `geth --dev`.
const DevChainID = 1337

// Geth is one real geth node.
type Geth struct {
	Name    string
	RPC     string // http://127.0.0.1:PORT
	RPCPort int
	WS      string // ws://127.0.0.1:PORT (new heads by push)
	WSPort  int
	P2PPort int
	DataDir string
	Proc    *Process
	Enode   string

	logDir string
	bin    string
	args   []string
}

// StartGethDev starts `geth --dev --dev.period 1` (geth v1.16), a single node that is its own chain (chain id 1337),
// with its data under dir.
func StartGethDev(ctx context.Context, dir, name string) (*Geth, error) {
	bin, err := Bin("geth")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	g := &Geth{Name: name, RPCPort: ports[0], WSPort: ports[2], DataDir: filepath.Join(dir, name), logDir: dir, bin: bin}
	g.RPC = fmt.Sprintf("http://127.0.0.1:%d", g.RPCPort)
	g.WS = fmt.Sprintf("ws://127.0.0.1:%d", g.WSPort)
	g.args = []string{"--dev", "--dev.period", "1", "--datadir", g.DataDir, "--ipcdisable", "--nodiscover",
		"--port", "0", "--authrpc.port", strconv.Itoa(ports[1]),
		"--http", "--http.addr", "127.0.0.1", "--http.port", strconv.Itoa(g.RPCPort),
		"--http.api", "eth,net,web3,admin", "--verbosity", "2"}
	g.args = append(g.args, wsArgs(g.WSPort)...)
	return g, g.Start(ctx)
}

// wsArgs serve JSON-RPC over WebSocket on 127.0.0.1:port (eth_subscribe for new heads).
func wsArgs(port int) []string {
	return []string{"--ws", "--ws.addr", "127.0.0.1", "--ws.port", strconv.Itoa(port), "--ws.api", "eth,net,web3"}
}

// Start runs the node on its data dir and ports and waits for its RPC.
func (g *Geth) Start(ctx context.Context) error {
	p, err := Start(g.logDir, "", nil, g.Name, g.bin, g.args...)
	if err != nil {
		return err
	}
	g.Proc = p
	return Poll(ctx, 60*time.Second, g.Name+" rpc", p, func() error {
		_, err := g.BlockNumber()
		return err
	})
}

// Call makes one JSON-RPC call to the node.
func (g *Geth) Call(result any, method string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := rpc.DialContext(ctx, g.RPC)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.CallContext(ctx, result, method, args...)
}

// BlockNumber returns the node's head.
func (g *Geth) BlockNumber() (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return BlockNumber(ctx, g.RPC)
}

// BlockNumber asks the Ethereum JSON-RPC at url for its head (eth_blockNumber).
func BlockNumber(ctx context.Context, url string) (uint64, error) {
	c, err := rpc.DialContext(ctx, url)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var n hexutil.Uint64
	if err := c.CallContext(ctx, &n, "eth_blockNumber"); err != nil {
		return 0, fmt.Errorf("eth_blockNumber from %s: %w", url, err)
	}
	return uint64(n), nil
}

// Stop kills the node (its data dir stays).
func (g *Geth) Stop() { g.Proc.Kill() }

// Restart starts the node again on its data dir and ports.
func (g *Geth) Restart(ctx context.Context) error {
	g.Proc.Kill()
	return g.Start(ctx)
}

// Freeze stops the process with SIGSTOP: it hangs with its port open, as a wedged node does.
func (g *Geth) Freeze() error { return g.Proc.Signal(syscall.SIGSTOP) }

// Thaw resumes a frozen node.
func (g *Geth) Thaw() error { return g.Proc.Signal(syscall.SIGCONT) }

// Clique is a real multi-node geth v1.13 Clique network: node 0 seals a block every second, the others sync from it.
type Clique struct {
	Nodes []*Geth
}

// StartClique starts n nodes (n >= 1) of one Clique network (chain id 4242) under dir and waits until they all
// follow the sealer. The sealer's key is made here and lives only in its data dir.
func StartClique(ctx context.Context, dir string, n int) (*Clique, error) {
	bin, err := Bin("geth-clique")
	if err != nil {
		return nil, err
	}
	key, err := crypto.GenerateKey()
	if err != nil {
		return nil, err
	}
	signer := crypto.PubkeyToAddress(key.PublicKey)
	genesisPath := filepath.Join(dir, "genesis.json")
	b, _ := json.MarshalIndent(CliqueGenesis(signer), "", "  ")
	if err := os.WriteFile(genesisPath, b, 0o644); err != nil {
		return nil, err
	}
	pass := make([]byte, 16)
	copy(pass, hexutil.Encode(crypto.Keccak256(crypto.FromECDSA(key)))[2:18])
	passPath := filepath.Join(dir, "sealer.password")
	if err := os.WriteFile(passPath, pass, 0o600); err != nil {
		return nil, err
	}
	c := &Clique{}
	for i := 0; i < n; i++ {
		ports, err := freePorts(4)
		if err != nil {
			return c, err
		}
		g := &Geth{Name: fmt.Sprintf("clique-%d", i), RPCPort: ports[0], P2PPort: ports[1], WSPort: ports[3],
			DataDir: filepath.Join(dir, fmt.Sprintf("clique-%d", i)), logDir: dir, bin: bin}
		g.RPC = fmt.Sprintf("http://127.0.0.1:%d", g.RPCPort)
		g.WS = fmt.Sprintf("ws://127.0.0.1:%d", g.WSPort)
		if _, err := Output(bin, "init", "--datadir", g.DataDir, genesisPath); err != nil {
			return c, err
		}
		g.args = []string{"--datadir", g.DataDir, "--networkid", strconv.Itoa(CliqueChainID), "--nodiscover",
			"--port", strconv.Itoa(g.P2PPort), "--authrpc.port", strconv.Itoa(ports[2]), "--ipcdisable",
			"--syncmode", "full", "--http", "--http.addr", "127.0.0.1", "--http.port", strconv.Itoa(g.RPCPort),
			"--http.api", "eth,net,web3,admin,clique", "--verbosity", "2"}
		g.args = append(g.args, wsArgs(g.WSPort)...)
		if i == 0 {
			ks := keystore.NewKeyStore(filepath.Join(g.DataDir, "keystore"), keystore.LightScryptN, keystore.LightScryptP)
			if _, err := ks.ImportECDSA(key, string(pass)); err != nil {
				return c, err
			}
			g.args = append(g.args, "--mine", "--miner.etherbase", signer.Hex(), "--unlock", signer.Hex(),
				"--password", passPath, "--allow-insecure-unlock")
		}
		c.Nodes = append(c.Nodes, g) // before it starts: Stop kills a node that failed to come up, too
		if err := g.Start(ctx); err != nil {
			return c, err
		}
		var info struct {
			Enode string `json:"enode"`
		}
		if err := g.Call(&info, "admin_nodeInfo"); err != nil {
			return c, err
		}
		g.Enode = info.Enode
	}
	for _, g := range c.Nodes[1:] {
		if err := c.Connect(g); err != nil {
			return c, err
		}
	}
	return c, Poll(ctx, 60*time.Second, "clique nodes in sync", nil, func() error { return c.InSync(2) })
}

// Stop kills every node.
func (c *Clique) Stop() {
	for _, g := range c.Nodes {
		g.Stop()
	}
}

// Connect makes node g peer with the sealer again.
func (c *Clique) Connect(g *Geth) error {
	var ok bool
	return g.Call(&ok, "admin_addPeer", c.Nodes[0].Enode)
}

// Isolate removes g's peers, so it stops getting blocks while its RPC keeps answering (a node that lost its peers).
func (c *Clique) Isolate(g *Geth) error {
	var ok bool
	if err := g.Call(&ok, "admin_removePeer", c.Nodes[0].Enode); err != nil {
		return err
	}
	return c.Nodes[0].Call(&ok, "admin_removePeer", g.Enode)
}

// InSync returns nil when every node is within tolerance blocks of the sealer and the sealer is past block 1.
func (c *Clique) InSync(tolerance uint64) error {
	head, err := c.Nodes[0].BlockNumber()
	if err != nil {
		return err
	}
	if head < 2 {
		return fmt.Errorf("sealer at block %d", head)
	}
	for _, g := range c.Nodes[1:] {
		h, err := g.BlockNumber()
		if err != nil {
			return fmt.Errorf("%s: %w", g.Name, err)
		}
		if h+tolerance < head {
			return fmt.Errorf("%s at %d, sealer at %d", g.Name, h, head)
		}
	}
	return nil
}

// CliqueGenesis is the genesis of a local Clique network (chain id 4242, a block a second) whose sealers are signers
// (in the order given; Clique sorts them), each funded.
func CliqueGenesis(signers ...common.Address) map[string]any {
	extra := make([]byte, 32+20*len(signers)+65)
	alloc := map[string]any{}
	balance := new(big.Int).Exp(big.NewInt(10), big.NewInt(24), nil)
	for i, s := range signers {
		copy(extra[32+20*i:], s.Bytes())
		alloc[s.Hex()] = map[string]any{"balance": hexutil.EncodeBig(balance)}
	}
	return map[string]any{
		"config": map[string]any{
			"chainId": CliqueChainID, "homesteadBlock": 0, "eip150Block": 0, "eip155Block": 0, "eip158Block": 0,
			"byzantiumBlock": 0, "constantinopleBlock": 0, "petersburgBlock": 0, "istanbulBlock": 0,
			"berlinBlock": 0, "londonBlock": 0,
			"clique": map[string]any{"period": 1, "epoch": 30000},
		},
		"difficulty": "0x1",
		"gasLimit":   "0x1c9c380",
		"extradata":  hexutil.Encode(extra),
		"alloc":      alloc,
	}
}

func freePorts(n int) ([]int, error) {
	out := make([]int, n)
	for i := range out {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}
