package ebs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/chainwarden/chainwarden/internal/restored"
)

// EnsureResult says what Ensure found or did.
type EnsureResult struct {
	VolumeID     string
	Reused       bool   // an existing volume (attached or available) was taken
	RestoredFrom string // snapshot id the new volume was created from ("" = reused or blank)
	Device       string // the block device, e.g. /dev/nvme1n1
	Source       string // what fstab mounts (the stable by-id link, else UUID=...)
	Filesystem   string
	Formatted    bool // a filesystem was made (only ever on a blank disk)
	MountPath    string
	NomadConfig  string // the host_volume file written
}

// Ensure gives vol an attached, mounted EBS volume and writes its fstab entry and Nomad host_volume config. It is
// idempotent; two runs at once on one host serialize on a lock file, and the CreateVolume ClientToken makes even
// unserialized runs create one volume.
func (m *Manager) Ensure(ctx context.Context, vol Volume) (*EnsureResult, error) {
	m.defaults()
	log := m.Log.With("volume", vol.Name, "family", Family(vol))
	unlock, err := m.lock(ctx, "volume-"+vol.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	res, err := m.EnsureAttached(ctx, vol)
	if err != nil {
		return nil, err
	}
	dev, err := m.waitDevice(ctx, res.VolumeID)
	if err != nil {
		return nil, err
	}
	res.Device = dev.Path
	log.Info("block device present", "volume_id", res.VolumeID, "device", dev.Path, "link", dev.Link)
	if err := m.prepare(ctx, vol, dev, res); err != nil {
		return nil, err
	}
	log.Info("volume ready", "volume_id", res.VolumeID, "mount", res.MountPath, "formatted", res.Formatted,
		"restored_from", res.RestoredFrom, "reused", res.Reused)
	return res, nil
}

// EnsureAttached is the AWS half of Ensure: find or create the volume, attach it to this instance, wait until
// the attachment is "attached". It takes no host lock.
func (m *Manager) EnsureAttached(ctx context.Context, vol Volume) (*EnsureResult, error) {
	m.defaults()
	log := m.Log.With("volume", vol.Name, "family", Family(vol))
	res := &EnsureResult{MountPath: vol.MountPath}
	var v *types.Volume
	for attempt := 0; v == nil; attempt++ {
		found, err := m.findVolume(ctx, vol)
		if err != nil {
			return nil, err
		}
		if found != nil {
			v = found
			res.Reused = true
			log.Info("found volume", "volume_id", aws.ToString(v.VolumeId), "state", v.State,
				"attached_here", attachedHere(v, m.Host.InstanceID))
			break
		}
		v, err = m.createVolume(ctx, vol, res, nil)
		if errors.Is(err, ErrTokenMismatch) && attempt == 0 {
			// Another ensure created the volume from another snapshot with our token: look again.
			log.Warn("client token already used with other parameters; looking for the volume again")
			continue
		}
		if err != nil {
			return nil, err
		}
	}
	res.VolumeID = aws.ToString(v.VolumeId)
	if err := m.waitVolume(ctx, res.VolumeID); err != nil {
		return nil, err
	}
	if err := m.attach(ctx, res.VolumeID); err != nil {
		return nil, err
	}
	return res, nil
}

func attachedHere(v *types.Volume, instanceID string) bool {
	for _, a := range v.Attachments {
		if aws.ToString(a.InstanceId) == instanceID && a.State != types.VolumeAttachmentStateDetached &&
			a.State != types.VolumeAttachmentStateDetaching {
			return true
		}
	}
	return false
}

// findVolume returns the volume to use: one of ours attached here, else one being created in this AZ (by a
// concurrent ensure), else the oldest available one in this AZ; nil if none.
func (m *Manager) findVolume(ctx context.Context, vol Volume) (*types.Volume, error) {
	vols, err := m.describeVolumes(ctx, []types.Filter{
		filter("tag:"+TagVolume, vol.Name), filter("tag:"+TagFamily, Family(vol)),
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(vols, func(a, b types.Volume) int { return aws.ToTime(a.CreateTime).Compare(aws.ToTime(b.CreateTime)) })
	var creating, available *types.Volume
	for i := range vols {
		v := &vols[i]
		id := aws.ToString(v.VolumeId)
		switch {
		case attachedHere(v, m.Host.InstanceID):
			return v, nil
		case aws.ToString(v.AvailabilityZone) != m.Host.AZ:
			m.Log.Debug("ignoring a volume in another availability zone", "volume_id", id, "az", aws.ToString(v.AvailabilityZone))
		case v.State == types.VolumeStateCreating && creating == nil:
			creating = v
		case v.State == types.VolumeStateAvailable && len(v.Attachments) == 0 && available == nil:
			available = v
		case v.State == types.VolumeStateInUse:
			inst := ""
			if len(v.Attachments) > 0 {
				inst = aws.ToString(v.Attachments[0].InstanceId)
			}
			m.Log.Info("ignoring a volume attached to another instance", "volume_id", id, "instance", inst)
		}
	}
	if creating != nil {
		return creating, nil
	}
	return available, nil
}

// describeVolumes lists the volumes matching filters, page by page.
func (m *Manager) describeVolumes(ctx context.Context, filters []types.Filter) ([]types.Volume, error) {
	var out []types.Volume
	p := ec2.NewDescribeVolumesPaginator(m.EC2, &ec2.DescribeVolumesInput{Filters: filters},
		func(o *ec2.DescribeVolumesPaginatorOptions) { o.Limit = m.PageSize })
	for p.HasMorePages() {
		page, err := call(ctx, m, "DescribeVolumes", func(ctx context.Context) (*ec2.DescribeVolumesOutput, error) {
			return p.NextPage(ctx)
		})
		if err != nil {
			return nil, err
		}
		out = append(out, page.Volumes...)
	}
	return out, nil
}

// volume describes one volume by id.
func (m *Manager) volume(ctx context.Context, id string) (*types.Volume, error) {
	out, err := call(ctx, m, "DescribeVolumes", func(ctx context.Context) (*ec2.DescribeVolumesOutput, error) {
		return m.EC2.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	})
	if err != nil {
		return nil, err
	}
	if len(out.Volumes) != 1 {
		return nil, fmt.Errorf("describe volume %s: %d volumes in the answer: %w", id, len(out.Volumes), ErrNotFound)
	}
	return &out.Volumes[0], nil
}

// NewestSnapshot returns the newest completed snapshot of the family in this region, or nil.
func (m *Manager) NewestSnapshot(ctx context.Context, family string) (*types.Snapshot, error) {
	m.defaults()
	snaps, err := m.familySnapshots(ctx, family, "completed")
	if err != nil || len(snaps) == 0 {
		return nil, err
	}
	return &snaps[0], nil
}

// familySnapshots lists our snapshots of a family (status "" = any), newest first.
func (m *Manager) familySnapshots(ctx context.Context, family, status string) ([]types.Snapshot, error) {
	filters := []types.Filter{filter("tag:"+TagFamily, family)}
	if status != "" {
		filters = append(filters, filter("status", status))
	}
	snaps, err := m.describeSnapshots(ctx, filters)
	if err != nil {
		return nil, err
	}
	// Never trust a filter alone with what we restore.
	return slices.DeleteFunc(snaps, func(s types.Snapshot) bool { return tagsOf(s.Tags)[TagFamily] != family }), nil
}

// describeSnapshots lists this account's snapshots matching filters, page by page, newest first.
func (m *Manager) describeSnapshots(ctx context.Context, filters []types.Filter) ([]types.Snapshot, error) {
	var out []types.Snapshot
	p := ec2.NewDescribeSnapshotsPaginator(m.EC2, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}, Filters: filters},
		func(o *ec2.DescribeSnapshotsPaginatorOptions) { o.Limit = m.PageSize })
	for p.HasMorePages() {
		page, err := call(ctx, m, "DescribeSnapshots", func(ctx context.Context) (*ec2.DescribeSnapshotsOutput, error) {
			return p.NextPage(ctx)
		})
		if err != nil {
			return nil, err
		}
		out = append(out, page.Snapshots...)
	}
	slices.SortStableFunc(out, func(a, b types.Snapshot) int { return aws.ToTime(b.StartTime).Compare(aws.ToTime(a.StartTime)) })
	return out, nil
}

// clientToken is the same for every ensure of this volume on this instance during this boot.
func (m *Manager) clientToken(vol Volume) string {
	sum := sha256.Sum256([]byte(m.Host.InstanceID + "\x00" + vol.Name + "\x00" + Family(vol) + "\x00" + m.BootID))
	return "chainwarden-" + hex.EncodeToString(sum[:])[:40]
}

// createVolume creates vol's volume from snap, or (nil) from the newest completed snapshot of its family, else
// blank.
func (m *Manager) createVolume(ctx context.Context, vol Volume, res *EnsureResult, snap *types.Snapshot) (*types.Volume, error) {
	token := m.clientToken(vol)
	if snap != nil {
		// A restore of a chosen snapshot is a volume of its own, not the one this boot's ensure made.
		sum := sha256.Sum256([]byte(token + "\x00restore\x00" + aws.ToString(snap.SnapshotId)))
		token = "chainwarden-" + hex.EncodeToString(sum[:])[:40]
	} else {
		var err error
		if snap, err = m.NewestSnapshot(ctx, Family(vol)); err != nil {
			return nil, err
		}
	}
	tags := familyTags(vol)
	tags[TagName] = "chainwarden-" + vol.Name
	in := &ec2.CreateVolumeInput{
		AvailabilityZone: aws.String(m.Host.AZ),
		Size:             aws.Int32(vol.SizeGiB),
		VolumeType:       types.VolumeType(vol.Type),
		Iops:             vol.IOPS,
		Throughput:       vol.Throughput,
		Encrypted:        vol.Encrypted,
		ClientToken:      aws.String(token),
	}
	if vol.KMSKeyID != "" {
		in.KmsKeyId = aws.String(vol.KMSKeyID)
	}
	if snap != nil {
		in.SnapshotId = snap.SnapshotId
		res.RestoredFrom = aws.ToString(snap.SnapshotId)
		tags[TagRestoredFrom] = res.RestoredFrom
		if size := aws.ToInt32(snap.VolumeSize); size > vol.SizeGiB {
			in.Size = aws.Int32(size)
		}
		st := tagsOf(snap.Tags)
		m.Log.Info("restoring from a completed snapshot of the family", "volume", vol.Name, "snapshot", res.RestoredFrom,
			"started", aws.ToTime(snap.StartTime).Format(time.RFC3339), "height", st[TagHeight],
			"client_version", st[TagClientVersion])
	} else {
		m.Log.Info("no completed snapshot of the family in this region: creating a blank volume",
			"volume", vol.Name, "family", Family(vol), "region", m.Host.Region)
	}
	in.TagSpecifications = []types.TagSpecification{{ResourceType: types.ResourceTypeVolume, Tags: ec2Tags(tags)}}
	out, err := call(ctx, m, "CreateVolume", func(ctx context.Context) (*ec2.CreateVolumeOutput, error) {
		return m.EC2.CreateVolume(ctx, in)
	})
	if err != nil {
		return nil, err
	}
	m.Log.Info("created volume", "volume", vol.Name, "volume_id", aws.ToString(out.VolumeId), "az", m.Host.AZ,
		"size_gib", aws.ToInt32(out.Size), "type", out.VolumeType)
	if snap != nil {
		m.markRestored(vol, aws.ToString(out.VolumeId), snap)
	}
	return &types.Volume{VolumeId: out.VolumeId, State: out.State, AvailabilityZone: out.AvailabilityZone,
		Attachments: out.Attachments, CreateTime: out.CreateTime}, nil
}

// waitVolume waits with the SDK's VolumeAvailable waiter until the volume has left "creating". "in-use" is as
// good as "available": a concurrent ensure may have attached it meanwhile (attach sorts out where).
func (m *Manager) waitVolume(ctx context.Context, id string) error {
	what := "volume " + id + " to be available or in-use"
	p := m.progress(what, m.Timeouts.Create)
	var status string
	var stop error
	w := ec2.NewVolumeAvailableWaiter(m.EC2, func(o *ec2.VolumeAvailableWaiterOptions) {
		o.MinDelay, o.MaxDelay = m.Poll, m.MaxPoll
		available := o.Retryable
		o.Retryable = func(wctx context.Context, in *ec2.DescribeVolumesInput, out *ec2.DescribeVolumesOutput, err error) (bool, error) {
			if err != nil {
				if wctx.Err() == nil { // else: the waiter's own deadline, reported as ErrTimeout
					stop = awsErr("DescribeVolumes", err)
				}
				return false, err
			}
			if len(out.Volumes) != 1 {
				stop = fmt.Errorf("describe volume %s: %d volumes in the answer: %w", id, len(out.Volumes), ErrNotFound)
				return false, stop
			}
			status = string(out.Volumes[0].State)
			switch out.Volumes[0].State {
			case types.VolumeStateInUse:
				return false, nil
			case types.VolumeStateAvailable, types.VolumeStateCreating:
			default: // deleting, deleted, error: it will not become available
				stop = fmt.Errorf("volume %s is %s: %w", id, status, ErrIncorrectState)
				return false, stop
			}
			retry, err := available(wctx, in, out, nil)
			if retry {
				p.waiting(status)
			}
			return retry, err
		}
	})
	err := w.Wait(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}}, m.Timeouts.Create)
	if err == nil {
		p.done()
	}
	return waiterErr(ctx, what, m.Timeouts.Create, status, stop, err)
}

