package ebs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// ErrNoSnapshot is a restore asked of a snapshot that does not exist (or is not of the volume's family).
var ErrNoSnapshot = errors.New("no such snapshot")

// ErrVolumeBusy is a volume still in use by a process (a container of the job) when it is to be replaced.
var ErrVolumeBusy = errors.New("volume is in use")

// PreUpgradeTags are the tags of the snapshot `chainwarden job run` takes before upgrading job from version
// (modify index) to the next.
func PreUpgradeTags(vol Volume, job string, version, modifyIndex uint64) map[string]string {
	return map[string]string{
		TagJob: job, TagJobVersion: strconv.FormatUint(version, 10),
		TagJobModifyIndex: strconv.FormatUint(modifyIndex, 10), TagPurpose: PurposePreUpgrade,
		TagName: fmt.Sprintf("chainwarden-%s-pre-upgrade-%s-v%d", vol.Name, job, version),
	}
}

// PreUpgradeSnapshot finds the newest snapshot of this volume (its name and family) taken before job was upgraded
// from version; pending ones count (a restore waits for them), failed ones do not. nil when there is none.
func (m *Manager) PreUpgradeSnapshot(ctx context.Context, vol Volume, job string, version uint64) (*types.Snapshot, error) {
	m.defaults()
	snaps, err := m.describeSnapshots(ctx, []types.Filter{
		filter("tag:"+TagFamily, Family(vol)), filter("tag:"+TagVolume, vol.Name), filter("tag:"+TagJob, job),
		filter("tag:"+TagJobVersion, strconv.FormatUint(version, 10)), filter("tag:"+TagPurpose, PurposePreUpgrade),
	})
	if err != nil {
		return nil, err
	}
	for i, s := range snaps { // newest first
		t := tagsOf(s.Tags)
		if s.State == types.SnapshotStateError || t[TagFamily] != Family(vol) || t[TagVolume] != vol.Name ||
			t[TagJob] != job || t[TagJobVersion] != strconv.FormatUint(version, 10) {
			continue
		}
		return &snaps[i], nil
	}
	return nil, nil
}

// RestoreResult says what Restore did.
type RestoreResult struct {
	SnapshotID  string
	Height      string // the snapshot's height tag
	OldVolumeID string // the volume replaced: detached and kept ("" when there was none attached, or on a retry)
	VolumeID    string // the volume restored from the snapshot, attached and mounted
	Device      string
}

