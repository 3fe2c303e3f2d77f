package packer_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// imageRecipe names the way buildNodeImage makes the image; change it when that changes, so cached images made the
// old way are not used.
const imageRecipe = "node-image-v1"

// imageTestVersion is what the image's chainwarden binary reports.
const imageTestVersion = "test-image"

// nodeImage is the node AMI as a bootable disk: the root file system (raw ext4, no partition table, the guest's
// /dev/vda) and the kernel and initramfs the image installed, booted directly by qemu.
type nodeImage struct {
	Dir, Root, Kernel, Initrd string
	Manifest                  imageManifest
}

// imageManifest describes a built image (manifest.json beside it).
type imageManifest struct {
	Key           string    `json:"key"`
	Built         time.Time `json:"built"`
	BuildSeconds  float64   `json:"build_seconds"`
	Kernel        string    `json:"kernel"`
	TreeBytes     int64     `json:"tree_bytes"`       // the files of the root file system
	RootBytes     int64     `json:"root_bytes"`       // the ext4 image's size (sparse)
	RootAllocated int64     `json:"root_allocated"`   // what it takes on disk
	InitrdBytes   int64     `json:"initrd_bytes"`     //
	KernelBytes   int64     `json:"kernel_bytes"`     //
	Provisioning  string    `json:"provisioning_log"` // tail of provision.sh's output
}

// imageInputs are the files the image is made from, relative to packer/: the provisioning (scripts, files),
// the repository's consul-templates/ it uploads, and the stand-in for the base AMI.
func imageInputs(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, root := range []string{"scripts", "files", "../consul-templates", "testdata/ami-base.sh"} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if d.Name() == "testdata" && root != "testdata/ami-base.sh" {
					return filepath.SkipDir
				}
				return nil
			}
			if strings.HasSuffix(p, "_test.go") {
				return nil
			}
			files = append(files, p)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(files)
	return files
}

