package ebs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// ErrAtMaxSize is a volume that is past its grow threshold but already at its max_size_gib.
var ErrAtMaxSize = errors.New("volume is at its max size")

// Usage is how full a mounted filesystem is, as df counts it: used of used + available (blocks reserved for root
// count as neither).
type Usage struct {
	Total, Used, Avail uint64 // bytes
}

// Percent is the share of the filesystem in use, 0 to 100.
func (u Usage) Percent() float64 {
	if u.Used+u.Avail == 0 {
		return 0
	}
	return 100 * float64(u.Used) / float64(u.Used+u.Avail)
}

// DiskUsage reads the usage of the filesystem mounted at path.
func DiskUsage(path string) (Usage, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := uint64(st.Frsize)
	if bs == 0 {
		bs = uint64(st.Bsize)
	}
	return Usage{Total: st.Blocks * bs, Used: (st.Blocks - st.Bfree) * bs, Avail: st.Bavail * bs}, nil
}

// GrowResult says what one look at a growing volume found and did.
type GrowResult struct {
	VolumeID       string
	Usage          Usage   // before anything was done
	UsedPercent    float64 // before
	FromGiB, ToGiB int32   // the EBS volume's size before and after (equal when it was not modified)
	FSBefore       uint64  // the filesystem's size in bytes, before and after
	FSAfter        uint64
	Modified       bool // the EBS volume was modified
	FSGrown        bool // the filesystem was grown
	Took           time.Duration
}

