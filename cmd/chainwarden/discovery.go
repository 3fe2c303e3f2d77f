package main

import (
	"context"

	"github.com/hashicorp/go-hclog"

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
	api, err := discovery.Connect(cfg.Nomad.Address)
	if err != nil {
		log.Error("nomad discovery is off", "error", err)
		return
	}
	w := discovery.New(api, "", log.Named("nomad"), nil)
	go w.Run(ctx, func(nodes []nodespec.Node) { a.SetNodes(nodespec.SourceNomad, nodes) })
}
