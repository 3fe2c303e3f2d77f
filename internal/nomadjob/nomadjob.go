// Package nomadjob is the logic of `chainwarden job`: the embedded Nomad job specs parsed by the Nomad server with
// the operator's variables, planned as a diff, registered with their HCL source kept as the job submission, and the
// deployment watched until it is healthy or failed. Errors from Nomad are shown the way the nomad CLI shows them.
package nomadjob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/jobs"
)

// ErrUnknownJob is returned for a job name that is not one of the embedded specs.
var ErrUnknownJob = errors.New("no such job spec")

// Spec is one embedded job spec with the variables an operator gave for it.
type Spec struct {
	Name   string
	Source string
	// Vars are the -var name=value pairs, as given (values are strings; Nomad converts them to the declared type).
	Vars map[string]string
	// VarFile is the content of -var-file files, HCL `name = value` lines, given to Nomad as is.
	VarFile string
}

// Load returns the embedded spec called name.
func Load(name string, vars map[string]string) (*Spec, error) {
	src, ok := jobs.Source(name)
	if !ok {
		return nil, fmt.Errorf("%w %q (have: %s)", ErrUnknownJob, name, strings.Join(jobs.Names(), ", "))
	}
	return &Spec{Name: name, Source: src, Vars: vars}, nil
}

// Names lists the embedded specs.
func Names() []string { return jobs.Names() }

// ParseVarFlags turns "name=value" arguments into a map, as `nomad job run -var` takes them.
func ParseVarFlags(flags []string) (map[string]string, error) {
	vars := map[string]string{}
	for _, f := range flags {
		name, value, ok := strings.Cut(f, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("invalid -var %q: expected name=value", f)
		}
		vars[name] = value
	}
	return vars, nil
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

// VariablesHCL renders the variables as the content of a variables file, the form the Nomad parse endpoint takes.
// A value that looks like a list, map, number or bool is given as an HCL expression, anything else as a string.
func (s *Spec) VariablesHCL() (string, error) {
	names := make([]string, 0, len(s.Vars))
	for n := range s.Vars {
		if !identifier.MatchString(n) {
			return "", fmt.Errorf("invalid -var name %q", n)
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString(s.VarFile)
	if s.VarFile != "" && !strings.HasSuffix(s.VarFile, "\n") {
		b.WriteByte('\n')
	}
	for _, n := range names {
		fmt.Fprintf(&b, "%s = %s\n", n, hclValue(s.Vars[n]))
	}
	return b.String(), nil
}

func hclValue(v string) string {
	t := strings.TrimSpace(v)
	if strings.HasPrefix(t, "[") || strings.HasPrefix(t, "{") {
		return t
	}
	return strconv.Quote(v)
}

// Client is the part of the Nomad API the job commands use.
type Client struct {
	API *nomadapi.Client
	// Out receives progress lines while a deployment is watched.
	Out io.Writer
	// Poll is how often evaluations and deployments are polled (blocking queries wait up to this long).
	Poll time.Duration
}

// NewClient returns a client configured from the standard NOMAD_* environment (NOMAD_ADDR, NOMAD_TOKEN,
// NOMAD_CACERT, NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, NOMAD_TLS_SERVER_NAME, NOMAD_SKIP_VERIFY, NOMAD_NAMESPACE,
// NOMAD_REGION), as the nomad CLI is.
func NewClient(out io.Writer) (*Client, error) {
	api, err := nomadapi.NewClient(nomadapi.DefaultConfig())
	if err != nil {
		return nil, fmt.Errorf("nomad client: %w", err)
	}
	return &Client{API: api, Out: out, Poll: 2 * time.Second}, nil
}

// Declared returns the names of the variables the spec declares.
func (s *Spec) Declared() (map[string]bool, error) {
	f, diags := hclsyntax.ParseConfig([]byte(s.Source), s.Name+jobs.Suffix, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, fmt.Errorf("Error parsing job file from %s: %s", s.Name+jobs.Suffix, diags.Error())
	}
	out := map[string]bool{}
	for _, b := range f.Body.(*hclsyntax.Body).Blocks {
		if b.Type == "variable" && len(b.Labels) == 1 {
			out[b.Labels[0]] = true
		}
	}
	return out, nil
}

// checkVars rejects a -var the spec doesn't declare, as the nomad CLI does (the parse endpoint would ignore it).
func (s *Spec) checkVars() error {
	declared, err := s.Declared()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(s.Vars))
	for n := range s.Vars {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !declared[n] {
			return fmt.Errorf("Error parsing job file from %s:\nUndefined -var variable: A %q variable was passed in but was not found in known variables. To declare variable %q, place this block in your job files:\n  variable %q {\n    type = string\n  }",
				s.Name+jobs.Suffix, n, n, n)
		}
	}
	return nil
}

// Parse has the Nomad server parse the spec with its variables (HCL2), returning the job.
func (c *Client) Parse(ctx context.Context, s *Spec) (*nomadapi.Job, error) {
	if err := s.checkVars(); err != nil {
		return nil, err
	}
	vars, err := s.VariablesHCL()
	if err != nil {
		return nil, err
	}
	type result struct {
		job *nomadapi.Job
		err error
	}
	done := make(chan result, 1)
	go func() {
		job, err := c.API.Jobs().ParseHCLOpts(&nomadapi.JobsParseRequest{JobHCL: s.Source, Variables: vars, Canonicalize: true})
		done <- result{job, err}
	}()
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("parse job %s: %w", s.Name, ctx.Err())
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("Error parsing job file from %s: %s", s.Name+jobs.Suffix, nomadMessage(r.err))
		}
		return r.job, nil
	}
}

