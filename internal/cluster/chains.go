package cluster

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/accounts/keystore"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// Ports every chain host uses (each host has its own addresses, so they are the usual ones).
const (
	gethRPCPort  = 8545
	gethWSPort   = 8546
	gethP2PPort  = 30303
	cometRPCPort = 26657
	agentListen  = "127.0.0.1:9464"
)

// startChains writes one Clique network (every chain host a sealer: with N sealers Clique needs N/2+1 of them, so
// blocks keep coming with one host lost) and one CometBFT network (every chain host a validator), then starts each
// chain host: Consul client agent, geth, CometBFT, the chainwarden agent.
func (f *Fleet) startChains(ctx context.Context) error {
	if err := f.writeClique(); err != nil {
		return err
	}
	if err := f.writeComet(); err != nil {
		return err
	}
	for _, h := range f.Chains {
		if err := f.agentTokens(h); err != nil {
			return err
		}
		if err := f.addConsul(h); err != nil {
			return err
		}
		if err := f.addNomad(h); err != nil {
			return err
		}
		f.addGeth(h)
		f.addComet(h)
		if err := f.addAgent(h); err != nil {
			return err
		}
	}
	// Start the chains' processes host by host, but wait for the chains themselves only once all run: the first
	// sealer alone cannot seal more than one block, the first validator alone none.
	for _, h := range f.Chains {
		if err := h.Start(ctx); err != nil {
			return err
		}
	}
	f.log.Info("chain hosts started", "hosts", len(f.Chains))
	return nil
}

type gethKeys struct {
	signer common.Address
	enode  string
}

func (f *Fleet) writeClique() error {
	bin, err := devnet.Bin("geth-clique")
	if err != nil {
		return err
	}
	keys := make([]gethKeys, len(f.Chains))
	var signers []common.Address
	for i, h := range f.Chains {
		dataDir := filepath.Join(h.Dir, "geth")
		signer, err := crypto.GenerateKey()
		if err != nil {
			return err
		}
		pass := make([]byte, 16)
		if _, err := randRead(pass); err != nil {
			return err
		}
		password := hex.EncodeToString(pass)
		if err := os.MkdirAll(filepath.Join(dataDir, "geth"), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(h.Dir, "sealer.password"), []byte(password), 0o600); err != nil {
			return err
		}
		ks := keystore.NewKeyStore(filepath.Join(dataDir, "keystore"), keystore.LightScryptN, keystore.LightScryptP)
		if _, err := ks.ImportECDSA(signer, password); err != nil {
			return err
		}
		nodeKey, err := crypto.GenerateKey()
		if err != nil {
			return err
		}
		if err := crypto.SaveECDSA(filepath.Join(dataDir, "geth", "nodekey"), nodeKey); err != nil {
			return err
		}
		keys[i] = gethKeys{
			signer: crypto.PubkeyToAddress(signer.PublicKey),
			enode:  fmt.Sprintf("enode://%x@%s:%d", crypto.FromECDSAPub(&nodeKey.PublicKey)[1:], h.IP, gethP2PPort),
		}
		signers = append(signers, keys[i].signer)
	}
	sort.Slice(signers, func(i, j int) bool { return bytes.Compare(signers[i][:], signers[j][:]) < 0 })
	genesis, _ := json.MarshalIndent(devnet.CliqueGenesis(signers...), "", "  ")
	genesisPath := filepath.Join(f.opts.Dir, "clique-genesis.json")
	if err := os.WriteFile(genesisPath, genesis, 0o644); err != nil {
		return err
	}
	for i, h := range f.Chains {
		if _, err := devnet.Output(bin, "init", "--datadir", filepath.Join(h.Dir, "geth"), genesisPath); err != nil {
			return err
		}
		// Every other host as a static peer: geth keeps dialling them, across restarts and partitions.
		var peers []string
		for j, k := range keys {
			if j != i {
				peers = append(peers, strconv.Quote(k.enode))
			}
		}
		toml := fmt.Sprintf("[Node.P2P]\nStaticNodes = [%s]\n", strings.Join(peers, ", "))
		if err := os.WriteFile(filepath.Join(h.Dir, "geth.toml"), []byte(toml), 0o644); err != nil {
			return err
		}
		h.gethSigner = keys[i].signer.Hex()
	}
	return nil
}

