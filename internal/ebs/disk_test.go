package ebs_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
)

func TestEnsureFormatsBlankDiskMountsAndIsIdempotent(t *testing.T) {
	integration(t)
	e := newEnv(t)
	dev := loopDevice(t, 512)
	e.addDisk(dev)
	vol := e.volume("geth-data")
	cleanupMount(t, vol.MountPath)

	// Two ensures at once (as two boot units racing): one volume, one mkfs, both succeed.
	var wg sync.WaitGroup
	results := make([]*ebs.EnsureResult, 2)
	errs := make([]error, 2)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := *e.m
			results[i], errs[i] = m.Ensure(ctxT(t, 60*time.Second), vol)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(e.ec2.Volumes()) != 1 || results[0].VolumeID != results[1].VolumeID {
		t.Fatalf("volumes %v, results %+v %+v", e.ec2.Volumes(), results[0], results[1])
	}
	if results[0].Formatted == results[1].Formatted {
		t.Fatalf("formatted: %v and %v, want exactly one mkfs", results[0].Formatted, results[1].Formatted)
	}
	res := results[0]
	if res.Device != dev || res.Filesystem != "xfs" {
		t.Fatalf("result %+v", res)
	}
	if fs := mountFSType(vol.MountPath); fs != "xfs" {
		t.Fatalf("%s mounted as %q, want xfs", vol.MountPath, fs)
	}
	link := filepath.Join(e.byID, "nvme-Amazon_Elastic_Block_Store_"+ebs.Serial(res.VolumeID))
	fstab, _ := os.ReadFile(e.m.Paths.Fstab)
	wantLine := link + " " + vol.MountPath + " xfs defaults,nofail,noatime,nouuid 0 2\n"
	if !strings.Contains(string(fstab), wantLine) || strings.Count(string(fstab), vol.MountPath) != 1 {
		t.Fatalf("fstab:\n%s\nwant the line %q once", fstab, wantLine)
	}
	nomad, err := os.ReadFile(filepath.Join(e.m.Paths.NomadConfigDir, "chainwarden-volume-geth-data.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(nomad), `host_volume "geth-data" {`) || !strings.Contains(string(nomad), `path      = "`+vol.MountPath+`"`) {
		t.Fatalf("nomad config:\n%s", nomad)
	}

	// Data written, then ensure again (a reboot's run): nothing is formatted, the data is there.
	data := []byte("chaindata 19000000\n")
	if err := os.WriteFile(filepath.Join(vol.MountPath, "CURRENT"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "sync")
	again, err := e.m.Ensure(ctxT(t, 60*time.Second), vol)
	if err != nil {
		t.Fatal(err)
	}
	if again.Formatted || !again.Reused || again.VolumeID != res.VolumeID {
		t.Fatalf("second ensure %+v", again)
	}
	if got, _ := os.ReadFile(filepath.Join(vol.MountPath, "CURRENT")); !bytes.Equal(got, data) {
		t.Fatalf("data after a second ensure: %q", got)
	}
	fstab2, _ := os.ReadFile(e.m.Paths.Fstab)
	if !bytes.Equal(fstab, fstab2) {
		t.Fatalf("fstab changed on an idempotent run:\n%s\n---\n%s", fstab, fstab2)
	}
	if n := e.ec2.Calls("CreateVolume"); n != 1 {
		t.Fatalf("CreateVolume called %d times, want 1", n)
	}
}

func TestEnsureMountsExistingFilesystemAndNeverFormatsIt(t *testing.T) {
	integration(t)
	e := newEnv(t)
	dev := loopDevice(t, 64)
	// The "snapshot" content: an ext4 filesystem with a file, although the volume config says xfs.
	run(t, "mkfs.ext4", "-q", dev)
	uuid := strings.TrimSpace(run(t, "blkid", "-p", "-s", "UUID", "-o", "value", dev))
	tmp := filepath.Join(t.TempDir(), "m")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", dev, tmp)
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	if err := os.WriteFile(filepath.Join(tmp, "chaindata.ldb"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "umount", tmp)
	e.addDisk(dev)
	snap := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Tags: snapTags("ethereum/mainnet/geth")})
	vol := e.volume("geth-data")
	cleanupMount(t, vol.MountPath)

	res, err := e.m.Ensure(ctxT(t, 60*time.Second), vol)
	if err != nil {
		t.Fatal(err)
	}
	if res.RestoredFrom != snap || res.Formatted || res.Filesystem != "ext4" {
		t.Fatalf("result %+v: want restored from %s, mounted as ext4, not formatted", res, snap)
	}
	if fs := mountFSType(vol.MountPath); fs != "ext4" {
		t.Fatalf("mounted as %q", fs)
	}
	got, err := os.ReadFile(filepath.Join(vol.MountPath, "chaindata.ldb"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file after ensure: %v (equal %v)", err, bytes.Equal(got, data))
	}
	if u := strings.TrimSpace(run(t, "blkid", "-p", "-s", "UUID", "-o", "value", dev)); u != uuid {
		t.Fatalf("filesystem UUID changed %s -> %s: it was re-made", uuid, u)
	}
	fstab, _ := os.ReadFile(e.m.Paths.Fstab)
	if !strings.Contains(string(fstab), " "+vol.MountPath+" ext4 defaults,nofail,noatime 0 2") {
		t.Fatalf("fstab:\n%s", fstab)
	}
}

func TestEnsureRefusesDiskWithUnknownData(t *testing.T) {
	integration(t)
	e := newEnv(t)
	dev := loopDevice(t, 64)
	junk := make([]byte, 4096)
	_, _ = rand.Read(junk)
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(junk, 8192); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.addDisk(dev)
	vol := e.volume("geth-data")
	cleanupMount(t, vol.MountPath)
	_, err = e.m.Ensure(ctxT(t, 60*time.Second), vol)
	if !errors.Is(err, ebs.ErrUnknownContents) {
		t.Fatalf("error %v, want ErrUnknownContents", err)
	}
	t.Logf("reported: %v", err)
	if isMounted(vol.MountPath) {
		t.Fatal("mounted a disk with unknown data")
	}
	f, _ = os.Open(dev)
	got := make([]byte, 4096)
	_, _ = f.ReadAt(got, 8192)
	f.Close()
	if !bytes.Equal(got, junk) {
		t.Fatal("the unknown data was changed")
	}
	if _, err := os.Stat(e.m.Paths.Fstab); !os.IsNotExist(err) {
		t.Fatal("fstab written for a refused disk")
	}
}

func TestNVMeFindsDeviceBySysfsSerial(t *testing.T) {
	dir := t.TempDir()
	sys := filepath.Join(dir, "block")
	for name, serial := range map[string]string{"nvme0n1": "vol0aaaaaaaaaaaaaaaa", "nvme1n1": "vol0123456789abcdef0 ", "nvme1n1p1": ""} {
		if err := os.MkdirAll(filepath.Join(sys, name, "device"), 0o755); err != nil {
			t.Fatal(err)
		}
		if serial != "" {
			if err := os.WriteFile(filepath.Join(sys, name, "device", "serial"), []byte(serial+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	finder := ebs.NVMe{ByIDDir: filepath.Join(dir, "by-id"), SysBlockDir: sys, DevDir: "/dev"}
	d, err := finder.Find("vol-0123456789abcdef0")
	if err != nil || d.Path != "/dev/nvme1n1" || d.Link != "" {
		t.Fatalf("find = %+v, %v", d, err)
	}
	if _, err := finder.Find("vol-0fffffffffffffff0"); !errors.Is(err, ebs.ErrNoDevice) {
		t.Fatalf("missing device: %v", err)
	}
}

func TestUpdateFstabKeepsOtherLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fstab")
	orig := "# /etc/fstab\nUUID=abc / ext4 defaults 0 1\n/dev/old /data/geth xfs defaults 0 2\ntmpfs /tmp tmpfs defaults 0 0\n"
	if err := os.WriteFile(path, []byte(orig), 0o600); err != nil {
		t.Fatal(err)
	}
	changed, err := ebs.UpdateFstab(path, "geth", "vol-1", "/dev/disk/by-id/x", "/data/geth", "xfs")
	if err != nil || !changed {
		t.Fatal(changed, err)
	}
	got, _ := os.ReadFile(path)
	want := "# /etc/fstab\nUUID=abc / ext4 defaults 0 1\ntmpfs /tmp tmpfs defaults 0 0\n" +
		"# chainwarden volume geth (vol-1), written by chainwarden volume ensure\n" +
		"/dev/disk/by-id/x /data/geth xfs defaults,nofail,noatime,nouuid 0 2\n"
	if string(got) != want {
		t.Fatalf("fstab:\n%s\nwant:\n%s", got, want)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if changed, err := ebs.UpdateFstab(path, "geth", "vol-1", "/dev/disk/by-id/x", "/data/geth", "xfs"); err != nil || changed {
		t.Fatal("second update changed the file", err)
	}
}