// Validate has the Nomad server validate the job (what `nomad job validate` does).
func (c *Client) Validate(ctx context.Context, s *Spec) (*nomadapi.Job, []string, error) {
	job, err := c.Parse(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	resp, _, err := c.API.Jobs().Validate(job, (&nomadapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("Error validating job: %s", nomadMessage(err))
	}
	var warnings []string
	if resp.Warnings != "" {
		warnings = append(warnings, resp.Warnings)
	}
	if resp.Error != "" || len(resp.ValidationErrors) > 0 {
		msgs := resp.ValidationErrors
		if len(msgs) == 0 {
			msgs = []string{resp.Error}
		}
		return job, warnings, fmt.Errorf("Job validation errors:\n%s", indentLines(strings.Join(msgs, "\n"), "  "))
	}
	return job, warnings, nil
}

// Plan asks the scheduler what registering the job would change.
func (c *Client) Plan(ctx context.Context, job *nomadapi.Job) (*nomadapi.JobPlanResponse, error) {
	resp, _, err := c.API.Jobs().Plan(job, true, (&nomadapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("Error during plan: %s", nomadMessage(err))
	}
	return resp, nil
}

// Register submits the job, keeping the spec's HCL source and variables as the job submission (what the Nomad
// UI's "Job Definition" tab and `nomad job inspect -hcl` show). It returns the evaluation ID.
func (c *Client) Register(ctx context.Context, s *Spec, job *nomadapi.Job) (string, error) {
	sub := &nomadapi.JobSubmission{Source: s.Source, Format: "hcl2", VariableFlags: s.Vars, Variables: s.VarFile}
	resp, _, err := c.API.Jobs().RegisterOpts(job, &nomadapi.RegisterOptions{Submission: sub}, (&nomadapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("Error submitting job: %s", nomadMessage(err))
	}
	if resp.Warnings != "" {
		c.printf("==> Job Warnings:\n%s\n", indentLines(resp.Warnings, "    "))
	}
	return resp.EvalID, nil
}

// Stop deregisters the job (purge removes it from Nomad's state entirely).
func (c *Client) Stop(ctx context.Context, jobID string, purge bool) (string, error) {
	evalID, _, err := c.API.Jobs().Deregister(jobID, purge, (&nomadapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("Error deregistering job: %s", nomadMessage(err))
	}
	return evalID, nil
}

func (c *Client) printf(format string, args ...any) {
	if c.Out != nil {
		fmt.Fprintf(c.Out, format, args...)
	}
}

// nomadMessage strips the API client's "Unexpected response code: 400 (...)" wrapper, leaving the server's own text.
func nomadMessage(err error) string {
	msg := err.Error()
	if strings.HasPrefix(msg, "Unexpected response code: ") {
		if i := strings.Index(msg, " ("); i > 0 && strings.HasSuffix(msg, ")") {
			return strings.TrimSpace(msg[i+2 : len(msg)-1])
		}
	}
	return msg
}

func indentLines(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}

// Run parses, registers and watches a spec until its deployment is healthy or has failed.
func (c *Client) Run(ctx context.Context, s *Spec) (*nomadapi.Job, error) {
	job, err := c.Parse(ctx, s)
	if err != nil {
		return nil, err
	}
	evalID, err := c.Register(ctx, s, job)
	if err != nil {
		return nil, err
	}
	return job, c.Watch(ctx, evalID)
}
