package ebs

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/chainwarden/chainwarden/internal/volops"
)

// Ops does the volume operations `chainwarden job` asks of this host's agent (internal/volops): the snapshot of a
// passing node's volume before its job is upgraded, and the restore of that snapshot when the job is reverted.
type Ops struct {
	Manager *Manager
	Volumes []Volume // this host's volumes; an operation names the node writing one
}

// Holders are the volumes of Ops as the agent announces them: those with a node.
func (o *Ops) Holders() []volops.Holder {
	var out []volops.Holder
	for _, v := range o.Volumes {
		if v.Node != "" {
			out = append(out, volops.Holder{Node: v.Node, Volume: v.Name, InstanceID: o.Manager.Host.InstanceID, AZ: o.Manager.Host.AZ})
		}
	}
	return out
}

// Handle implements volops.Handler.
func (o *Ops) Handle(ctx context.Context, op volops.Op) volops.Op {
	var vol *Volume
	for i := range o.Volumes {
		if o.Volumes[i].Node == op.Node {
			vol = &o.Volumes[i]
		}
	}
	end := func(state, format string, args ...any) volops.Op {
		op.State, op.Message = state, fmt.Sprintf(format, args...)
		return op
	}
	if vol == nil {
		return end(volops.Refused, "no volume of node %s on this host", op.Node)
	}
	op.Volume = vol.Name
	m := o.Manager
	switch op.Kind {
	case volops.Snapshot:
		res, err := m.SnapshotWith(ctx, *vol, SnapshotOptions{Tags: PreUpgradeTags(*vol, op.Job, op.JobVersion, op.JobModifyIndex)})
		if res != nil {
			op.Snapshot, op.VolumeID, op.Height = res.SnapshotID, res.VolumeID, res.Height
		}
		switch {
		case errors.Is(err, ErrNotPassing):
			return end(volops.Refused, "%v", err)
		case err != nil:
			return end(volops.Failed, "%v", err)
		}
		return end(volops.Done, "snapshot %s of %s at height %s started (point in time; it completes in the background)",
			res.SnapshotID, res.VolumeID, res.Height)
	case volops.Restore:
		snap, err := m.PreUpgradeSnapshot(ctx, *vol, op.Job, op.JobVersion)
		if err != nil {
			return end(volops.Failed, "%v", err)
		}
		if snap == nil {
			return end(volops.Refused, "no pre-upgrade snapshot of volume %s (%s) for job %s version %d", vol.Name, Family(*vol), op.Job, op.JobVersion)
		}
		op.Snapshot, op.Height = aws.ToString(snap.SnapshotId), tagsOf(snap.Tags)[TagHeight]
		if op.DryRun {
			return end(volops.Done, "would restore snapshot %s (%s, height %s)", op.Snapshot, snap.State, op.Height)
		}
		res, err := m.Restore(ctx, *vol, op.Snapshot)
		if res != nil {
			op.VolumeID, op.OldVolumeID = res.VolumeID, res.OldVolumeID
		}
		switch {
		case errors.Is(err, ErrVolumeBusy):
			return end(volops.Refused, "%v", err)
		case err != nil:
			return end(volops.Failed, "%v", err)
		}
		return end(volops.Done, "restored %s from snapshot %s (height %s); the replaced volume %s is detached and kept",
			res.VolumeID, res.SnapshotID, res.Height, orDash(res.OldVolumeID))
	default:
		return end(volops.Refused, "unknown operation %q", op.Kind)
	}
}
