package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/fleet"
)

func init() {
	register("dev", "run the local demo stack: Consul, a geth Clique network, a CometBFT network and the agent", runDev)
}

func runDev(args []string) int {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	dir := fs.String("dir", filepath.Join(os.TempDir(), "chainwarden-dev"), "where chain data and logs go (emptied first)")
	consulPort := fs.Int("consul-port", 8500, "Consul HTTP port")
	listen := fs.String("listen", "127.0.0.1:9464", "agent health and metrics address")
	gethNodes := fs.Int("geth", 3, "geth Clique nodes")
	cometNodes := fs.Int("cometbft", 4, "CometBFT validators")
	nomadAddr := fs.String("nomad", "", "also discover chain nodes from this Nomad agent (e.g. http://127.0.0.1:4646)")
	withNomad := fs.Bool("with-nomad", false, "also start dockerd and a Nomad dev agent running the geth and cometbft jobs (scripts/demo-nomad.sh) and discover them")
	proxyPort := fs.Int("proxy-port", 0, "also run consul-template + nginx in front of every service on this port (scripts/demo-proxy.sh); 0: none")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := os.RemoveAll(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "chainwarden dev:", err)
		return 1
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chainwarden dev:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var cleanup []func()
	defer func() {
		fmt.Println("\nstopping everything the demo started")
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}()
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "chainwarden dev: %s: %v\n", what, err)
		return 1
	}

	step("starting a Consul dev agent on 127.0.0.1:%d", *consulPort)
	consul, err := devnet.StartConsul(ctx, *dir, *consulPort)
	if consul != nil {
		cleanup = append(cleanup, consul.Stop)
	}
	if err != nil {
		return fail("consul", err)
	}
	step("starting a %d-node geth Clique network (geth v1.13, one block a second)", *gethNodes)
	clique, err := devnet.StartClique(ctx, *dir, *gethNodes)
	if clique != nil {
		cleanup = append(cleanup, clique.Stop)
	}
	if err != nil {
		return fail("geth network", err)
	}
	step("starting a %d-validator CometBFT network (cometbft testnet)", *cometNodes)
	comet, err := devnet.StartComet(ctx, *dir, *cometNodes)
	if comet != nil {
		cleanup = append(cleanup, comet.Stop)
	}
	if err != nil {
		return fail("cometbft network", err)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# written by `chainwarden dev`\nconsul {\n  address = %q\n}\nlisten = %q\ninterval = \"1s\"\nhead_max_age = \"30s\"\n\n", consul.Addr, *listen)
	if *withNomad && *nomadAddr == "" {
		*nomadAddr = "http://127.0.0.1:4646"
	}
	if *nomadAddr != "" {
		fmt.Fprintf(&b, "nomad {\n  address = %q\n}\n\n", *nomadAddr)
	}
	for _, g := range clique.Nodes {
		fmt.Fprintf(&b, "node %q {\n  kind     = \"ethereum\"\n  rpc      = %q\n  service  = \"eth-devnet\"\n  chain_id = %d\n  warn_lag = 2\n  max_lag  = 10\n  max_block_age = \"15s\"\n  min_peers = 0\n}\n\n",
			g.Name, g.RPC, devnet.CliqueChainID)
	}
	for _, c := range comet.Nodes {
		fmt.Fprintf(&b, "node %q {\n  kind    = \"cometbft\"\n  rpc     = %q\n  service = \"cometbft-devnet\"\n  network = %q\n  max_block_age = \"15s\"\n}\n\n",
			c.Name, c.RPC, comet.ChainID)
	}
	cfgPath := filepath.Join(*dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
		return fail("agent config", err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return fail("agent config", err)
	}
	step("starting the agent (config: %s)", cfgPath)
	log := newLogger("info")
	a, err := agent.New(cfg, log, agent.Options{ID: "dev", Consul: agent.ConsulAPI(consul.Client)})
	if err != nil {
		return fail("agent", err)
	}
	actx, cancelAgent := context.WithCancel(ctx)
	startDiscovery(actx, cfg, a, log)
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(actx) }()
	cleanup = append(cleanup, func() { cancelAgent(); <-agentDone })

	if *withNomad {
		step("starting dockerd and a Nomad dev agent running jobs/geth and jobs/cometbft (scripts/demo-nomad.sh)")
		if err := script(ctx, []string{"CONSUL_HTTP_ADDR=" + consul.Addr}, "scripts/demo-nomad.sh", "start"); err != nil {
			return fail("nomad", err)
		}
		cleanup = append(cleanup, func() {
			_ = script(context.Background(), []string{"CONSUL_HTTP_ADDR=" + consul.Addr}, "scripts/demo-nomad.sh", "stop")
		})
	}
	if *proxyPort != 0 {
		step("starting the RPC proxy (consul-template + nginx) on 127.0.0.1:%d", *proxyPort)
		pc := exec.Command("bash", "scripts/demo-proxy.sh", "run", consul.Addr, strconv.Itoa(*proxyPort), filepath.Join(*dir, "proxy"))
		pc.Stdout, pc.Stderr = os.Stdout, os.Stderr
		if err := pc.Start(); err != nil {
			return fail("proxy", err)
		}
		cleanup = append(cleanup, func() { _ = pc.Process.Signal(syscall.SIGTERM); _ = pc.Wait() })
	}

	// Wait until every node has passed once, then show the fleet.
	_ = devnet.Poll(ctx, 60*time.Second, "nodes passing", nil, func() error {
		for _, h := range a.Health() {
			if h.Status != "passing" {
				return fmt.Errorf("%s is %s", h.Node, h.Status)
			}
		}
		return nil
	})
	if ctx.Err() != nil {
		return 0
	}
	// Consul's catalog follows the local agent within a moment; show the fleet as Consul sees it.
	var rows []fleet.Row
	_ = devnet.Poll(ctx, 10*time.Second, "catalog", nil, func() error {
		rows, err = fleet.Read(ctx, consul.Client, cfg.Consul.KVPrefix, cfg.HeadMaxAge, time.Now())
		if err != nil {
			return err
		}
		for _, r := range rows {
			if r.Status != "passing" {
				return fmt.Errorf("%s is %s", r.Node, r.Status)
			}
		}
		return nil
	})
	if err == nil {
		fmt.Println()
		_ = fleet.WriteTable(os.Stdout, rows)
	}
	lagger := clique.Nodes[len(clique.Nodes)-1]
	fmt.Printf(`
The demo is running. Everything above is real: Consul, geth, CometBFT, and the agent judging them.

  Consul UI:        http://%s/ui/dc1/services   (services eth-devnet and cometbft-devnet)
  Agent health:     curl -s http://%s/v1/health | less
  Metrics:          curl -s http://%s/metrics | grep chainwarden_node_
  Fleet:            CONSUL_HTTP_ADDR=%s chainwarden status
  Logs and data:    %s

Make a geth node fall behind (remove its peer, as a node that lost its peers would):
  curl -s -H 'content-type: application/json' %s \
    -d '{"jsonrpc":"2.0","id":1,"method":"admin_removePeer","params":["%s"]}'
  -> %s turns warning after ~3 blocks behind, critical after 10; to let it catch up again:
  curl -s -H 'content-type: application/json' %s \
    -d '{"jsonrpc":"2.0","id":1,"method":"admin_addPeer","params":["%s"]}'

Stop a CometBFT validator (the other 3 keep the chain going):
  kill -STOP %d     (and kill -CONT %d to let it catch up)

%s
Press Ctrl-C to stop everything the demo started.
`, consul.Addr, *listen, *listen, consul.Addr, *dir, lagger.RPC, clique.Nodes[0].Enode, lagger.Name, lagger.RPC,
		clique.Nodes[0].Enode, comet.Nodes[len(comet.Nodes)-1].Proc.Cmd.Process.Pid, comet.Nodes[len(comet.Nodes)-1].Proc.Cmd.Process.Pid,
		extras(*proxyPort, *withNomad))

	select {
	case <-ctx.Done():
	case err := <-agentDone:
		if err != nil {
			return fail("agent", err)
		}
	}
	return 0
}