func (f *Fleet) addGeth(h *Host) {
	bin, _ := devnet.Bin("geth-clique")
	rpc := fmt.Sprintf("http://%s:%d", h.IP, gethRPCPort)
	client := h.ns.httpClient(3 * time.Second)
	h.add("geth", bin, []string{"--config", filepath.Join(h.Dir, "geth.toml"),
		"--datadir", filepath.Join(h.Dir, "geth"), "--networkid", strconv.Itoa(devnet.CliqueChainID),
		"--nodiscover", "--nat", "extip:" + h.IP, "--port", strconv.Itoa(gethP2PPort), "--ipcdisable",
		"--syncmode", "full", "--authrpc.port", "8551",
		"--http", "--http.addr", h.IP, "--http.port", strconv.Itoa(gethRPCPort), "--http.vhosts", "*",
		"--http.api", "eth,net,web3",
		"--ws", "--ws.addr", h.IP, "--ws.port", strconv.Itoa(gethWSPort), "--ws.origins", "*", "--ws.api", "eth,net,web3",
		"--mine", "--miner.etherbase", h.gethSigner, "--unlock", h.gethSigner,
		"--password", filepath.Join(h.Dir, "sealer.password"), "--allow-insecure-unlock", "--verbosity", "2",
	}, func(ctx context.Context) error {
		_, err := ethBlockNumber(ctx, client, rpc)
		return err
	})
}

// ethBlockNumber asks a geth for its height.
func ethBlockNumber(ctx context.Context, c *http.Client, url string) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url,
		strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Result string `json:"result"`
		Error  any    `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("eth_blockNumber from %s: HTTP %d: %w", url, resp.StatusCode, err)
	}
	if r.Error != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("eth_blockNumber from %s: HTTP %d: %v", url, resp.StatusCode, r.Error)
	}
	return strconv.ParseUint(strings.TrimPrefix(r.Result, "0x"), 16, 64)
}

// writeComet makes the validators with `cometbft testnet` (persistent peers at the chain hosts' addresses) and
// points each one's RPC at its host's address.
func (f *Fleet) writeComet() error {
	bin, err := devnet.Bin("cometbft")
	if err != nil {
		return err
	}
	out := filepath.Join(f.opts.Dir, "cometbft")
	if _, err := devnet.Output(bin, "testnet", "--v", strconv.Itoa(len(f.Chains)), "--o", out,
		"--starting-ip-address", f.Chains[0].IP); err != nil {
		return err
	}
	for i, h := range f.Chains {
		home := filepath.Join(out, fmt.Sprintf("node%d", i))
		target := filepath.Join(h.Dir, "cometbft")
		if err := os.Rename(home, target); err != nil {
			return err
		}
		cfgPath := filepath.Join(target, "config", "config.toml")
		b, err := os.ReadFile(cfgPath)
		if err != nil {
			return err
		}
		s := string(b)
		for _, kv := range [][3]string{
			{"", "proxy_app", `"kvstore"`},
			{"", "moniker", strconv.Quote(h.Name)},
			{"rpc", "laddr", fmt.Sprintf(`"tcp://%s:%d"`, h.IP, cometRPCPort)},
			{"p2p", "addr_book_strict", "false"},
			{"p2p", "pex", "false"},
			{"consensus", "timeout_commit", `"1s"`},
			{"instrumentation", "prometheus", "false"},
		} {
			if s, err = devnet.SetTOML(s, kv[0], kv[1], kv[2]); err != nil {
				return err
			}
		}
		if err := os.WriteFile(cfgPath, []byte(s), 0o644); err != nil {
			return err
		}
	}
	var genesis struct {
		ChainID string `json:"chain_id"`
	}
	b, err := os.ReadFile(filepath.Join(f.Chains[0].Dir, "cometbft", "config", "genesis.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &genesis); err != nil {
		return fmt.Errorf("cometbft genesis: %w", err)
	}
	f.CometChain = genesis.ChainID
	return nil
}

func (f *Fleet) addComet(h *Host) {
	bin, _ := devnet.Bin("cometbft")
	client := h.ns.httpClient(3 * time.Second)
	url := fmt.Sprintf("http://%s:%d/status", h.IP, cometRPCPort)
	h.add("cometbft", bin, []string{"start", "--home", filepath.Join(h.Dir, "cometbft")}, func(ctx context.Context) error {
		return getOK(ctx, client, url)
	})
}

func getOK(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}

// NodeIDs are the chainwarden node names (= Consul service IDs) a chain host's agent watches.
func (h *Host) NodeIDs() []string { return []string{"geth-" + h.Name, "comet-" + h.Name} }

// addAgent writes the agent's config as chainwarden-bootstrap writes /etc/chainwarden/agent.hcl (its local Consul
// agent at 127.0.0.1:8500), with this host's two nodes as static node blocks.
func (f *Fleet) addAgent(h *Host) error {
	cfg := fmt.Sprintf(`consul {
  address = "127.0.0.1:8500"
}

