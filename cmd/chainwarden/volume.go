package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/consulclient"
	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

func init() {
	register("volume", "ensure, snapshot, prune or list EBS-backed host volumes", runVolume)
}

const volumeUsage = `usage: chainwarden volume <ensure|snapshot|prune|list> [flags]

  ensure    give every configured volume (or those named with -volume) an attached, mounted EBS disk:
            reuse, else restore the newest snapshot of its family, else blank; fstab + Nomad host_volume config
  snapshot  snapshot the volume of a passing node (drain, freeze, snapshot, resume), then wait for completion
  prune     keep the newest -keep completed snapshots per family (default: keep_snapshots of the volume)
  list      list chainwarden's volumes and snapshots in this region
  plugin    Nomad dynamic host volume plugin: <fingerprint|create|delete>, request in DHV_* variables

Exit codes: 0 ok, 1 failure, 2 usage, 3 snapshot refused because the node is not passing.
AWS credentials come only from the SDK's standard chain (the instance role on EC2).
`

func runVolume(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return volumeMain(ctx, args, os.Stdout, os.Stderr)
}

type volumeFlags struct {
	config, ec2Endpoint, imdsEndpoint, fstab, nomadDir, byIDDir, lockDir string
	volumes                                                              stringList
	timeout                                                              time.Duration
	dryRun, noWait                                                       bool
	keep                                                                 int
}

func volumeMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, volumeUsage)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("volume "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f volumeFlags
	fs.StringVar(&f.config, "config", "/etc/chainwarden/agent.hcl", "agent configuration file (HCL) with the volume blocks")
	fs.Var(&f.volumes, "volume", "volume name (repeatable; default: every volume in the config)")
	fs.StringVar(&f.ec2Endpoint, "ec2-endpoint", "", "EC2 endpoint URL (default: the SDK's, or AWS_ENDPOINT_URL_EC2)")
	fs.StringVar(&f.imdsEndpoint, "imds-endpoint", "", "IMDS endpoint URL (default: the SDK's, or AWS_EC2_METADATA_SERVICE_ENDPOINT)")
	fs.DurationVar(&f.timeout, "timeout", 0, "overall deadline (default: 1h for ensure, 8h for snapshot, 10m otherwise)")
	switch sub {
	case "ensure":
		fs.StringVar(&f.fstab, "fstab", "/etc/fstab", "fstab file to keep the mount entries in")
		fs.StringVar(&f.nomadDir, "nomad-config-dir", "/etc/nomad.d", "directory for the Nomad client host_volume config files")
		fs.StringVar(&f.byIDDir, "by-id-dir", "/dev/disk/by-id", "directory of the NVMe by-id links")
		fs.StringVar(&f.lockDir, "lock-dir", "/run/chainwarden", "directory of the lock files")
	case "snapshot":
		fs.BoolVar(&f.noWait, "no-wait", false, "return once the snapshot started, without waiting for completion")
	case "prune":
		fs.BoolVar(&f.dryRun, "dry-run", false, "only say what would be deleted")
		fs.IntVar(&f.keep, "keep", 0, "completed snapshots to keep per family (default: the volume's keep_snapshots)")
	case "list":
	case "plugin":
		fs.StringVar(&f.fstab, "fstab", "/etc/fstab", "fstab file to keep the mount entries in")
		fs.StringVar(&f.byIDDir, "by-id-dir", "/dev/disk/by-id", "directory of the NVMe by-id links")
		fs.StringVar(&f.lockDir, "lock-dir", "/run/chainwarden", "directory of the lock files")
	default:
		fmt.Fprintf(stderr, "chainwarden volume: unknown subcommand %q\n\n%s", sub, volumeUsage)
		return 2
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if sub == "plugin" {
		return volumePlugin(ctx, f, fs.Arg(0), stdout)
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	vols, err := selectVolumes(cfg, f.volumes)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if sub == "snapshot" && len(vols) != 1 {
		fmt.Fprintln(stderr, "chainwarden volume snapshot: name exactly one volume with -volume")
		return 2
	}
	if f.timeout == 0 {
		f.timeout = map[string]time.Duration{"ensure": time.Hour, "snapshot": 8 * time.Hour}[sub]
		if f.timeout == 0 {
			f.timeout = 10 * time.Minute
		}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	log := newLogger(cfg.LogLevel).Named("volume")

	client, host, err := ebs.Connect(ctx, ebs.AWSOptions{EC2Endpoint: f.ec2Endpoint, IMDSEndpoint: f.imdsEndpoint})
	if err != nil {
		log.Error("cannot reach AWS", "error", err)
		return 1
	}
	log.Info("instance", "id", host.InstanceID, "az", host.AZ, "region", host.Region)
	m := &ebs.Manager{EC2: client, Host: host, Log: log,
		Devices: ebs.NVMe{ByIDDir: f.byIDDir},
		Paths:   ebs.Paths{Fstab: f.fstab, NomadConfigDir: f.nomadDir, LockDir: f.lockDir, StateDir: cfg.StateDir},
	}
	m.Timeouts.Snapshot = f.timeout

	switch sub {
	case "ensure":
		if m.EnsureAll(ctx, vols, stdout) != nil {
			return 1 // each failure is logged
		}
		return 0
	case "snapshot":
		c, err := consulclient.New(cfg.Consul.Address)
		if err != nil {
			log.Error("consul client", "error", err)
			return 1
		}
		m.Consul, m.KV, m.KVLayout = c.Agent(), c.KV(), kvlayout.New(cfg.Consul.KVPrefix)
		res, err := m.Snapshot(ctx, vols[0], !f.noWait)
		if errors.Is(err, ebs.ErrNotPassing) {
			log.Warn("snapshot refused", "error", err)
			return 3
		}
		if err != nil {
			log.Error("snapshot failed", "error", err)
			return 1
		}
		ebs.WriteSnapshot(stdout, vols[0], res)
		return 0
	case "prune":
		if m.PruneAll(ctx, vols, f.keep, f.dryRun, stdout) != nil {
			return 1 // each failure is logged
		}
		return 0
	default: // list
		l, err := m.List(ctx)
		if err != nil {
			log.Error("list failed", "error", err)
			return 1
		}
		if err := ebs.WriteListing(stdout, l, host); err != nil {
			log.Error("list failed", "error", err)
			return 1
		}
		return 0
	}
}

func selectVolumes(cfg *config.Config, names []string) ([]ebs.Volume, error) {
	if len(cfg.Volumes) == 0 {
		return nil, fmt.Errorf("%s has no volume blocks", cfg.File)
	}
	if len(names) == 0 {
		return cfg.Volumes, nil
	}
	var out []ebs.Volume
	for _, n := range names {
		i := slices.IndexFunc(cfg.Volumes, func(v ebs.Volume) bool { return v.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("no volume %q in %s", n, cfg.File)
		}
		out = append(out, cfg.Volumes[i])
	}
	return out, nil
}

// pluginScript is what to install in Nomad's host_volume_plugin_dir: Nomad runs plugins with only the DHV_*
// variables set, so the script provides PATH (blkid, mkfs, mount) before handing over.
const pluginScript = `#!/bin/sh
# Nomad dynamic host volume plugin "chainwarden-ebs": EBS-backed host volumes (see docs/VOLUMES.md).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec /usr/local/bin/chainwarden volume plugin "$@"
`

// volumePlugin speaks Nomad's dynamic host volume plugin protocol: the operation in $1 and DHV_OPERATION, JSON on
// stdout (logs go to stderr), exit 0 on success, {"error": ...} and exit 1 on failure.
func volumePlugin(ctx context.Context, f volumeFlags, op string, stdout io.Writer) int {
	log := newLogger("info").Named("volume-plugin")
	req, err := ebs.PluginRequestFromEnv(os.Getenv)
	if err == nil && op == "" {
		op = req.Operation
	}
	fail := func(err error) int {
		log.Error("plugin operation failed", "operation", op, "error", err)
		_ = json.NewEncoder(stdout).Encode(map[string]string{"error": err.Error()})
		return 1
	}
	if err != nil {
		return fail(err)
	}
	switch op {
	case "fingerprint":
		_ = json.NewEncoder(stdout).Encode(map[string]string{"version": ebs.PluginVersion})
		return 0
	case "create", "delete":
	case "script":
		fmt.Fprint(stdout, pluginScript)
		return 0
	default:
		return fail(fmt.Errorf("unknown operation %q (want fingerprint, create or delete)", op))
	}
	// Nomad's RPC gives create and delete 60 s.
	ctx, cancel := context.WithTimeout(ctx, 55*time.Second)
	defer cancel()
	m := &ebs.Manager{Log: log, Devices: ebs.NVMe{ByIDDir: f.byIDDir},
		Paths: ebs.Paths{Fstab: f.fstab, LockDir: f.lockDir}}
	if op == "delete" {
		if err := m.PluginDelete(ctx, req); err != nil {
			return fail(err)
		}
		return 0
	}
	client, host, err := ebs.Connect(ctx, ebs.AWSOptions{EC2Endpoint: f.ec2Endpoint, IMDSEndpoint: f.imdsEndpoint})
	if err != nil {
		return fail(err)
	}
	m.EC2, m.Host = client, host
	res, err := m.PluginCreate(ctx, req)
	if err != nil {
		return fail(err)
	}
	_ = json.NewEncoder(stdout).Encode(res)
	return 0
}