// deviceNames are the names AWS recommends for EBS data volumes; on Nitro they are labels only.
var deviceNames = []string{"/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk", "/dev/sdl",
	"/dev/sdm", "/dev/sdn", "/dev/sdo", "/dev/sdp"}

// attach attaches the volume here unless it already is, then waits for "attached".
func (m *Manager) attach(ctx context.Context, id string) error {
	v, err := m.volume(ctx, id)
	if err != nil {
		return err
	}
	if !attachedHere(v, m.Host.InstanceID) {
		used, err := m.describeVolumes(ctx, []types.Filter{filter("attachment.instance-id", m.Host.InstanceID)})
		if err != nil {
			return err
		}
		taken := map[string]bool{}
		for _, v := range used {
			for _, a := range v.Attachments {
				taken[aws.ToString(a.Device)] = true
			}
		}
		if err := m.attachFree(ctx, id, taken); err != nil {
			return err
		}
	}
	// The SDK's VolumeInUse waiter looks at the volume's state only, which is "in-use" from the moment the attach
	// starts: the attachment's own state is polled here.
	return m.waitFor(ctx, "volume "+id+" to be attached", m.Timeouts.Attach, func(ctx context.Context) (bool, string, error) {
		v, err := m.volume(ctx, id)
		if err != nil {
			return false, "", err
		}
		for _, a := range v.Attachments {
			if aws.ToString(a.InstanceId) != m.Host.InstanceID {
				return false, "", fmt.Errorf("volume %s was attached to instance %s meanwhile: %w",
					id, aws.ToString(a.InstanceId), ErrInUse)
			}
			if a.State == types.VolumeAttachmentStateAttached {
				return true, "attached", nil
			}
			return false, string(a.State), nil
		}
		return false, "", fmt.Errorf("volume %s lost its attachment while attaching: %w", id, ErrIncorrectState)
	})
}

