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

	"github.com/chainwarden/chainwarden/internal/nomadjob"
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
  run NAME [-detach]        register the spec and watch its deployment until healthy or failed
  stop JOB_ID [-purge]      deregister a job

flags for render, validate, plan and run:
  -var name=value           a job variable (repeatable)
  -var-file FILE            a file of variable assignments (repeatable)

Nomad is reached as the nomad CLI does: NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION, NOMAD_CACERT,
NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, NOMAD_TLS_SERVER_NAME, NOMAD_SKIP_VERIFY.
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
		evalID, err := client.Register(ctx, spec, job)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if *detach {
			fmt.Fprintf(stdout, "Job registration successful\nEvaluation ID: %s\n", evalID)
			return 0
		}
		if err := client.Watch(ctx, evalID); err != nil {
			if ctx.Err() != nil {
				fmt.Fprintf(stderr, "==> Monitoring stopped; the job is registered and Nomad carries on (nomad job status %s)\n", *job.ID)
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
