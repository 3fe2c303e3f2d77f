package main

import (
	"context"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/volops"
)

// startVolumes runs the agent's EBS volume work beside it: scheduled snapshots of volumes with a
// snapshot_interval, growing volumes with a grow block (its metrics registered with reg), and the operations
// `chainwarden job` asks on the volumes of nodes (snapshot before an upgrade, restore on a revert). Without AWS
// (no instance metadata, no credentials) the agent keeps running and says the volume work is off.
func startVolumes(ctx context.Context, cfg *config.Config, consul *consulapi.Client, log hclog.Logger,
	reg prometheus.Registerer, agentID string, height func(node string) (uint64, bool)) {
	var scheduled, growing, written []ebs.Volume
	for _, v := range cfg.Volumes {
		if v.SnapshotInterval > 0 {
			scheduled = append(scheduled, v)
		}
		if v.Grow != nil {
			growing = append(growing, v)
		}
		if v.Node != "" {
			written = append(written, v)
		}
	}
	if len(scheduled) == 0 && len(growing) == 0 && len(written) == 0 {
		return
	}
	client, host, err := ebs.Connect(ctx, ebs.AWSOptions{})
	if err != nil {
		log.Error("volume work (scheduled snapshots, growth, snapshots and restores for job upgrades) is off: cannot reach AWS", "error", err)
		return
	}
	m := &ebs.Manager{EC2: client, Host: host, Log: log.Named("volume"), Consul: consul.Agent(), KV: consul.KV(),
		Height: height, KVLayout: kvlayout.New(cfg.Consul.KVPrefix), Paths: ebs.Paths{StateDir: cfg.StateDir}}
	m.Init() // shared by the goroutines below
	if len(scheduled) > 0 {
		go (&ebs.Scheduler{Manager: m, Volumes: scheduled, Log: log.Named("snapshots")}).Run(ctx)
	}
	if len(growing) > 0 {
		go (&ebs.Grower{Manager: m, Volumes: growing, Log: log.Named("grow"), Metrics: ebs.NewGrowMetrics(reg)}).Run(ctx)
	}
	if len(written) > 0 {
		ops := &ebs.Ops{Manager: m, Volumes: written}
		go (&volops.Worker{KV: consul.KV(), Txn: consul.Txn(), Layout: kvlayout.New(cfg.Consul.KVPrefix), AgentID: agentID,
			Holders: ops.Holders(), Handler: ops, Log: log.Named("volume-ops")}).Run(ctx)
	}
}
