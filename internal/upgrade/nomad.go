package upgrade

import (
	"context"
	"fmt"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
)

// NomadAPI adapts Nomad's API client to Nomad.
func NomadAPI(c *nomadapi.Client) Nomad { return nomadClient{c} }

type nomadClient struct{ c *nomadapi.Client }

func (n nomadClient) Job(ctx context.Context, id string) (*nomadapi.Job, error) {
	job, _, err := n.c.Jobs().Info(id, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if strings.Contains(err.Error(), "404") {
			return nil, nil
		}
		return nil, fmt.Errorf("Error reading job %q: %w", id, err)
	}
	return job, nil
}

func (n nomadClient) Versions(ctx context.Context, id string) ([]*nomadapi.Job, error) {
	versions, _, _, err := n.c.Jobs().Versions(id, false, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("Error reading the versions of job %q: %w", id, err)
	}
	return versions, nil
}

func (n nomadClient) Allocations(ctx context.Context, id string, index uint64) ([]*nomadapi.AllocationListStub, uint64, error) {
	q := (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx)
	stubs, meta, err := n.c.Jobs().Allocations(id, false, q)
	if err != nil {
		return nil, index, fmt.Errorf("Error reading the allocations of job %q: %w", id, err)
	}
	return stubs, meta.LastIndex, nil
}

func (n nomadClient) Stop(ctx context.Context, id string) (string, error) {
	evalID, _, err := n.c.Jobs().Deregister(id, false, (&nomadapi.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("Error deregistering job %q: %w", id, err)
	}
	return evalID, nil
}

func (n nomadClient) Revert(ctx context.Context, id string, version uint64, enforcePrior *uint64) (string, error) {
	resp, _, err := n.c.Jobs().Revert(id, version, enforcePrior, (&nomadapi.WriteOptions{}).WithContext(ctx), "", "")
	if err != nil {
		return "", fmt.Errorf("Error reverting job %q to version %d: %w", id, version, err)
	}
	return resp.EvalID, nil
}