// imageKey hashes everything the image is made from: the recipe, the input files (path, mode, content), the
// uploaded binaries and the cached base root file system.
func imageKey(t *testing.T, bins map[string]string, base string) string {
	t.Helper()
	h := sha256.New()
	fmt.Fprintf(h, "recipe %s\n", imageRecipe)
	// add hashes a file under a name that does not depend on where it is (the chainwarden binary is built into a
	// fresh temporary directory every run).
	add := func(name, p string) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		info, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s %o %d\n", name, info.Mode().Perm()&0o111, info.Size())
		if _, err := io.Copy(h, f); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range imageInputs(t) {
		add("file "+p, p)
	}
	names := make([]string, 0, len(bins))
	for name := range bins {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		add("bin "+name, bins[name])
	}
	if info, err := os.Stat(base); err == nil {
		fmt.Fprintf(h, "base %s %d %d\n", filepath.Base(base), info.Size(), info.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// imageCache is where built images are kept, outside the repository beside the other deps.
func imageCache() string { return filepath.Join(filepath.Dir(testenv.CacheBin()), "image") }

// buildNodeImage returns the node image for this tree, from the cache when an image of the same inputs is there,
// else made the way the AMI is: the base (the cached debootstrapped Debian 12, plus testdata/ami-base.sh for what
// Debian's AMI has beyond it), then the template's provisioning (provision.sh and its steps, the same files in the
// same order, run by the same helper as TestProvisionDebian12), then an ext4 image of the tree.
func buildNodeImage(t *testing.T) nodeImage {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Bin(t, "chroot")
	mkfs := testenv.Bin(t, "mkfs.ext4")
	bins := provisioningBinaries(t, imageTestVersion)
	base := baseRootfs(t)
	key := imageKey(t, bins, base)
	cache := imageCache()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	// One build at a time on this machine (parallel test runs of other trees share the cache).
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	dir := filepath.Join(cache, key)
	img := nodeImage{Dir: dir, Root: filepath.Join(dir, "root.ext4"), Kernel: filepath.Join(dir, "vmlinuz"),
		Initrd: filepath.Join(dir, "initrd.img")}
	if b, err := os.ReadFile(filepath.Join(dir, "manifest.json")); err == nil {
		if err := json.Unmarshal(b, &img.Manifest); err != nil {
			t.Fatalf("%s/manifest.json: %v", dir, err)
		}
		t.Logf("node image %s from the cache (built %s in %.0fs)", key, img.Manifest.Built.Format(time.RFC3339),
			img.Manifest.BuildSeconds)
		return img
	}

	start := time.Now()
	t.Logf("building the node image %s (not in %s)", key, cache)
	c := newChroot(t)
	c.copyInto("testdata/ami-base.sh", "/tmp/ami-base.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if out, err := c.run(ctx, "", nil, "bash", "/tmp/ami-base.sh"); err != nil {
		t.Fatalf("ami-base.sh: %v\n%s", err, tail(out, 40))
	}
	os.Remove(c.path("/tmp/ami-base.sh"))
	out := provision(t, c, bins, imageTestVersion)
	// newChroot gave the build this machine's name resolution (for apt); the instance gets its own.
	if err := os.WriteFile(c.path("/etc/resolv.conf"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !unmountRootfs(t, c.dir) {
		t.FailNow()
	}

	tmp, err := os.MkdirTemp(cache, key+".tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	m := imageManifest{Key: key, Provisioning: tail(out, 20)}
	kernels, _ := filepath.Glob(c.path("/boot/vmlinuz-*"))
	initrds, _ := filepath.Glob(c.path("/boot/initrd.img-*"))
	if len(kernels) != 1 || len(initrds) != 1 {
		t.Fatalf("want one kernel and one initramfs in /boot, found %v %v", kernels, initrds)
	}
	m.Kernel = strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	for src, dst := range map[string]string{kernels[0]: "vmlinuz", initrds[0]: "initrd.img"} {
		if out, err := exec.Command("cp", src, filepath.Join(tmp, dst)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v\n%s", src, err, out)
		}
	}
	m.TreeBytes = treeBytes(t, c.dir)
	// Room for what the instance writes (Docker, Consul and Nomad state, logs); sparse, so it costs nothing until
	// written, and the boots write into their own qcow2 overlay anyway.
	size := (m.TreeBytes + 4<<30 + 255<<20) &^ (256<<20 - 1)
	root := filepath.Join(tmp, "root.ext4")
	if err := os.WriteFile(root, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(root, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "chainwarden-root", "-E", "lazy_itable_init=1,lazy_journal_init=1",
		"-d", c.dir, root).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v\n%s", err, out)
	}
	removeRootfs(t, c.dir)
	m.RootBytes, m.RootAllocated = fileSizes(t, root)
	m.KernelBytes, _ = fileSizes(t, filepath.Join(tmp, "vmlinuz"))
	m.InitrdBytes, _ = fileSizes(t, filepath.Join(tmp, "initrd.img"))
	m.Built = time.Now().UTC()
	m.BuildSeconds = time.Since(start).Seconds()
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	img.Manifest = m
	t.Logf("built the node image %s in %s: kernel %s, tree %d MiB, root.ext4 %d MiB allocated of %d MiB",
		key, time.Since(start).Round(time.Second), m.Kernel, m.TreeBytes>>20, m.RootAllocated>>20, m.RootBytes>>20)
	pruneImages(t, cache, key)
	return img
}

// pruneImages removes cached images other than keep and the newest other one (another tree may be using it).
func pruneImages(t *testing.T, cache, keep string) {
	entries, err := os.ReadDir(cache)
	if err != nil {
		return
	}
	type dirAge struct {
		name string
		mod  time.Time
	}
	var old []dirAge
	for _, e := range entries {
		if !e.IsDir() || e.Name() == keep || strings.Contains(e.Name(), ".tmp-") {
			continue
		}
		if info, err := e.Info(); err == nil {
			old = append(old, dirAge{e.Name(), info.ModTime()})
		}
	}
	sort.Slice(old, func(i, j int) bool { return old[i].mod.After(old[j].mod) })
	for i, d := range old {
		if i == 0 {
			continue
		}
		t.Logf("removing the cached image %s", d.name)
		os.RemoveAll(filepath.Join(cache, d.name))
	}
}

// treeBytes is the size of the regular files under dir.
func treeBytes(t *testing.T, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fileSizes returns a file's size and the bytes it takes on disk.
func fileSizes(t *testing.T, p string) (size, allocated int64) {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Size, st.Blocks * 512
}
