package testenv

import (
	"context"
	"testing"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/chainwarden/chainwarden/internal/nomadjob"
)

// Cluster is a real Nomad (docker driver on the project's dockerd, host volumes) registered with a real Consul, and
// the job client `chainwarden job` uses, reporting deployments to the test log: for tests that run the job specs.
type Cluster struct {
	Consul *Consul
	Docker *Docker
	Nomad  *Nomad
	Jobs   *nomadjob.Client
}

// StartCluster starts Consul, dockerd and Nomad with the named host volumes; all stop when the test ends.
func StartCluster(t testing.TB, volumes ...string) *Cluster {
	t.Helper()
	c := &Cluster{Consul: StartConsul(t), Docker: StartDocker(t)}
	c.Nomad = StartNomad(t, NomadOptions{HostVolumes: volumes, Docker: c.Docker, ConsulAddr: c.Consul.Addr})
	c.Jobs = &nomadjob.Client{API: c.Nomad.Client, Out: t.Output(), Poll: time.Second}
	return c
}

// Run runs an embedded spec as `chainwarden job run NAME -var ...` does and waits for its deployment (4 minutes at
// most); it returns the job as registered.
func (c *Cluster) Run(t testing.TB, name string, vars map[string]string) *nomadapi.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	spec, err := nomadjob.Load(name, vars)
	if err != nil {
		t.Fatal(err)
	}
	job, err := c.Jobs.Run(ctx, spec)
	if err != nil {
		t.Fatalf("run %s: %v", name, err)
	}
	return job
}

// Stop stops a job as `chainwarden job stop` does (without purging it) and waits for it (a minute at most).
func (c *Cluster) Stop(t testing.TB, jobID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Jobs.Stop(ctx, jobID, false); err != nil {
		t.Fatalf("stop %s: %v", jobID, err)
	}
}

// Allocation returns the (first) allocation of a job, in full.
func (c *Cluster) Allocation(t testing.TB, jobID string) *nomadapi.Allocation {
	t.Helper()
	stubs, _, err := c.Nomad.Client.Jobs().Allocations(jobID, false, nil)
	if err != nil || len(stubs) == 0 {
		t.Fatalf("allocations of %s: %v %v", jobID, stubs, err)
	}
	a, _, err := c.Nomad.Client.Allocations().Info(stubs[0].ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// PutVar writes a Nomad Variable, as `nomad var put` does.
func (c *Cluster) PutVar(t testing.TB, path string, items map[string]string) {
	t.Helper()
	if _, _, err := c.Nomad.Client.Variables().Create(&nomadapi.Variable{Path: path, Items: items}, nil); err != nil {
		t.Fatalf("nomad var put %s: %v", path, err)
	}
}