// GrowIfNeeded looks at the volume's filesystem and, once it is fuller than the grow threshold, grows the EBS
// volume (ModifyVolume, bounded by max_size_gib), waits for the modification to be "optimizing" (the new size is in
// effect then), waits for the kernel to see the bigger device, and grows the filesystem online (resize2fs for ext4,
// xfs_growfs for xfs). A filesystem smaller than its device (an earlier grow stopped half way) is grown first,
// without modifying the volume. Past the threshold at max size it returns ErrAtMaxSize. Nothing is ever shrunk,
// formatted or moved: the data stays where it is.
func (m *Manager) GrowIfNeeded(ctx context.Context, vol Volume) (*GrowResult, error) {
	m.defaults()
	g := vol.Grow
	if g == nil {
		return nil, fmt.Errorf("volume %s: no grow block", vol.Name)
	}
	start := m.Clock.Now()
	res := &GrowResult{}
	host := m.hostFS()
	mnt, err := host.Mount(vol.MountPath)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
	}
	if res.Usage, err = host.Usage(vol.MountPath); err != nil {
		return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
	}
	res.UsedPercent = res.Usage.Percent()
	if res.UsedPercent < float64(g.Threshold) {
		return res, nil
	}
	log := m.Log.With("volume", vol.Name, "mount", vol.MountPath)
	unlock, err := m.lock(ctx, "volume-"+vol.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := m.attachedVolume(ctx, vol)
	if err != nil {
		return nil, err
	}
	res.VolumeID = aws.ToString(v.VolumeId)
	res.FromGiB, res.ToGiB = aws.ToInt32(v.Size), aws.ToInt32(v.Size)
	dev, err := m.Devices.Find(res.VolumeID)
	if err != nil {
		return nil, fmt.Errorf("volume %s (%s): %w", vol.Name, res.VolumeID, err)
	}
	// Never resize a filesystem other than the one on this volume's disk.
	num, err := host.DeviceNumber(dev.Path)
	if err != nil {
		return nil, err
	}
	if num != mnt.Dev {
		return nil, fmt.Errorf("volume %s: %s is mounted from another device than the volume's %s (%s); not growing it",
			vol.Name, vol.MountPath, res.VolumeID, dev.Path)
	}
	if mnt.FSType != "xfs" && mnt.FSType != "ext4" && mnt.FSType != "ext3" {
		return nil, fmt.Errorf("volume %s: cannot grow a %s filesystem online (only xfs, ext4, ext3)", vol.Name, mnt.FSType)
	}
	// Known before the volume is modified: a grown disk whose filesystem cannot follow only costs money.
	if err := host.CanGrowOnline(mnt.FSType); err != nil {
		return nil, fmt.Errorf("volume %s: not growing it: %w", vol.Name, err)
	}
	if res.FSBefore, err = host.FSSize(ctx, mnt.FSType, dev.Path, vol.MountPath); err != nil {
		return nil, err
	}
	res.FSAfter = res.FSBefore
	log.Info("filesystem past the grow threshold", "used_percent", fmt.Sprintf("%.1f", res.UsedPercent),
		"threshold", g.Threshold, "volume_id", res.VolumeID, "size_gib", res.FromGiB, "max_size_gib", g.MaxSizeGiB)

	// A modification still running (this agent restarted while waiting, or someone else modified it): wait for it.
	mod, err := m.latestModification(ctx, res.VolumeID)
	if err != nil {
		return nil, err
	}
	if mod != nil && mod.ModificationState == types.VolumeModificationStateModifying {
		log.Info("a modification of the volume is in progress: waiting for it", "target_gib", aws.ToInt32(mod.TargetSize))
		if err := m.waitModification(ctx, res.VolumeID); err != nil {
			return nil, err
		}
		if v, err = m.volume(ctx, res.VolumeID); err != nil {
			return nil, err
		}
		res.FromGiB, res.ToGiB = aws.ToInt32(v.Size), aws.ToInt32(v.Size)
	}

	// The disk may be bigger than its filesystem already: grow the filesystem first.
	devBytes, err := host.DeviceSize(dev.Path)
	if err != nil {
		return nil, err
	}
	if devBytes >= res.FSAfter+1<<20 {
		log.Info("the disk is bigger than its filesystem: growing the filesystem first", "device_bytes", devBytes,
			"fs_bytes", res.FSAfter)
		if err := m.growFS(ctx, vol, mnt.FSType, dev.Path, res); err != nil {
			return nil, err
		}
		u, err := host.Usage(vol.MountPath)
		if err != nil {
			return nil, err
		}
		if u.Percent() < float64(g.Threshold) {
			res.Took = m.Clock.Now().Sub(start)
			return res, nil
		}
	}

	next, ok := g.Next(res.FromGiB)
	if !ok {
		return res, fmt.Errorf("volume %s (%s) is %.1f%% full, past the grow threshold of %d%%, and at %d GiB it is at its max_size_gib %d: %w",
			vol.Name, res.VolumeID, res.UsedPercent, g.Threshold, res.FromGiB, g.MaxSizeGiB, ErrAtMaxSize)
	}
	if _, err := call(ctx, m, "ModifyVolume", func(ctx context.Context) (*ec2.ModifyVolumeOutput, error) {
		return m.EC2.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(res.VolumeID), Size: aws.Int32(next)})
	}); err != nil {
		return res, fmt.Errorf("volume %s: grow from %d to %d GiB: %w", vol.Name, res.FromGiB, next, err)
	}
	res.Modified, res.ToGiB = true, next
	log.Info("growing the EBS volume", "volume_id", res.VolumeID, "from_gib", res.FromGiB, "to_gib", next)
	if err := m.waitModification(ctx, res.VolumeID); err != nil {
		return res, err
	}
	want := uint64(next) << 30
	err = m.waitFor(ctx, "the kernel to see "+dev.Path+" at "+strconv.Itoa(int(next))+" GiB", m.Timeouts.Device,
		func(context.Context) (bool, string, error) {
			n, err := host.DeviceSize(dev.Path)
			if err != nil {
				return false, "", err
			}
			return n >= want, fmt.Sprintf("%d bytes", n), nil
		})
	if err != nil {
		return res, fmt.Errorf("volume %s: %w (on Nitro, `nvme ns-rescan` of the controller makes the kernel look again)", vol.Name, err)
	}
	if err := m.growFS(ctx, vol, mnt.FSType, dev.Path, res); err != nil {
		return res, err
	}
	res.Took = m.Clock.Now().Sub(start)
	after, _ := host.Usage(vol.MountPath)
	log.Info("volume grown", "volume_id", res.VolumeID, "from_gib", res.FromGiB, "to_gib", res.ToGiB,
		"fs_before", res.FSBefore, "fs_after", res.FSAfter, "used_percent", fmt.Sprintf("%.1f", after.Percent()),
		"took", res.Took.Round(time.Millisecond))
	return res, nil
}

// growFS grows the filesystem to fill its device and checks that it did.
func (m *Manager) growFS(ctx context.Context, vol Volume, fsType, dev string, res *GrowResult) error {
	host := m.hostFS()
	if err := host.GrowFS(ctx, fsType, dev, vol.MountPath); err != nil {
		return fmt.Errorf("volume %s: %w", vol.Name, err)
	}
	after, err := host.FSSize(ctx, fsType, dev, vol.MountPath)
	if err != nil {
		return err
	}
	if after <= res.FSAfter {
		return fmt.Errorf("volume %s: growing the %s filesystem left it at %d bytes", vol.Name, fsType, after)
	}
	m.Log.Info("filesystem grown", "volume", vol.Name, "fs", fsType, "from_bytes", res.FSAfter, "to_bytes", after)
	res.FSAfter, res.FSGrown = after, true
	return nil
}

