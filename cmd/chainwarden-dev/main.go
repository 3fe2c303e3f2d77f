// Command chainwarden-dev runs the local demo stack (`make demo`): a Consul dev agent, a geth Clique network, a
// CometBFT network and the chainwarden agent judging them, optionally with Nomad running the geth and cometbft jobs
// and the nginx RPC proxy in front. It is a binary of its own so that the demo harness (internal/devnet) is never
// linked into the production binary, chainwarden.
//
// Ctrl-C stops everything the demo started, also when its output goes to a pipe that the same Ctrl-C closed
// (`make demo 2>&1 | tee demo.log`); a second Ctrl-C kills what is still running at once.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/alerts"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/discovery"
	"github.com/chainwarden/chainwarden/internal/fleet"
	"github.com/chainwarden/chainwarden/internal/nodespec"
)

func main() {
	// With SIGPIPE wanted (not ignored: an ignored signal stays ignored in the scripts the demo runs), a write to a
	// closed stdout returns EPIPE instead of killing the process before it stopped what it started.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	os.Exit(run(os.Args[1:], newConsole(os.Stdout), newConsole(os.Stderr)))
}

// options are the command-line flags.
type options struct {
	dir        string
	consulPort int
	listen     string
	gethNodes  int
	cometNodes int
	nomadAddr  string
	withNomad  bool
	proxyPort  int
	promPort   int
	alertFor   time.Duration
}

func parseFlags(args []string, stderr *console) (options, error) {
	var o options
	fs := flag.NewFlagSet("chainwarden-dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.dir, "dir", filepath.Join(os.TempDir(), "chainwarden-dev"), "where chain data and logs go (emptied first)")
	fs.IntVar(&o.consulPort, "consul-port", 8500, "Consul HTTP port")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9464", "agent health and metrics address")
	fs.IntVar(&o.gethNodes, "geth", 3, "geth Clique nodes (at least 1)")
	fs.IntVar(&o.cometNodes, "cometbft", 4, "CometBFT validators (at least 1)")
	fs.StringVar(&o.nomadAddr, "nomad", "", "also discover chain nodes from this Nomad agent (e.g. http://127.0.0.1:4646)")
	fs.BoolVar(&o.withNomad, "with-nomad", false, "also start dockerd and a Nomad dev agent running the geth and cometbft jobs (scripts/demo-nomad.sh) and discover them")
	fs.IntVar(&o.proxyPort, "proxy-port", 0, "also run consul-template + nginx in front of every service on this port (scripts/demo-proxy.sh); 0: none")
	fs.IntVar(&o.promPort, "prometheus-port", 9090, "also run Prometheus on this port, scraping the agent with chainwarden's alert rules loaded; 0: none")
	fs.DurationVar(&o.alertFor, "alert-for", time.Minute, "the demo's Prometheus loads the alert rules with every `for:` longer than this shortened to it")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.alertFor <= 0 {
		return o, fmt.Errorf("-alert-for must be positive")
	}
	if o.gethNodes < 1 || o.cometNodes < 1 {
		return o, fmt.Errorf("-geth and -cometbft must be at least 1")
	}
	if o.withNomad && o.nomadAddr == "" {
		o.nomadAddr = "http://127.0.0.1:4646"
	}
	return o, nil
}

// run is the whole demo; it returns the exit code once everything it started has stopped.
func run(args []string, stdout, stderr *console) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "chainwarden-dev:", err)
		return 2
	}
	td := newTeardown(stderr)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-sigs
		cancel()
		<-sigs
		td.hurry()
		for range sigs { // still caught: the teardown runs to its end whatever the terminal sends
		}
	}()
	defer func() {
		fmt.Fprintln(stdout, "\nstopping everything the demo started")
		td.run()
		fmt.Fprintln(stdout, "stopped")
	}()
	if err := reset(o.dir); err != nil {
		fmt.Fprintln(stderr, "chainwarden-dev:", err)
		return 1
	}
	d := &demo{opts: o, out: stdout, errOut: stderr, td: td}
	if err := d.start(ctx); err != nil {
		if ctx.Err() != nil {
			return 0 // interrupted while starting
		}
		fmt.Fprintln(stderr, "chainwarden-dev:", err)
		return 1
	}
	d.tour(ctx)
	select {
	case <-ctx.Done():
	case err := <-d.agentDone:
		if err != nil {
			fmt.Fprintln(stderr, "chainwarden-dev: agent:", err)
			return 1
		}
	}
	return 0
}

// reset empties the data directory of the last run.
func reset(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("empty %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	return nil
}

// demo is the running stack.
type demo struct {
	opts        options
	out, errOut *console
	td          *teardown

	consul    *devnet.Consul
	prom      *devnet.Prometheus
	clique    *devnet.Clique
	comet     *devnet.CometNet
	agent     *agent.Agent
	cfg       *config.Config
	agentDone chan error
}

func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "==> "+format+"\n", args...)
}

