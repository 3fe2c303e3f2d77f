package main

import (
	"context"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

// startSnapshots runs the scheduled EBS snapshots of volumes that have a snapshot_interval, beside the agent.
// Without AWS (no instance metadata, no credentials) the agent keeps running and says scheduled snapshots are off.
func startSnapshots(ctx context.Context, cfg *config.Config, consul *consulapi.Client, log hclog.Logger) {
	var vols []ebs.Volume
	for _, v := range cfg.Volumes {
		if v.SnapshotInterval > 0 {
			vols = append(vols, v)
		}
	}
	if len(vols) == 0 {
		return
	}
	client, host, err := ebs.Connect(ctx, ebs.AWSOptions{})
	if err != nil {
		log.Error("scheduled volume snapshots are off: cannot reach AWS", "error", err)
		return
	}
	m := &ebs.Manager{EC2: client, Host: host, Log: log.Named("volume"), Consul: consul.Agent(), KV: consul.KV(),
		KVLayout: kvlayout.New(cfg.Consul.KVPrefix)}
	go (&ebs.Scheduler{Manager: m, Volumes: vols, Log: log.Named("snapshots")}).Run(ctx)
}