// attachedVolume is the one volume with vol's tags attached to this instance.
func (m *Manager) attachedVolume(ctx context.Context, vol Volume) (*types.Volume, error) {
	vols, err := m.describeVolumes(ctx, []types.Filter{
		filter("tag:"+TagVolume, vol.Name), filter("tag:"+TagFamily, Family(vol)),
		filter("attachment.instance-id", m.Host.InstanceID),
	})
	if err != nil {
		return nil, err
	}
	if len(vols) != 1 {
		return nil, fmt.Errorf("volume %s: %d volumes with its tags are attached to %s, want 1: %w",
			vol.Name, len(vols), m.Host.InstanceID, ErrNotFound)
	}
	return &vols[0], nil
}

// latestModification is the volume's latest modification, nil when it was never modified.
func (m *Manager) latestModification(ctx context.Context, id string) (*types.VolumeModification, error) {
	out, err := call(ctx, m, "DescribeVolumesModifications", func(ctx context.Context) (*ec2.DescribeVolumesModificationsOutput, error) {
		return m.EC2.DescribeVolumesModifications(ctx, &ec2.DescribeVolumesModificationsInput{VolumeIds: []string{id}})
	})
	var api smithy.APIError
	if errors.As(err, &api) && api.ErrorCode() == "InvalidVolumeModification.NotFound" { // never modified
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var latest *types.VolumeModification
	for i, mod := range out.VolumesModifications {
		if latest == nil || aws.ToTime(mod.StartTime).After(aws.ToTime(latest.StartTime)) {
			latest = &out.VolumesModifications[i]
		}
	}
	return latest, nil
}

// waitModification polls (backing off) until the volume's modification is "optimizing" or "completed" (the new
// size is usable from "optimizing" on); "failed" is an error with AWS's message. The SDK has no waiter for it.
func (m *Manager) waitModification(ctx context.Context, id string) error {
	return m.waitBackoff(ctx, "the modification of "+id+" to take effect", m.Timeouts.Modify,
		func(ctx context.Context) (bool, string, error) {
			mod, err := m.latestModification(ctx, id)
			if err != nil {
				return false, "", err
			}
			if mod == nil {
				return false, "", fmt.Errorf("volume %s has no modification: %w", id, ErrNotFound)
			}
			status := fmt.Sprintf("%s %d%%", mod.ModificationState, aws.ToInt64(mod.Progress))
			switch mod.ModificationState {
			case types.VolumeModificationStateOptimizing, types.VolumeModificationStateCompleted:
				return true, status, nil
			case types.VolumeModificationStateFailed:
				return false, status, fmt.Errorf("modification of volume %s to %d GiB failed: %s",
					id, aws.ToInt32(mod.TargetSize), aws.ToString(mod.StatusMessage))
			}
			return false, status, nil
		})
}

// HostFS is what growing a volume asks of the host about its mounted filesystem; the real one reads
// /proc/self/mountinfo, statfs and sysfs and runs the filesystem tools. Tests replace it to drive the decisions.
type HostFS interface {
	Mount(path string) (Mounted, error)                                        // the filesystem mounted at path
	Usage(path string) (Usage, error)                                          // how full it is
	DeviceNumber(dev string) (uint64, error)                                   // a block device's major:minor, as Mounted.Dev encodes it
	DeviceSize(dev string) (uint64, error)                                     // a block device's size in bytes, as the kernel sees it now
	FSSize(ctx context.Context, fsType, dev, mountPath string) (uint64, error) // the filesystem's own size
	GrowFS(ctx context.Context, fsType, dev, mountPath string) error           // grow it online to fill its device
	CanGrowOnline(fsType string) error                                         // nil when GrowFS can work here
}

// Mounted is a mounted filesystem.
type Mounted struct {
	Dev    uint64 // major<<32 | minor of the device
	FSType string
}

// RealHostFS is the host itself.
type RealHostFS struct{}

func (m *Manager) hostFS() HostFS {
	if m.HostFS != nil {
		return m.HostFS
	}
	return RealHostFS{}
}

// Mount implements HostFS.
func (RealHostFS) Mount(path string) (Mounted, error) {
	e, err := mountAt(path)
	return Mounted{Dev: e.Dev, FSType: e.FSType}, err
}

// Usage implements HostFS.
func (RealHostFS) Usage(path string) (Usage, error) { return DiskUsage(path) }

// DeviceNumber implements HostFS.
func (RealHostFS) DeviceNumber(dev string) (uint64, error) { return devNumber(dev) }

// DeviceSize implements HostFS.
func (RealHostFS) DeviceSize(dev string) (uint64, error) { return blockDeviceSize(dev) }

// FSSize implements HostFS.
func (RealHostFS) FSSize(ctx context.Context, fsType, dev, mountPath string) (uint64, error) {
	return fsSize(ctx, fsType, dev, mountPath)
}

// GrowFS implements HostFS: xfs_growfs on the mount point for xfs, resize2fs on the device for ext4 (both grow a
// mounted filesystem online; resize2fs never shrinks without a size argument).
func (RealHostFS) GrowFS(ctx context.Context, fsType, dev, mountPath string) error {
	args := []string{"resize2fs", dev}
	if fsType == "xfs" {
		args = []string{"xfs_growfs", mountPath}
	}
	if out, err := run(ctx, 30*time.Minute, args...); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Capabilities the kernel asks for to grow a mounted filesystem (linux/capability.h).
const (
	capSysAdmin    = 21 // XFS_IOC_FSGROWFSDATA
	capSysResource = 24 // EXT4_IOC_RESIZE_FS
)

// CanGrowOnline implements HostFS: the kernel lets only a process with CAP_SYS_RESOURCE grow a mounted ext4 and
// one with CAP_SYS_ADMIN a mounted xfs (root in a container often lacks the first).
func (RealHostFS) CanGrowOnline(fsType string) error {
	capability, name := capSysResource, "CAP_SYS_RESOURCE"
	if fsType == "xfs" {
		capability, name = capSysAdmin, "CAP_SYS_ADMIN"
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return fmt.Errorf("read capabilities: %w", err)
			}
			if eff&(1<<capability) == 0 {
				return fmt.Errorf("growing a mounted %s filesystem needs %s, which this process lacks (run the agent as root with its full capabilities; systemd does by default)", fsType, name)
			}
			return nil
		}
	}
	return fmt.Errorf("read capabilities: no CapEff in /proc/self/status")
}

