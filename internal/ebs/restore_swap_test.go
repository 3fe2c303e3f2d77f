package ebs_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/restored"
)

// Restore on loop devices: refused while a process in another mount namespace (what a container is) still has
// the volume mounted, with nothing changed; then the old volume is unmounted, tagged as replaced, detached and
// kept, the new one created from the snapshot and mounted unformatted (its data is the snapshot's), the restore
// mark left for the agent; and a second restore of the same snapshot changes nothing.
func TestRestoreSwapsTheVolume(t *testing.T) {
	integration(t)
	e := newEnv(t)
	e.ec2.OnDetach = func(volumeID, _ string) {
		_ = os.Remove(filepath.Join(e.byID, "nvme-Amazon_Elastic_Block_Store_"+ebs.Serial(volumeID)))
	}
	devA := loopDevice(t, 512)
	e.addDisk(devA)
	vol := e.volume("geth-data", func(v *ebs.Volume) { v.Node = "geth-a" })
	cleanupMount(t, vol.MountPath)
	first, err := e.m.Ensure(ctxT(t, time.Minute), vol)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string) {
		if err := os.WriteFile(filepath.Join(vol.MountPath, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("before-snapshot")
	// The snapshot: the frozen disk's image, registered with the EC2 test server as a completed pre-upgrade one.
	img := filepath.Join(t.TempDir(), "snapshot.img")
	run(t, "fsfreeze", "-f", vol.MountPath)
	err = copyDevice(devA, img)
	run(t, "fsfreeze", "-u", vol.MountPath)
	if err != nil {
		t.Fatal(err)
	}
	tags := ebs.PreUpgradeTags(vol, "geth", 4, 1234)
	tags[ebs.TagFamily], tags[ebs.TagVolume], tags[ebs.TagHeight] = ebs.Family(vol), vol.Name, "777"
	var snapTags []ec2test.Tag
	for k, v := range tags {
		snapTags = append(snapTags, ec2test.Tag{Key: k, Value: v})
	}
	snapID := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeID: first.VolumeID, VolumeSize: 1, Tags: snapTags})
	write("after-snapshot")
	if snap, err := e.m.PreUpgradeSnapshot(ctxT(t, 10*time.Second), vol, "geth", 4); err != nil || snap == nil || *snap.SnapshotId != snapID {
		t.Fatalf("pre-upgrade snapshot of version 4: %v %v", snap, err)
	}
	if snap, err := e.m.PreUpgradeSnapshot(ctxT(t, 10*time.Second), vol, "geth", 3); err != nil || snap != nil {
		t.Fatalf("pre-upgrade snapshot of version 3: %v %v", snap, err)
	}

	// A process in another mount namespace has it mounted, as a running container would.
	holder := exec.Command("unshare", "--mount", "sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	stopHolder := func() { _ = holder.Process.Kill(); _ = holder.Wait() }
	t.Cleanup(stopHolder)
	eventually(t, "the holder's namespace", func() bool { // and unshare has become the sleep it runs
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(holder.Process.Pid) + "/mountinfo")
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(holder.Process.Pid) + "/comm")
		return strings.Contains(string(b), vol.MountPath) && strings.TrimSpace(string(comm)) == "sleep"
	})
	_, err = e.m.Restore(ctxT(t, time.Minute), vol, snapID)
	if !errors.Is(err, ebs.ErrVolumeBusy) || !strings.Contains(err.Error(), "(sleep)") || !strings.Contains(err.Error(), "stop the job using it first") {
		t.Fatalf("restore of a volume in use: %v", err)
	}
	if vols := e.ec2.Volumes(); len(vols) != 1 || vols[0].Attachment == nil || !isMounted(vol.MountPath) {
		t.Fatalf("a refused restore changed something: %v, mounted %v", vols, isMounted(vol.MountPath))
	}
	stopHolder()

	devB := losetup(t, img)
	e.addDisk(devB)
	started := time.Now()
	res, err := e.m.Restore(ctxT(t, time.Minute), vol, snapID)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("volume swapped for the restored one in %s", time.Since(started).Round(time.Millisecond))
	if res.OldVolumeID != first.VolumeID || res.VolumeID == first.VolumeID || res.Device != devB || res.Height != "777" {
		t.Fatalf("restore %+v", res)
	}
	if _, err := os.Stat(filepath.Join(vol.MountPath, "before-snapshot")); err != nil {
		t.Fatalf("the snapshot's data is not on the restored volume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(vol.MountPath, "after-snapshot")); !os.IsNotExist(err) {
		t.Fatalf("data written after the snapshot is on the restored volume: %v", err)
	}
	for _, v := range e.ec2.Volumes() {
		tags := tagMap(v.Tags)
		switch v.ID {
		case first.VolumeID:
			if v.Attachment != nil || v.State != "available" || tags[ebs.TagVolume] != "geth-data@replaced" || tags[ebs.TagReplacedBy] != snapID {
				t.Fatalf("the replaced volume: %v %v", v, tags)
			}
		case res.VolumeID:
			if v.SnapshotID != snapID || tags[ebs.TagRestoredFrom] != snapID || v.Attachment == nil {
				t.Fatalf("the restored volume: %v %v", v, tags)
			}
		}
	}
	marks, err := restored.List(e.m.Paths.StateDir)
	if err != nil || len(marks) != 1 || marks[0].Node != "geth-a" || marks[0].Snapshot != snapID || marks[0].Height != "777" {
		t.Fatalf("restore marks %+v %v", marks, err)
	}
	if fstab, _ := os.ReadFile(e.m.Paths.Fstab); !strings.Contains(string(fstab), ebs.Serial(res.VolumeID)) ||
		strings.Contains(string(fstab), ebs.Serial(first.VolumeID)) {
		t.Fatalf("fstab:\n%s", fstab)
	}

	// Again: nothing to do, nothing created.
	again, err := e.m.Restore(ctxT(t, time.Minute), vol, snapID)
	if err != nil || again.VolumeID != res.VolumeID || again.OldVolumeID != "" || len(e.ec2.Volumes()) != 2 {
		t.Fatalf("second restore: %+v %v, %d volumes", again, err, len(e.ec2.Volumes()))
	}
	// A restore of another family's snapshot is refused.
	other := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1,
		Tags: []ec2test.Tag{{Key: ebs.TagFamily, Value: "ethereum/sepolia/geth"}}})
	if _, err := e.m.Restore(ctxT(t, time.Minute), vol, other); !errors.Is(err, ebs.ErrNoSnapshot) {
		t.Fatalf("another family's snapshot: %v", err)
	}
}
