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
	opts := agent.Options{Consul: agent.ConsulAPI(consul)}
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
	sctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, refuse := context.WithCancelCause(sctx)
	defer refuse(nil)
	if err := checkACL(ctx, conn, cfg, a.ID(), log.Named("consul"), refuse); err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	startDiscovery(ctx, cfg, a, log)
	startVolumes(ctx, cfg, consul, log, a.Metrics(), a.ID())

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

// aclWait is how long the agent waits at start for Consul to say whether its token will do, before it starts
// without the answer (Consul is still starting at boot) and keeps asking in the background.
const aclWait = 10 * time.Second

// checkACL checks the agent's Consul token against what cfg needs. A refusal Consul gives within aclWait is
// returned; a refusal that comes later (Consul was unreachable at start) stops the agent through refuse. Nothing is
// registered before the answer comes in time; the token itself is never logged.
func checkACL(ctx context.Context, conn *consulclient.Conn, cfg *config.Config, id string, log hclog.Logger,
	refuse context.CancelCauseFunc) error {
	answer := make(chan error, 1)
	go func() {
		b := backoff.New(time.Second, 30*time.Second)
		warned := false
		for {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := agent.CheckConsulACL(cctx, conn, cfg, id)
			cancel()
			switch {
			case err == nil && res.Enabled:
				log.Info("consul token checked", "accessor", res.Accessor)
			case err == nil:
				log.Debug("consul has acls off")
			case consulacl.Decided(err):
			default:
				if !warned {
					log.Warn("cannot check the consul token yet, will retry", "error", err)
					warned = true
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(b.Next()):
				}
				continue
			}
			select {
			case answer <- err:
			default:
			}
			if err != nil {
				refuse(err)
			}
			return
		}
	}()
	select {
	case err := <-answer:
		return err
	case <-time.After(aclWait):
		return nil
	case <-ctx.Done():
		return nil
	}
}

func newLogger(level string) hclog.Logger {
	if level == "" {
		level = "info"
	}
	return hclog.New(&hclog.LoggerOptions{Name: "chainwarden", Level: hclog.LevelFromString(level), Output: os.Stderr})
}