// mountAt is the mount whose mount point is path.
func mountAt(path string) (mountEntry, error) {
	ms, err := mounts()
	if err != nil {
		return mountEntry{}, fmt.Errorf("read mounts: %w", err)
	}
	var found *mountEntry
	for i := range ms {
		if ms[i].MountPoint == path {
			found = &ms[i] // the last one wins: it is the one visible at path
		}
	}
	if found == nil {
		return mountEntry{}, fmt.Errorf("%s is not a mount point", path)
	}
	return *found, nil
}

// blockDeviceSize reads a block device's size from sysfs.
func blockDeviceSize(dev string) (uint64, error) {
	real, err := filepath.EvalSymlinks(dev)
	if err != nil {
		return 0, fmt.Errorf("resolve %s: %w", dev, err)
	}
	b, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(real), "size"))
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	sectors, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return sectors * 512, nil
}

// fsSize is the size the filesystem itself says it has (its superblock: every block, the metadata's too), which is
// what is compared with the device to tell whether it fills it.
func fsSize(ctx context.Context, fsType, dev, mountPath string) (uint64, error) {
	var args []string
	if fsType == "xfs" {
		args = []string{"xfs_info", mountPath}
	} else {
		args = []string{"dumpe2fs", "-h", dev}
	}
	out, err := run(ctx, time.Minute, args...)
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	n, err := parseFSSize(fsType, out)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return n, nil
}

// parseFSSize reads the data section's size from xfs_info ("data = bsize=4096 blocks=262144, ...") or the block
// count and size from dumpe2fs -h.
func parseFSSize(fsType, out string) (uint64, error) {
	var blocks, bsize uint64
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if fsType == "xfs" {
			if !strings.HasPrefix(line, "data ") {
				continue
			}
			for _, f := range strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == ',' }) {
				if v, ok := strings.CutPrefix(f, "bsize="); ok {
					bsize, _ = strconv.ParseUint(v, 10, 64)
				}
				if v, ok := strings.CutPrefix(f, "blocks="); ok {
					blocks, _ = strconv.ParseUint(v, 10, 64)
				}
			}
			break
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			blocks, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		case "Block size":
			bsize, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	if blocks == 0 || bsize == 0 {
		return 0, fmt.Errorf("no block count and size in the output")
	}
	return blocks * bsize, nil
}