listen   = %q
interval = "1s"

node %q {
  kind     = "ethereum"
  rpc      = "http://%s:%d"
  ws       = "ws://%s:%d"
  service  = %q
  chain_id = %d

  # Clique: with a signer missing, the others race for its turns, and a losing branch can be a few blocks deep.
  reorg_depth = 6
}

node %q {
  kind    = "cometbft"
  rpc     = "http://%s:%d"
  service = %q
  network = %q
}
`, agentListen, h.NodeIDs()[0], h.IP, gethRPCPort, h.IP, gethWSPort, EthService, devnet.CliqueChainID,
		h.NodeIDs()[1], h.IP, cometRPCPort, CometService, f.CometChain)
	path := filepath.Join(h.Dir, "agent.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	client := h.ns.httpClient(3 * time.Second)
	pr := h.add("chainwarden", f.opts.AgentBin, []string{"agent", "-config", path}, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentListen+"/v1/health", nil)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	pr.envFile = filepath.Join(h.Dir, "agent.env") // CONSUL_HTTP_TOKEN_FILE, as chainwarden-agent.service reads it
	return nil
}

// AgentPassing returns nil when the host's chainwarden agent itself calls every node of the host passing
// (GET /v1/health/<node> answers 200): its own verdict, whatever Consul shows.
func (h *Host) AgentPassing(ctx context.Context) error {
	for _, n := range h.NodeIDs() {
		if err := h.AgentCallsPassing(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// AgentCallsPassing returns nil when the host's chainwarden agent itself calls the node passing.
func (h *Host) AgentCallsPassing(ctx context.Context, node string) error {
	if err := getOK(ctx, h.ns.httpClient(3*time.Second), "http://"+agentListen+"/v1/health/"+node); err != nil {
		return fmt.Errorf("%s: %w", node, err)
	}
	return nil
}

// AgentSources is what the host's chainwarden agent counted toward a service's head in its last pass, by origin
// (own, other_agents, reference): its chainwarden_network_head_sources gauge, read from its /metrics.
func (h *Host) AgentSources(ctx context.Context, service string) (map[string]int, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentListen+"/metrics", nil)
	resp, err := h.ns.httpClient(3 * time.Second).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s's agent /metrics: %w", h.Name, err)
	}
	out := map[string]int{}
	if mf := families["chainwarden_network_head_sources"]; mf != nil {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["service"] == service {
				out[labels["origin"]] = int(m.GetGauge().GetValue())
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s's agent has no chainwarden_network_head_sources for %s yet", h.Name, service)
	}
	return out, nil
}
