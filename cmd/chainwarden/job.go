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
	"strings"
	"syscall"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/consulclient"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/nomadjob"
	"github.com/chainwarden/chainwarden/internal/upgrade"
	"github.com/chainwarden/chainwarden/internal/volops"
)

func init() {
	register("job", "list, render, plan or run the embedded Nomad job specs", runJob)
}

const jobUsage = `usage: chainwarden job <subcommand> [flags] [NAME]

subcommands:
  list                      the embedded job specs
  render NAME [-json]       the spec's HCL; with -json (and -var), the job as the Nomad server parses it
  validate NAME             parse and validate the spec on the Nomad server
  plan NAME [-verbose]      what running the spec would change, as a diff
  run NAME [-detach]        register the spec and watch its deployment until healthy or failed; when it
                            restarts running stateful nodes on a new version, first snapshot their EBS volumes
                            (through the agents holding them; only passing nodes) as the restore point
      [-force]              upgrade even when no node could be snapshotted
      [-no-snapshot]        skip the pre-upgrade snapshots
  revert JOB_ID [-version N] [-restore-volumes]
                            go back to version N (default: the one before the current); with -restore-volumes,
                            stop the job, have the agents restore each node's volume from the snapshot taken
                            before version N was upgraded (the replaced volumes are detached and kept), then revert
  stop JOB_ID [-purge]      deregister a job

flags for render, validate, plan and run:
  -var name=value           a job variable (repeatable)
  -var-file FILE            a file of variable assignments (repeatable)

Nomad is reached as the nomad CLI does: NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION, NOMAD_CACERT,
NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, NOMAD_TLS_SERVER_NAME, NOMAD_SKIP_VERIFY. The agents are reached through
Consul (run and revert): CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ... or -consul-address, and -kv-prefix (the agents'
consul kv_prefix, default chainwarden).
`

func runJob(args []string) int {
	return jobMain(args, os.Stdout, os.Stderr)
}

func jobMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fmt.Fprint(stderr, jobUsage)
		return 2
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("chainwarden job "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, jobUsage) }
	var vars, varFiles stringList
	fs.Var(&vars, "var", "a job variable name=value (repeatable)")
	fs.Var(&varFiles, "var-file", "a file of variable assignments (repeatable)")
	asJSON := fs.Bool("json", false, "render: the job as Nomad parses it, in JSON")
	verbose := fs.Bool("verbose", false, "plan: show unchanged fields too")
	detach := fs.Bool("detach", false, "run: return once the job is registered, without watching the deployment")
	purge := fs.Bool("purge", false, "stop: remove the job from Nomad's state")
	force := fs.Bool("force", false, "run: upgrade even when no node could be snapshotted first")
	noSnapshot := fs.Bool("no-snapshot", false, "run: no pre-upgrade snapshots")
	toVersion := fs.Int64("version", -1, "revert: the version to go back to (default: the one before the current)")
	restoreVolumes := fs.Bool("restore-volumes", false, "revert: restore the volumes from the pre-upgrade snapshots of that version")
	consulAddr := fs.String("consul-address", "", "Consul agent address (default: CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
	kvPrefix := fs.String("kv-prefix", "", "the agents' Consul KV prefix (default chainwarden)")
	pos, err := parseInterspersed(fs, rest)
	if err != nil {
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if sub == "list" {
		for _, n := range nomadjob.Names() {
			fmt.Fprintln(stdout, n)
		}
		return 0
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "chainwarden job %s: expected one NAME, got %d arguments\n\n%s", sub, len(pos), jobUsage)
		return 2
	}
	name := pos[0]

	client, err := nomadjob.NewClient(stdout)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if sub == "revert" {
		up, err := newUpgrader(client, stdout, *consulAddr, *kvPrefix)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		o := upgrade.RevertOptions{RestoreVolumes: *restoreVolumes}
		if *toVersion >= 0 {
			v := uint64(*toVersion)
			o.Version = &v
		}
		evalID, err := up.Revert(ctx, name, o)
		if err != nil {
			fmt.Fprintf(stderr, "==> %v\n", err)
			return 1
		}
		return watch(ctx, client, evalID, name, stderr)
	}
	if sub == "stop" {
		evalID, err := client.Stop(ctx, name, *purge)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "==> Job %q stopped (evaluation %q)\n", name, evalID)
		return 0
	}

	values, err := nomadjob.ParseVarFlags(vars)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	spec, err := nomadjob.Load(name, values)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, f := range varFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(stderr, "Error reading variable file: %v\n", err)
			return 1
		}
		spec.VarFile += string(b) + "\n"
	}

	switch sub {
	case "render":
		if !*asJSON {
			fmt.Fprint(stdout, spec.Source)
			return 0
		}
		job, err := client.Parse(ctx, spec)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(job); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		return 0
	case "validate":
		_, warnings, err := client.Validate(ctx, spec)
		for _, w := range warnings {
			fmt.Fprintf(stderr, "Job Warnings:\n%s\n", w)
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintln(stdout, "Job validation successful")
		return 0
	case "plan":
		job, err := client.Parse(ctx, spec)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		resp, err := client.Plan(ctx, job)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if !nomadjob.WritePlan(stdout, resp, *verbose) {
			return 1
		}
		fmt.Fprintf(stdout, "\nTo submit the job: chainwarden job run %s%s\n", name, varArgs(vars))
		return 0
	case "run":
		job, err := client.Parse(ctx, spec)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if !*noSnapshot {
			if err := beforeUpgrade(ctx, client, job, stdout, *consulAddr, *kvPrefix, *force); err != nil {
				fmt.Fprintf(stderr, "==> %v\n", err)
				return 1
			}
		}
		evalID, err := client.Register(ctx, spec, job)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if *detach {
			fmt.Fprintf(stdout, "Job registration successful\nEvaluation ID: %s\n", evalID)
			return 0
		}
		return watch(ctx, client, evalID, *job.ID, stderr)
	default:
		fmt.Fprintf(stderr, "chainwarden job: unknown subcommand %q\n\n%s", sub, jobUsage)
		return 2
	}
}