// extras is the part of the tour about the proxy and Nomad, when they run.
func extras(proxyPort int, withNomad bool) string {
	var b strings.Builder
	if proxyPort != 0 {
		url := fmt.Sprintf("http://127.0.0.1:%d/eth-devnet", proxyPort)
		fmt.Fprintf(&b, `The RPC proxy (nginx, upstreams rendered by consul-template from Consul health):
  curl -s -H 'content-type: application/json' %s -d '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
  Keep a client reading while you make a node lag (above): scripts/demo-proxy.sh client %s 60
  admin_, debug_, personal_ and miner_ calls are refused at the proxy.

`, url, url)
	}
	if withNomad {
		b.WriteString(`Nomad (http://127.0.0.1:4646/ui): jobs geth and cometbft, discovered by the agent as geth-geth-0 and
cometbft-cometbft-0.  NOMAD_ADDR=http://127.0.0.1:4646 nomad status; chainwarden job list

`)
	}
	return b.String()
}

// script runs one of the repo's scripts (the demo is run from the repo root by make demo).
func script(ctx context.Context, env []string, path string, args ...string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s not found: run the demo from the repository root (make demo)", path)
	}
	cmd := exec.CommandContext(ctx, "bash", append([]string{path}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	return cmd.Run()
}

func step(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}