// Restore replaces vol's volume on this host by a new one created from snapshotID (of vol's family): it waits for
// the snapshot to be completed, makes sure nothing uses the current volume any more (no process has it mounted in
// another mount namespace, as a container would; unmounting it fails if a file is open), unmounts it, retags it as
// replaced (ensure no longer finds it) and detaches it — it is kept, never deleted —, then creates, attaches and
// mounts the new volume at the same path as ensure does, never formatting it, and marks it restored for the agent.
// Run again after a failure, it continues (a volume already restored from the snapshot is taken as it is).
func (m *Manager) Restore(ctx context.Context, vol Volume, snapshotID string) (*RestoreResult, error) {
	m.defaults()
	log := m.Log.With("volume", vol.Name, "snapshot", snapshotID)
	unlock, err := m.lock(ctx, "volume-"+vol.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap, err := m.snapshot(ctx, snapshotID)
	if err != nil {
		return nil, err
	}
	if fam := tagsOf(snap.Tags)[TagFamily]; fam != Family(vol) {
		return nil, fmt.Errorf("snapshot %s is of family %q, not %s's %q: %w", snapshotID, fam, vol.Name, Family(vol), ErrNoSnapshot)
	}
	res := &RestoreResult{SnapshotID: snapshotID, Height: tagsOf(snap.Tags)[TagHeight]}
	if snap.State != types.SnapshotStateCompleted {
		log.Info("waiting for the snapshot to complete before restoring it", "state", snap.State, "progress", aws.ToString(snap.Progress))
		if err := m.WaitSnapshot(ctx, &SnapshotResult{SnapshotID: snapshotID}); err != nil {
			return nil, err
		}
		if snap, err = m.snapshot(ctx, snapshotID); err != nil {
			return nil, err
		}
	}
	vols, err := m.describeVolumes(ctx, []types.Filter{filter("tag:"+TagVolume, vol.Name), filter("tag:"+TagFamily, Family(vol))})
	if err != nil {
		return nil, err
	}
	var already, current *types.Volume
	for i := range vols {
		v := &vols[i]
		fromSnap := tagsOf(v.Tags)[TagRestoredFrom] == snapshotID && aws.ToString(v.SnapshotId) == snapshotID
		switch {
		case fromSnap && (attachedHere(v, m.Host.InstanceID) ||
			aws.ToString(v.AvailabilityZone) == m.Host.AZ && len(v.Attachments) == 0 &&
				(v.State == types.VolumeStateAvailable || v.State == types.VolumeStateCreating)):
			already = v
		case attachedHere(v, m.Host.InstanceID):
			current = v
		}
	}
	if current != nil {
		res.OldVolumeID = aws.ToString(current.VolumeId)
		if err := m.retire(ctx, vol, current, snapshotID); err != nil {
			return res, err
		}
	}
	ens := &EnsureResult{MountPath: vol.MountPath}
	var v *types.Volume
	if already != nil {
		v, ens.RestoredFrom = already, snapshotID
		log.Info("a volume restored from the snapshot exists already: taking it", "volume_id", aws.ToString(v.VolumeId))
	} else if v, err = m.createVolume(ctx, vol, ens, snap); err != nil {
		return res, err
	}
	res.VolumeID = aws.ToString(v.VolumeId)
	if err := m.waitVolume(ctx, res.VolumeID); err != nil {
		return res, err
	}
	if err := m.attach(ctx, res.VolumeID); err != nil {
		return res, err
	}
	dev, err := m.waitDevice(ctx, res.VolumeID)
	if err != nil {
		return res, err
	}
	res.Device = dev.Path
	ens.VolumeID, ens.Device = res.VolumeID, dev.Path
	if err := m.prepare(ctx, vol, dev, ens); err != nil {
		return res, err
	}
	if ens.Formatted { // prepare formats only a blank disk; a snapshot's never is
		return res, fmt.Errorf("volume %s restored from %s was blank and got a new filesystem: the snapshot holds no filesystem", res.VolumeID, snapshotID)
	}
	log.Info("volume restored", "volume_id", res.VolumeID, "replaced", res.OldVolumeID, "height", res.Height,
		"mount", vol.MountPath)
	return res, nil
}

// retire takes the current volume out of use: unmounted (only when nothing holds it), retagged as replaced so
// that ensure no longer finds it, and detached. It is kept with its data.
func (m *Manager) retire(ctx context.Context, vol Volume, v *types.Volume, snapshotID string) error {
	id := aws.ToString(v.VolumeId)
	log := m.Log.With("volume", vol.Name, "volume_id", id)
	dev, err := m.Devices.Find(id)
	switch {
	case errors.Is(err, ErrNoDevice):
		log.Warn("the volume to replace has no block device here; detaching it as it is")
	case err != nil:
		return err
	default:
		if err := m.unmountUnused(ctx, vol, dev); err != nil {
			return err
		}
	}
	now := m.Clock.Now().UTC()
	if _, err := call(ctx, m, "CreateTags", func(ctx context.Context) (*ec2.CreateTagsOutput, error) {
		return m.EC2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: ec2Tags(map[string]string{
			TagVolume: vol.Name + "@replaced", TagReplacedAt: now.Format(time.RFC3339), TagReplacedBy: snapshotID,
			TagName: "chainwarden-" + vol.Name + "-replaced-" + now.Format("20060102T150405Z"),
		})})
	}); err != nil {
		return fmt.Errorf("tag %s as replaced: %w", id, err)
	}
	if _, err := call(ctx, m, "DetachVolume", func(ctx context.Context) (*ec2.DetachVolumeOutput, error) {
		return m.EC2.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: aws.String(id), InstanceId: aws.String(m.Host.InstanceID)})
	}); err != nil && !errors.Is(err, ErrIncorrectState) {
		return err
	}
	log.Info("detaching the replaced volume; it is kept", "tag", TagVolume+"="+vol.Name+"@replaced")
	return m.waitFor(ctx, "volume "+id+" to be detached", m.Timeouts.Detach, func(ctx context.Context) (bool, string, error) {
		v, err := m.volume(ctx, id)
		if err != nil {
			return false, "", err
		}
		if len(v.Attachments) == 0 {
			return true, "detached", nil
		}
		return false, string(v.Attachments[0].State), nil
	})
}