// parseInterspersed parses flags that may come before or after the positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func varArgs(vars []string) string {
	var b strings.Builder
	for _, v := range vars {
		fmt.Fprintf(&b, " -var %q", v)
	}
	return b.String()
}

// watch follows an evaluation and its deployment, as run does, and returns the exit code.
func watch(ctx context.Context, client *nomadjob.Client, evalID, jobID string, stderr io.Writer) int {
	if err := client.Watch(ctx, evalID); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "==> Monitoring stopped; the job is registered and Nomad carries on (nomad job status %s)\n", jobID)
			return 0
		}
		var de *nomadjob.DeploymentError
		var pe *nomadjob.PlacementError
		switch {
		case errors.As(err, &pe), errors.As(err, &de):
			fmt.Fprintf(stderr, "==> %v\n", err)
		default:
			fmt.Fprintln(stderr, err)
		}
		return 1
	}
	return 0
}

// newUpgrader reaches the agents through Consul KV.
func newUpgrader(client *nomadjob.Client, out io.Writer, consulAddr, kvPrefix string) (*upgrade.Upgrader, error) {
	c, err := consulclient.New(consulAddr)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	ops := &volops.Client{KV: c.KV(), Txn: c.Txn(), Layout: kvlayout.New(kvPrefix), Who: "chainwarden job on " + host}
	return &upgrade.Upgrader{Nomad: upgrade.NomadAPI(client.API), Ops: ops, Out: out}, nil
}

// beforeUpgrade plans the job and has the agents snapshot the volumes of the stateful nodes it will restart.
func beforeUpgrade(ctx context.Context, client *nomadjob.Client, job *nomadapi.Job, out io.Writer, consulAddr, kvPrefix string, force bool) error {
	plan, err := client.Plan(ctx, job)
	if err != nil {
		return err
	}
	up, err := newUpgrader(client, out, consulAddr, kvPrefix)
	if err != nil {
		return err
	}
	_, err = up.BeforeUpgrade(ctx, job, plan, force)
	if err != nil && force && !errors.Is(err, upgrade.ErrNoRestorePoint) {
		fmt.Fprintf(out, "==> No pre-upgrade snapshots (%v); upgrading anyway (-force)\n", err)
		return nil
	}
	return err
}
