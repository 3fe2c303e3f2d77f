package nomadjob

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	nomadapi "github.com/hashicorp/nomad/api"
)

// DeploymentError is a deployment that ended other than successful.
type DeploymentError struct {
	ID          string
	Status      string
	Description string
	// Reasons are the last task events of the allocations that were not healthy.
	Reasons []string
}

func (e *DeploymentError) Error() string {
	msg := fmt.Sprintf("Deployment %q %s: %s", short(e.ID), e.Status, e.Description)
	if len(e.Reasons) > 0 {
		msg += "\n" + indentLines(strings.Join(e.Reasons, "\n"), "  ")
	}
	return msg
}

// PlacementError is an evaluation that could not place every allocation (no node with the host volume, not
// enough resources, ...).
type PlacementError struct {
	EvalID string
	Failed map[string]*nomadapi.AllocationMetric
}

func (e *PlacementError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Evaluation %q finished with status \"complete\" but failed to place all allocations:\n", short(e.EvalID))
	writeFailedAllocs(&b, e.Failed, "    ")
	return strings.TrimRight(b.String(), "\n")
}

// Watch follows the evaluation and then the deployment it created until the deployment is successful, printing
// progress. It returns a *PlacementError or *DeploymentError when Nomad could not do it.
func (c *Client) Watch(ctx context.Context, evalID string) error {
	c.printf("==> %s: Monitoring evaluation %q\n", now(), short(evalID))
	eval, err := c.waitEval(ctx, evalID)
	if err != nil {
		return err
	}
	c.printf("    %s: Evaluation status changed: %q\n", now(), eval.Status)
	if eval.Status != "complete" {
		return fmt.Errorf("Evaluation %q finished with status %q: %s", short(eval.ID), eval.Status, eval.StatusDescription)
	}
	if len(eval.FailedTGAllocs) > 0 {
		return &PlacementError{EvalID: eval.ID, Failed: eval.FailedTGAllocs}
	}
	if eval.DeploymentID == "" {
		c.printf("    %s: Evaluation %q finished with no deployment (nothing to change)\n", now(), short(eval.ID))
		return nil
	}
	return c.WatchDeployment(ctx, eval.DeploymentID)
}

func (c *Client) waitEval(ctx context.Context, evalID string) (*nomadapi.Evaluation, error) {
	var index uint64
	for {
		q := (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: c.poll()}).WithContext(ctx)
		eval, meta, err := c.API.Evaluations().Info(evalID, q)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("watch evaluation %s: %w", short(evalID), ctx.Err())
			}
			return nil, fmt.Errorf("Error reading evaluation: %s", nomadMessage(err))
		}
		if eval.Status != "pending" {
			return eval, nil
		}
		index = meta.LastIndex
	}
}

// WatchDeployment waits for a deployment to finish, printing its progress.
func (c *Client) WatchDeployment(ctx context.Context, id string) error {
	c.printf("==> %s: Monitoring deployment %q\n", now(), short(id))
	var index uint64
	last := ""
	for {
		q := (&nomadapi.QueryOptions{WaitIndex: index, WaitTime: c.poll()}).WithContext(ctx)
		d, meta, err := c.API.Deployments().Info(id, q)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("watch deployment %s: %w", short(id), ctx.Err())
			}
			return fmt.Errorf("Error reading deployment: %s", nomadMessage(err))
		}
		index = meta.LastIndex
		if line := progress(d); line != last {
			c.printf("    %s: %s\n", now(), line)
			last = line
		}
		switch d.Status {
		case "successful":
			c.printf("    %s: Deployment %q successful\n", now(), short(id))
			return nil
		case "failed", "cancelled", "blocked":
			return &DeploymentError{ID: d.ID, Status: d.Status, Description: d.StatusDescription, Reasons: c.unhealthyReasons(ctx, d.ID)}
		}
	}
}

func progress(d *nomadapi.Deployment) string {
	groups := make([]string, 0, len(d.TaskGroups))
	for g := range d.TaskGroups {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	parts := []string{fmt.Sprintf("%s (%s)", d.Status, d.StatusDescription)}
	for _, g := range groups {
		s := d.TaskGroups[g]
		parts = append(parts, fmt.Sprintf("group %q desired %d placed %d healthy %d unhealthy %d",
			g, s.DesiredTotal, s.PlacedAllocs, s.HealthyAllocs, s.UnhealthyAllocs))
	}
	return strings.Join(parts, "; ")
}

// unhealthyReasons collects the last few task events of the deployment's allocations that are not healthy.
func (c *Client) unhealthyReasons(ctx context.Context, deploymentID string) []string {
	stubs, _, err := c.API.Deployments().Allocations(deploymentID, (&nomadapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return []string{"(could not list the deployment's allocations: " + nomadMessage(err) + ")"}
	}
	var out []string
	for _, s := range stubs {
		if s.DeploymentStatus != nil && s.DeploymentStatus.Healthy != nil && *s.DeploymentStatus.Healthy {
			continue
		}
		names := make([]string, 0, len(s.TaskStates))
		for t := range s.TaskStates {
			names = append(names, t)
		}
		sort.Strings(names)
		for _, t := range names {
			ts := s.TaskStates[t]
			evs := ts.Events
			if len(evs) > 3 {
				evs = evs[len(evs)-3:]
			}
			for _, e := range evs {
				msg := e.DisplayMessage
				if msg == "" {
					msg = e.Message
				}
				out = append(out, fmt.Sprintf("alloc %s task %q (%s): %s: %s", short(s.ID), t, ts.State, e.Type, msg))
			}
		}
	}
	return out
}

func (c *Client) poll() time.Duration {
	if c.Poll <= 0 {
		return 2 * time.Second
	}
	return c.Poll
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func now() string { return time.Now().Format("2006-01-02T15:04:05Z07:00") }