// unmountUnused unmounts the volume's filesystem from its mount path, refusing while any process has it mounted
// in another mount namespace (a container still running with it) or it is mounted anywhere else.
func (m *Manager) unmountUnused(ctx context.Context, vol Volume, dev Device) error {
	num, err := devNumber(dev.Path)
	if err != nil {
		return err
	}
	users, err := mountUsers(num)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("volume %s (%s) is mounted by %s: stop the job using it first: %w", vol.Name, dev.Path,
			strings.Join(users, ", "), ErrVolumeBusy)
	}
	ms, err := mounts()
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	for _, e := range ms {
		if e.Dev != num {
			continue
		}
		if e.MountPoint != vol.MountPath {
			return fmt.Errorf("volume %s (%s) is mounted at %s as well: %w", vol.Name, dev.Path, e.MountPoint, ErrVolumeBusy)
		}
	}
	for _, e := range ms {
		if e.Dev == num && e.MountPoint == vol.MountPath {
			if out, err := run(ctx, 5*time.Minute, "umount", vol.MountPath); err != nil {
				return fmt.Errorf("umount %s (a process has a file open on it?): %w: %s: %w", vol.MountPath, err, out, ErrVolumeBusy)
			}
			m.Log.Info("unmounted the volume to replace", "volume", vol.Name, "path", vol.MountPath)
			break
		}
	}
	return nil
}

// mountUsers names the processes (pid and command) whose mount namespace, other than this process's, has the
// device mounted: containers started with the volume bind-mounted.
func mountUsers(dev uint64) ([]string, error) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return nil, fmt.Errorf("mount namespace: %w", err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{self: true}
	var users []string
	for _, e := range entries {
		pid := e.Name()
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		ns, err := os.Readlink(filepath.Join("/proc", pid, "ns", "mnt"))
		if err != nil || seen[ns] {
			continue // gone, or a namespace already looked at
		}
		seen[ns] = true
		b, err := os.ReadFile(filepath.Join("/proc", pid, "mountinfo"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 5 {
				continue
			}
			var maj, min uint64
			if _, err := fmt.Sscanf(f[2], "%d:%d", &maj, &min); err != nil || maj<<32|min != dev {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join("/proc", pid, "comm"))
			users = append(users, fmt.Sprintf("pid %s (%s) at %s", pid, strings.TrimSpace(string(comm)), unescapeMount(f[4])))
			break
		}
	}
	slices.Sort(users)
	return users, nil
}

// snapshot describes one of this account's snapshots.
func (m *Manager) snapshot(ctx context.Context, id string) (*types.Snapshot, error) {
	out, err := call(ctx, m, "DescribeSnapshots", func(ctx context.Context) (*ec2.DescribeSnapshotsOutput, error) {
		return m.EC2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
	})
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("snapshot %s: %w", id, ErrNoSnapshot)
	}
	if err != nil {
		return nil, err
	}
	if len(out.Snapshots) != 1 {
		return nil, fmt.Errorf("snapshot %s: %d in the answer: %w", id, len(out.Snapshots), ErrNoSnapshot)
	}
	return &out.Snapshots[0], nil
}
