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

func newLogger(level string) hclog.Logger {
	if level == "" {
		level = "info"
	}
	return hclog.New(&hclog.LoggerOptions{Name: "chainwarden", Level: hclog.LevelFromString(level), Output: os.Stderr})
}