func (m *Manager) attachFree(ctx context.Context, id string, taken map[string]bool) error {
	for _, dev := range deviceNames {
		if taken[dev] {
			continue
		}
		_, err := call(ctx, m, "AttachVolume", func(ctx context.Context) (*ec2.AttachVolumeOutput, error) {
			return m.EC2.AttachVolume(ctx, &ec2.AttachVolumeInput{
				VolumeId: aws.String(id), InstanceId: aws.String(m.Host.InstanceID), Device: aws.String(dev)})
		})
		switch {
		case err == nil:
			m.Log.Info("attaching volume", "volume_id", id, "instance", m.Host.InstanceID, "device_name", dev)
			return nil
		case errors.Is(err, ErrDeviceInUse):
			continue // a concurrent attach of another volume took the name
		case errors.Is(err, ErrInUse), errors.Is(err, ErrIncorrectState):
			// A concurrent ensure of this volume may have attached it already: fine if it is attached here.
			v, derr := m.volume(ctx, id)
			if derr == nil && attachedHere(v, m.Host.InstanceID) {
				return nil
			}
			return err
		default:
			return err
		}
	}
	return fmt.Errorf("attach %s: every device name /dev/sdf../dev/sdp is in use on %s", id, m.Host.InstanceID)
}

func (m *Manager) waitDevice(ctx context.Context, id string) (Device, error) {
	var dev Device
	err := m.waitFor(ctx, "block device of "+id, m.Timeouts.Device, func(context.Context) (bool, string, error) {
		d, err := m.Devices.Find(id)
		if errors.Is(err, ErrNoDevice) {
			return false, "no by-id link or NVMe serial yet", nil
		}
		if err != nil {
			return false, "", err
		}
		dev = d
		return true, "", nil
	})
	return dev, err
}

// markRestored tells the agent that the node writing vol starts from a snapshot, so that it reports the node as
// catching up from it (internal/restored). Without a node there is nobody to report; a failed write is logged: the
// node is then judged as any node behind its head.
func (m *Manager) markRestored(vol Volume, volumeID string, snap *types.Snapshot) {
	if vol.Node == "" {
		m.Log.Info("restored volume has no node: the agent will not report its catching up", "volume", vol.Name)
		return
	}
	mark := restored.Mark{Node: vol.Node, Volume: vol.Name, VolumeID: volumeID, Snapshot: aws.ToString(snap.SnapshotId),
		Height: tagsOf(snap.Tags)[TagHeight], Restored: m.Clock.Now().UTC()}
	if err := restored.Write(m.Paths.StateDir, mark); err != nil {
		m.Log.Warn("could not mark the volume restored for the agent", "volume", vol.Name, "error", err)
	}
}