// start starts every component, registering how to stop each before waiting for it to come up.
func (d *demo) start(ctx context.Context) error {
	o := d.opts
	var err error
	d.step("starting a Consul dev agent on 127.0.0.1:%d", o.consulPort)
	d.consul, err = devnet.StartConsul(ctx, o.dir, o.consulPort)
	if d.consul != nil {
		d.td.process(d.consul.Proc)
		d.td.add(d.consul.Stop)
	}
	if err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	d.step("starting a %d-node geth Clique network (geth v1.13, one block a second)", o.gethNodes)
	d.clique, err = devnet.StartClique(ctx, o.dir, o.gethNodes)
	if d.clique != nil {
		for _, g := range d.clique.Nodes {
			d.td.process(g.Proc)
		}
		d.td.add(d.clique.Stop)
	}
	if err != nil {
		return fmt.Errorf("geth network: %w", err)
	}
	d.step("starting a %d-validator CometBFT network (cometbft testnet)", o.cometNodes)
	d.comet, err = devnet.StartComet(ctx, o.dir, o.cometNodes)
	if d.comet != nil {
		for _, c := range d.comet.Nodes {
			d.td.process(c.Proc)
		}
		d.td.add(d.comet.Stop)
	}
	if err != nil {
		return fmt.Errorf("cometbft network: %w", err)
	}
	if err := d.startAgent(ctx); err != nil {
		return err
	}
	if o.promPort != 0 {
		rules, n := devnet.ShortenFor(alerts.Rules, o.alertFor)
		d.step("starting Prometheus on 127.0.0.1:%d: it scrapes the agent every 2s with agent/alerts/chainwarden.rules.yml loaded (%d for: durations shortened to %s for the demo)",
			o.promPort, n, shortDuration(o.alertFor))
		d.prom, err = devnet.StartPrometheus(ctx, filepath.Join(o.dir, "prometheus"), devnet.PrometheusOptions{
			Port: o.promPort, Targets: []string{o.listen}, Interval: 2 * time.Second, Rules: rules})
		if d.prom != nil {
			d.td.process(d.prom.Proc)
			d.td.add(d.prom.Stop)
		}
		if err != nil {
			return fmt.Errorf("prometheus: %w", err)
		}
	}
	if o.withNomad {
		d.step("starting dockerd and a Nomad dev agent running jobs/geth and jobs/cometbft (scripts/demo-nomad.sh)")
		// The jobs' deployments are judged by this agent's verdict: their check asks its port.
		env := []string{"CONSUL_HTTP_ADDR=" + d.consul.Addr, "CHAINWARDEN_AGENT_PORT=" + listenPort(o.listen)}
		// Registered first: an interrupted start leaves a Nomad agent or dockerd that stop takes down. A hurry does
		// not kill it: it is what stops the jobs' containers, Nomad and dockerd, which are not in our process groups.
		d.td.add(func() {
			if err := runScript(context.Background(), nil, env, d.out, d.errOut, "scripts/demo-nomad.sh", "stop"); err != nil {
				fmt.Fprintln(d.errOut, "chainwarden-dev: nomad stop:", err)
			}
		})
		if err := runScript(ctx, d.td, env, d.out, d.errOut, "scripts/demo-nomad.sh", "start"); err != nil {
			return fmt.Errorf("nomad: %w", err)
		}
	}
	if o.proxyPort != 0 {
		d.step("starting the RPC proxy (consul-template + nginx) on 127.0.0.1:%d", o.proxyPort)
		stop, err := startScript(d.td, nil, d.out, d.errOut, "scripts/demo-proxy.sh", "run", d.consul.Addr,
			strconv.Itoa(o.proxyPort), filepath.Join(o.dir, "proxy"))
		if err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		d.td.add(stop)
	}
	return nil
}

