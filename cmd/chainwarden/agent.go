package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/backoff"
	"github.com/chainwarden/chainwarden/internal/consulacl"
	"github.com/chainwarden/chainwarden/internal/consulclient"
)

func init() {
	register("agent", "run the host agent: probe chain nodes, publish health to Consul", runAgent)
}

func runAgent(args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	path := fs.String("config", "/etc/chainwarden/agent.hcl", "agent configuration file (HCL)")
	check := fs.Bool("config-check", false, "validate the configuration and exit")
	pprofAddr := fs.String("pprof", "", "serve Go's /debug/pprof on this address (e.g. 127.0.0.1:6060); off by default")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if *check {
		fmt.Printf("%s: ok (%d nodes, %d references, %d volumes)\n", *path, len(cfg.Nodes), len(cfg.References), len(cfg.Volumes))
		return 0
	}
	log := newLogger(cfg.LogLevel)
	if *pprofAddr != "" {
		go func() {
			// net/http/pprof registers on the default mux, which nothing else here uses.
			if err := http.ListenAndServe(*pprofAddr, nil); err != nil {
				log.Error("pprof listener failed", "error", err)
			}
		}()
	}
	conn, err := consulclient.Open(cfg.Consul.Address)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	consul := conn.Client
	sctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := agent.Options{Consul: agent.ConsulAPI(consul), ID: agentID(sctx, conn, log.Named("consul"))}
	if host, _ := os.Hostname(); host != "" && host != opts.ID {
		opts.FormerIDs = []string{host} // the id of versions before it was the node name: what they left is ours
	}
	if cfg.Restart != nil { // restarts of stalled nodes go through the local Nomad agent (NOMAD_* variables apply)
		nc := nomadapi.DefaultConfig()
		if cfg.Nomad.Address != "" {
			nc.Address = cfg.Nomad.Address
		}
		nomad, err := nomadapi.NewClient(nc)
		if err != nil {
			log.Error("cannot start", "error", fmt.Errorf("nomad client: %w", err))
			return 1
		}
		opts.Nomad = nomad.Allocations()
	}
	a, err := agent.New(cfg, log, opts)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	ctx, refuse := context.WithCancelCause(sctx)
	defer refuse(nil)
	if err := checkACL(ctx, conn, cfg, a.ID(), log.Named("consul"), refuse); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	startDiscovery(ctx, cfg, a, log)
	startVolumes(ctx, cfg, consul, log, a.Metrics(), a.ID(), a.Height)

	// SIGHUP reloads the node and reference blocks; nodes gone from the file are deregistered.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			next, err := config.Load(*path)
			if err != nil {
				log.Error("reload failed, keeping the running configuration", "error", err)
				continue
			}
			a.SetNodes("config", next.Nodes)
			a.SetReferences(next.References)
			log.Info("configuration reloaded", "nodes", len(next.Nodes))
		}
	}()
	err = a.Run(ctx)
	if cause := context.Cause(ctx); sctx.Err() == nil && cause != nil && cause != context.Canceled {
		log.Error("agent stopped", "error", cause)
		return 1
	}
	if err != nil {
		log.Error("agent stopped", "error", err)
		return 1
	}
	log.Info("agent stopped")
	return 0
}

// checkACL checks the agent's Consul token against what cfg needs. A refusal on the first try is returned before
// anything is registered. When Consul cannot be asked (still starting at boot) the agent starts at once and keeps
// asking in the background; a refusal that comes later stops it through refuse. The token itself is never logged.
func checkACL(ctx context.Context, conn *consulclient.Conn, cfg *config.Config, id string, log hclog.Logger,
	refuse context.CancelCauseFunc) error {
	first := make(chan error, 1)
	go func() {
		b := backoff.New(time.Second, 30*time.Second)
		for try := 0; ; try++ {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := agent.CheckConsulACL(cctx, conn, cfg, id)
			cancel()
			decided := err == nil || consulacl.Decided(err)
			if try == 0 {
				if decided {
					first <- err
				} else {
					log.Warn("cannot check the consul token yet, starting anyway and will retry", "error", err)
					first <- nil
				}
			}
			if decided {
				switch {
				case err != nil:
					refuse(err)
				case res.Enabled:
					log.Info("consul token checked", "accessor", res.Accessor)
				default:
					log.Debug("consul has acls off")
				}
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(b.Next()):
			}
		}
	}()
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return nil
	}
}

// agentIDWait is how long the agent waits at start for its local Consul agent to say its node name. Short: the
// image starts the agent after Consul (systemd After=consul.service), and an agent started without Consul still
// probes and serves its health and metrics at once.
const agentIDWait = 3 * time.Second

// agentID is the agent's identity in Consul (service meta "agent", the heads it publishes, its flags): the local
// Consul agent's node name, which Consul keeps unique in the cluster. Another agent's heads are told from this
// agent's own by it, so two agents sharing one (hosts with the same hostname, the former default) would never see
// each other's heads. Without agent:read on the node, or with the local Consul agent not answering within
// agentIDWait, it is the hostname, as before, with a warning.
func agentID(ctx context.Context, conn *consulclient.Conn, log hclog.Logger) string {
	host, _ := os.Hostname()
	ctx, cancel := context.WithTimeout(ctx, agentIDWait)
	defer cancel()
	b := backoff.New(250*time.Millisecond, time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		name, err := agent.ConsulNodeName(cctx, conn.Client.Raw())
		ccancel()
		switch {
		case err == nil:
			return name
		case consulacl.IsDenied(err):
			log.Warn("the consul token cannot read this host's consul node (agent:read): the agent id is the hostname",
				"id", host)
			return host
		}
		select {
		case <-ctx.Done():
			log.Warn("the local consul agent did not say its node name: the agent id is the hostname", "id", host,
				"error", err)
			return host
		case <-time.After(b.Next()):
		}
	}
}

func newLogger(level string) hclog.Logger {
	if level == "" {
		level = "info"
	}
	return hclog.New(&hclog.LoggerOptions{Name: "chainwarden", Level: hclog.LevelFromString(level), Output: os.Stderr})
}
