package main

import (
	"context"

	"github.com/hashicorp/go-hclog"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/discovery"
	"github.com/chainwarden/chainwarden/internal/nodespec"
)

// startDiscovery watches the allocations on the local Nomad client when the config has an enabled nomad block, and
// hands the agent the chain nodes they run (task meta chainwarden_*, see docs/JOBS.md).
func startDiscovery(ctx context.Context, cfg *config.Config, a *agent.Agent, log hclog.Logger) {
	if cfg.Nomad == nil || (cfg.Nomad.Enabled != nil && !*cfg.Nomad.Enabled) {
		return
	}
	nc := nomadapi.DefaultConfig() // NOMAD_ADDR, NOMAD_TOKEN, NOMAD_CACERT, ... apply
	if cfg.Nomad.Address != "" {
		nc.Address = cfg.Nomad.Address
	}
	client, err := nomadapi.NewClient(nc)
	if err != nil {
		log.Error("nomad discovery is off", "error", err)
		return
	}
	w := discovery.New(discovery.Client(client), "", log.Named("nomad"), nil)
	go w.Run(ctx, func(nodes []nodespec.Node) { a.SetNodes(nodespec.SourceNomad, nodes) })
}