// startAgent writes the agent's configuration for the networks and runs the agent (and Nomad discovery).
func (d *demo) startAgent(ctx context.Context) error {
	o := d.opts
	var b strings.Builder
	fmt.Fprintf(&b, "# written by chainwarden-dev\nconsul {\n  address = %q\n}\nlisten = %q\ninterval = \"1s\"\nhead_max_age = \"30s\"\n\n", d.consul.Addr, o.listen)
	if o.nomadAddr != "" {
		fmt.Fprintf(&b, "nomad {\n  address = %q\n}\n\n", o.nomadAddr)
	}
	for _, g := range d.clique.Nodes {
		fmt.Fprintf(&b, "node %q {\n  kind     = \"ethereum\"\n  rpc      = %q\n  ws       = %q\n  service  = \"eth-devnet\"\n  chain_id = %d\n  warn_lag = 2\n  max_lag  = 10\n  max_block_age = \"15s\"\n  min_peers = 0\n}\n\n",
			g.Name, g.RPC, g.WS, devnet.CliqueChainID)
	}
	for _, c := range d.comet.Nodes {
		fmt.Fprintf(&b, "node %q {\n  kind    = \"cometbft\"\n  rpc     = %q\n  ws      = \"ws://127.0.0.1:%d/websocket\"\n  service = \"cometbft-devnet\"\n  network = %q\n  max_block_age = \"15s\"\n}\n\n",
			c.Name, c.RPC, c.RPCPort, d.comet.ChainID)
	}
	cfgPath := filepath.Join(o.dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write agent config: %w", err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	d.cfg = cfg
	d.step("starting the agent (config: %s)", cfgPath)
	log := hclog.New(&hclog.LoggerOptions{Name: "chainwarden", Level: hclog.Info, Output: d.errOut})
	a, err := agent.New(cfg, log, agent.Options{ID: "dev", Consul: agent.ConsulAPI(d.consul.Client)})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	d.agent = a
	actx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	d.td.add(func() { cancel(); wg.Wait() })
	if o.nomadAddr != "" {
		api, err := discovery.Connect(o.nomadAddr)
		if err != nil {
			return err
		}
		w := discovery.New(api, "", log.Named("nomad"), nil)
		wg.Go(func() { w.Run(actx, func(nodes []nodespec.Node) { a.SetNodes(nodespec.SourceNomad, nodes) }) })
	}
	d.agentDone = make(chan error, 1)
	wg.Go(func() { d.agentDone <- a.Run(actx) })
	return nil
}

// tour waits until every node has passed once, shows the fleet as Consul sees it and what to try.
func (d *demo) tour(ctx context.Context) {
	o := d.opts
	_ = devnet.Poll(ctx, 60*time.Second, "nodes passing", nil, func() error {
		for _, h := range d.agent.Health() {
			if h.Status != "passing" {
				return fmt.Errorf("%s is %s", h.Node, h.Status)
			}
		}
		return nil
	})
	if ctx.Err() != nil {
		return
	}
	// Consul's catalog follows the local agent within a moment.
	var rows []fleet.Row
	err := devnet.Poll(ctx, 10*time.Second, "catalog", nil, func() error {
		var err error
		rows, err = fleet.Read(ctx, d.consul.Client, d.cfg.Consul.KVPrefix, d.cfg.HeadMaxAge, time.Now())
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
		fmt.Fprintln(d.out)
		_ = fleet.WriteTable(d.out, rows)
	}
	lagger := d.clique.Nodes[len(d.clique.Nodes)-1]
	frozen := d.comet.Nodes[len(d.comet.Nodes)-1].Proc.Cmd.Process.Pid
	fmt.Fprintf(d.out, `
The demo is running. Everything above is real: Consul, geth, CometBFT, and the agent judging them.

  Consul UI:        http://%s/ui/dc1/services   (services eth-devnet and cometbft-devnet)
  Agent page:       http://%s/   (every node, its status, why, its figures, recent transitions)
  Agent health:     curl -s http://%s/v1/health | less
  Metrics:          curl -s http://%s/metrics | grep chainwarden_node_
%s  Fleet:            CONSUL_HTTP_ADDR=%s chainwarden status
  Logs and data:    %s

Make a geth node fall behind (remove its peer, as a node that lost its peers would):
  curl -s -H 'content-type: application/json' %s \
    -d '{"jsonrpc":"2.0","id":1,"method":"admin_removePeer","params":["%s"]}'
  -> %s turns warning after ~3 blocks behind, critical after 10%s; to let it catch up again:
  curl -s -H 'content-type: application/json' %s \
    -d '{"jsonrpc":"2.0","id":1,"method":"admin_addPeer","params":["%s"]}'

Stop a CometBFT validator (the others keep the chain going):
  kill -STOP %d     (and kill -CONT %d to let it catch up)

%s
Press Ctrl-C to stop everything the demo started.
`, d.consul.Addr, o.listen, o.listen, o.listen, d.promLines(), d.consul.Addr, o.dir, lagger.RPC, d.clique.Nodes[0].Enode,
		lagger.Name, d.alertLine(), lagger.RPC, d.clique.Nodes[0].Enode, frozen, frozen, extras(o.proxyPort, o.withNomad))
}

// promLines are the tour's lines about Prometheus, when it runs.
func (d *demo) promLines() string {
	if d.prom == nil {
		return ""
	}
	return fmt.Sprintf("  Prometheus:       %s   (graph: %s; dashboards to import into Grafana: agent/dashboards/)\n",
		d.prom.AlertsPage(), d.prom.UIPage("graph"))
}

// alertLine is what Prometheus shows when a node falls behind, when it runs.
func (d *demo) alertLine() string {
	if d.prom == nil {
		return ""
	}
	return fmt.Sprintf(";\n     on %s its ChainNodeOutOfSync alert goes pending as it turns warning, firing %s later,\n     and is gone again once the node passes", d.prom.AlertsPage(), shortDuration(d.opts.alertFor))
}

// shortDuration writes whole minutes as "1m", not "1m0s".
func shortDuration(d time.Duration) string {
	if d >= time.Minute && d%time.Minute == 0 {
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
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

// listenPort is the port of a host:port listen address ("9464" when it has none).
func listenPort(listen string) string {
	if _, port, err := net.SplitHostPort(listen); err == nil && port != "" {
		return port
	}
	return "9464"
}
