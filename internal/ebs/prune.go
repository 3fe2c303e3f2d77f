package ebs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/clock"
)

// PruneResult lists the completed snapshots of a family kept and deleted (or, dry, to be deleted).
type PruneResult struct {
	Family  string
	Kept    []string
	Deleted []string
	DryRun  bool
}

// Prune keeps the newest keep completed snapshots of the volume's family and deletes older completed ones.
// Pending and failed snapshots are not touched nor counted; keep is at least 1, so the only completed snapshot
// is never deleted.
func (m *Manager) Prune(ctx context.Context, vol Volume, keep int, dryRun bool) (*PruneResult, error) {
	m.defaults()
	if keep < 1 {
		keep = 1
	}
	res := &PruneResult{Family: Family(vol), DryRun: dryRun}
	snaps, err := m.familySnapshots(ctx, res.Family, "completed")
	if err != nil {
		return nil, err
	}
	for i, s := range snaps {
		id := aws.ToString(s.SnapshotId)
		if s.State != types.SnapshotStateCompleted || i < keep {
			res.Kept = append(res.Kept, id)
			continue
		}
		if dryRun {
			m.Log.Info("would delete snapshot (dry run)", "family", res.Family, "snapshot", id,
				"started", aws.ToTime(s.StartTime).Format(time.RFC3339))
			res.Deleted = append(res.Deleted, id)
			continue
		}
		if _, err := call(ctx, m, "DeleteSnapshot", func(ctx context.Context) (*ec2.DeleteSnapshotOutput, error) {
			return m.EC2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(id)})
		}); err != nil {
			return res, fmt.Errorf("prune %s: %w", res.Family, err)
		}
		m.Log.Info("deleted snapshot", "family", res.Family, "snapshot", id,
			"started", aws.ToTime(s.StartTime).Format(time.RFC3339))
		res.Deleted = append(res.Deleted, id)
	}
	return res, nil
}

// Listing is every chainwarden volume and snapshot in the region.
type Listing struct {
	Volumes   []types.Volume
	Snapshots []types.Snapshot
}

// List returns the volumes and snapshots carrying chainwarden's tags in this region (snapshots newest first).
func (m *Manager) List(ctx context.Context) (*Listing, error) {
	m.defaults()
	vols, err := m.describeVolumes(ctx, []types.Filter{filter("tag-key", TagVolume)})
	if err != nil {
		return nil, err
	}
	snaps, err := m.describeSnapshots(ctx, []types.Filter{filter("tag-key", TagFamily)})
	if err != nil {
		return nil, err
	}
	return &Listing{Volumes: vols, Snapshots: snaps}, nil
}

// Scheduler snapshots and prunes volumes with a snapshot interval, from the agent. A family's next snapshot is due
// one interval after its newest one (whoever took it), so restarting the agent does not snapshot again at once.
// A refused (node not passing) or failed snapshot is retried after RetryAfter.
type Scheduler struct {
	Manager    *Manager
	Volumes    []Volume
	Log        hclog.Logger
	RetryAfter time.Duration // default 15m
	Jitter     time.Duration // up to this much is added to each wait (default 1m); negative: none
	Clock      clock.Clock   // nil: the Manager's clock
}

func (s *Scheduler) defaults() {
	s.Manager.defaults()
	if s.Log == nil {
		s.Log = hclog.NewNullLogger()
	}
	if s.RetryAfter <= 0 {
		s.RetryAfter = 15 * time.Minute
	}
	if s.Clock == nil {
		s.Clock = s.Manager.Clock
	}
	if s.Jitter == 0 {
		s.Jitter = time.Minute
	}
}

// Run schedules every volume with a snapshot interval until ctx ends.
func (s *Scheduler) Run(ctx context.Context) {
	s.defaults()
	var wg sync.WaitGroup
	for _, vol := range s.Volumes {
		if vol.SnapshotInterval <= 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.loop(ctx, vol)
		}()
	}
	wg.Wait()
}

func (s *Scheduler) loop(ctx context.Context, vol Volume) {
	log := s.Log.With("volume", vol.Name, "family", Family(vol))
	for {
		wait, err := s.Due(ctx, vol)
		if err != nil {
			log.Warn("cannot tell when the next snapshot is due", "error", err, "retry_in", s.RetryAfter)
			wait = s.RetryAfter
		}
		if wait > 0 {
			// A little jitter keeps hosts of one family from snapshotting in the same second.
			if s.Jitter > 0 {
				wait += time.Duration(rand.Int64N(int64(s.Jitter)))
			}
			log.Debug("next snapshot", "in", wait.Round(time.Second))
			if clock.Sleep(ctx, s.Clock, wait) != nil {
				return
			}
			if wait, err := s.Due(ctx, vol); err == nil && wait > 0 {
				continue // another host took one meanwhile
			}
		}
		if err := s.RunOnce(ctx, vol); err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("scheduled snapshot failed", "error", err, "retry_in", s.RetryAfter)
			if clock.Sleep(ctx, s.Clock, s.RetryAfter) != nil {
				return
			}
		}
	}
}

// Due returns how long until the family's next snapshot is due (<= 0: now).
func (s *Scheduler) Due(ctx context.Context, vol Volume) (time.Duration, error) {
	s.defaults()
	snaps, err := s.Manager.familySnapshots(ctx, Family(vol), "")
	if err != nil {
		return 0, err
	}
	for _, sn := range snaps { // newest first; a pending one counts, it will complete
		if sn.State == types.SnapshotStateError {
			continue
		}
		return aws.ToTime(sn.StartTime).Add(vol.SnapshotInterval).Sub(s.Clock.Now()), nil
	}
	return 0, nil
}

// RunOnce snapshots the volume (waiting for completion) and prunes its family.
func (s *Scheduler) RunOnce(ctx context.Context, vol Volume) error {
	res, err := s.Manager.Snapshot(ctx, vol, true)
	if err != nil {
		return err
	}
	s.Log.Info("scheduled snapshot completed", "volume", vol.Name, "snapshot", res.SnapshotID, "height", res.Height)
	_, err = s.Manager.Prune(ctx, vol, vol.Keep, false)
	return err
}
