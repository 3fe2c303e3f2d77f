package ebs_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/chainwarden/chainwarden/internal/ebs"
)

// fill allocates a file on the filesystem at dir so that it is pct percent used (as df counts it).
func fill(t *testing.T, dir, name string, pct float64) {
	t.Helper()
	u, err := ebs.DiskUsage(dir)
	if err != nil {
		t.Fatal(err)
	}
	need := int64(pct/100*float64(u.Used+u.Avail)) - int64(u.Used)
	if need <= 0 {
		return
	}
	run(t, "fallocate", "-l", strconv.FormatInt(need, 10), filepath.Join(dir, name))
}

// writeData writes n MiB of random bytes to path and returns their SHA-256.
func writeData(t *testing.T, path string, n int) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, int64(n)<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func checksum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// The whole grow on a real filesystem: a loop device stands in for the EBS volume, and the EC2 test server's
// ModifyVolume grows it in place (truncate of the backing file + losetup -c, when the modification reaches
// "optimizing", as AWS makes the new size visible then). Below the threshold nothing happens; past it the volume
// grows from 1 to 2 GiB and the filesystem online with it, the data on it intact (checksum, and a read-only fsck
// after unmounting); past it again at max_size_gib it is refused, with the metric saying so.
func TestGrowVolumeAndFilesystemOnline(t *testing.T) {
	integration(t)
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t)
			dev, img := loopDeviceFile(t, 1024)
			e.addDisk(dev)
			e.ec2.OnModify = func(volumeID string, sizeGiB int32) {
				if err := os.Truncate(img, int64(sizeGiB)<<30); err != nil {
					t.Errorf("grow the backing file: %v", err)
				}
				if out, err := exec.Command("losetup", "-c", dev).CombinedOutput(); err != nil {
					t.Errorf("losetup -c %s: %v: %s", dev, err, out)
				}
			}
			vol := e.volume("grow-"+fs, func(v *ebs.Volume) {
				v.Filesystem = fs
				v.Grow = &ebs.Grow{Threshold: 80, StepGiB: 1, MaxSizeGiB: 2, Interval: time.Minute}
			})
			cleanupMount(t, vol.MountPath)
			if _, err := e.m.Ensure(ctxT(t, 60*time.Second), vol); err != nil {
				t.Fatal(err)
			}
			sum := writeData(t, filepath.Join(vol.MountPath, "chaindata.bin"), 16)
			reg := prometheus.NewRegistry()
			g := &ebs.Grower{Manager: e.m, Volumes: []ebs.Volume{vol}, Log: e.m.Log, Metrics: ebs.NewGrowMetrics(reg)}

			// Below the threshold: nothing is modified.
			if err := g.Check(ctxT(t, time.Minute), vol); err != nil {
				t.Fatal(err)
			}
			if n := e.ec2.Calls("ModifyVolume"); n != 0 {
				t.Fatalf("%d ModifyVolume calls below the threshold", n)
			}
			before, _ := ebs.DiskUsage(vol.MountPath)
			fill(t, vol.MountPath, "filler-1", 90)

			if capErr := (ebs.RealHostFS{}).CanGrowOnline(fs); capErr != nil {
				// Root without the capability the kernel asks for (CAP_SYS_RESOURCE for ext4, dropped in many
				// containers): the volume is not modified, and the error says why.
				err := g.Check(ctxT(t, time.Minute), vol)
				if err == nil || !strings.Contains(err.Error(), "which this process lacks") {
					t.Fatalf("grow without the capability: %v", err)
				}
				if n := e.ec2.Calls("ModifyVolume"); n != 0 || e.ec2.Volumes()[0].Size != 1 {
					t.Fatalf("%d ModifyVolume calls although the filesystem could not follow", n)
				}
				if got := checksum(t, filepath.Join(vol.MountPath, "chaindata.bin")); got != sum {
					t.Fatal("the data changed")
				}
				if testutil.ToFloat64(g.Metrics.Grows.WithLabelValues(vol.Name, "failed")) != 1 {
					t.Fatalf("metrics:\n%s", gather(t, reg))
				}
				t.Logf("%s: not grown here, as it must not be: %v", fs, err)
				return
			}

			// Past it: the volume and the filesystem grow.
			started := time.Now()
			res, err := e.m.GrowIfNeeded(ctxT(t, 2*time.Minute), vol)
			took := time.Since(started)
			if err != nil {
				t.Fatal(err)
			}
			after, _ := ebs.DiskUsage(vol.MountPath)
			if !res.Modified || res.FromGiB != 1 || res.ToGiB != 2 || !res.FSGrown || res.FSAfter < res.FSBefore*19/10 {
				t.Fatalf("grow result %+v", res)
			}
			if after.Total < before.Total*19/10 || after.Percent() >= 80 {
				t.Fatalf("filesystem %d -> %d bytes, %.1f%% used after growing", before.Total, after.Total, after.Percent())
			}
			if v := e.ec2.Volumes()[0]; v.Size != 2 {
				t.Fatalf("EBS volume %v is %d GiB", v, v.Size)
			}
			if got := checksum(t, filepath.Join(vol.MountPath, "chaindata.bin")); got != sum {
				t.Fatal("the data changed while growing")
			}
			t.Logf("%s grown 1 -> 2 GiB (filesystem %d -> %d MiB, %.1f%% -> %.1f%% used) in %s (manager: %s)",
				fs, before.Total>>20, after.Total>>20, res.UsedPercent, after.Percent(), took.Round(time.Millisecond),
				res.Took.Round(time.Millisecond))

			// Past it again at max_size_gib: refused, clearly, and the metric says so.
			fill(t, vol.MountPath, "filler-2", 90)
			err = g.Check(ctxT(t, time.Minute), vol)
			if !errors.Is(err, ebs.ErrAtMaxSize) || !strings.Contains(err.Error(), "max_size_gib 2") {
				t.Fatalf("grow past max_size_gib: %v", err)
			}
			if n := e.ec2.Calls("ModifyVolume"); n != 1 {
				t.Fatalf("%d ModifyVolume calls, want the one grow", n)
			}
			m := g.Metrics
			if testutil.ToFloat64(m.AtMax.WithLabelValues(vol.Name)) != 1 ||
				testutil.ToFloat64(m.Grows.WithLabelValues(vol.Name, "at_max")) != 1 ||
				testutil.ToFloat64(m.SizeGiB.WithLabelValues(vol.Name)) != 2 ||
				testutil.ToFloat64(m.UsedRatio.WithLabelValues(vol.Name)) < 0.8 {
				t.Fatalf("metrics after refusing:\n%s", gather(t, reg))
			}

			// Unmounted, the filesystem checks clean and the data reads back the same once more.
			if got := checksum(t, filepath.Join(vol.MountPath, "chaindata.bin")); got != sum {
				t.Fatal("the data changed")
			}
			run(t, "umount", vol.MountPath)
			// What the checker reads is the device, not a page cache that the unmount's last writes have not reached.
			// (That the unmount really ends the filesystem, not only this namespace's view of it, is TestMain's doing.)
			run(t, "sync")
			run(t, "blockdev", "--flushbufs", dev)
			if fs == "xfs" {
				run(t, "xfs_repair", "-n", dev)
			} else {
				run(t, "e2fsck", "-fn", dev)
			}
		})
	}
}

func gather(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			fmt.Fprintf(&b, "%s %v\n", mf.GetName(), m)
		}
	}
	return b.String()
}
