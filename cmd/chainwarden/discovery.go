package main

import (
	"context"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
)

// startDiscovery starts the Nomad allocation watcher when the config has an enabled nomad block.
func startDiscovery(ctx context.Context, cfg *config.Config, a *agent.Agent, log hclog.Logger) {
	if cfg.Nomad == nil || (cfg.Nomad.Enabled != nil && !*cfg.Nomad.Enabled) {
		return
	}
	log.Warn("nomad discovery is configured but not available in this build")
}
