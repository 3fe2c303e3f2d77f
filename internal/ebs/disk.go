package ebs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
)

// Signature is what blkid finds on a device.
type Signature struct {
	Type   string // filesystem type (xfs, ext4, ...), "" if none
	UUID   string
	PTType string // partition table type, "" if none
}

// mountable are the filesystems ensure mounts as they are (it only ever makes xfs or ext4, but a disk restored
// from an older snapshot may carry ext3/ext2).
var mountable = map[string]bool{"xfs": true, "ext4": true, "ext3": true, "ext2": true}

// Probe reads the device's signatures with `blkid -p` (low-level probing, no cache). found is false only when
// blkid positively reports nothing (exit 2); ambivalent results (several signatures) are an error.
func Probe(ctx context.Context, dev string) (sig Signature, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "blkid", "-p", "-o", "export", dev)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case 2:
			return Signature{}, false, nil
		case 8:
			return Signature{}, true, fmt.Errorf("blkid %s: ambivalent probing result (several signatures): %w", dev, ErrUnknownContents)
		}
	}
	if err != nil {
		return Signature{}, false, fmt.Errorf("blkid -p %s: %w: %s", dev, err, strings.TrimSpace(stderr.String()))
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "TYPE":
			sig.Type = v
		case "UUID":
			sig.UUID = v
		case "PTTYPE":
			sig.PTType = v
		}
	}
	return sig, true, nil
}

// headIsZero reports whether the first n bytes of the device are all zero, as on a fresh EBS volume.
func headIsZero(dev string, n int) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	buf := make([]byte, n)
	got, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return false, fmt.Errorf("read %s: %w", dev, err)
	}
	for _, b := range buf[:got] {
		if b != 0 {
			return false, nil
		}
	}
	return true, nil
}

// MakeFilesystemIfBlank makes fsType on dev only when blkid finds no signature at all and the first MiB is zero;
// it returns the device's signature afterwards and whether it formatted. A known filesystem is left alone;
// anything else (partition table, LVM, swap, unknown bytes) is refused with ErrUnknownContents.
func MakeFilesystemIfBlank(ctx context.Context, dev, fsType, label string) (Signature, bool, error) {
	sig, found, err := Probe(ctx, dev)
	if err != nil {
		return sig, false, err
	}
	if found {
		if sig.Type != "" && mountable[sig.Type] && sig.PTType == "" {
			return sig, false, nil
		}
		return sig, false, fmt.Errorf("%s has TYPE=%q PTTYPE=%q: %w", dev, sig.Type, sig.PTType, ErrUnknownContents)
	}
	zero, err := headIsZero(dev, 1<<20)
	if err != nil {
		return sig, false, err
	}
	if !zero {
		return sig, false, fmt.Errorf("%s: blkid finds no signature but the first MiB is not zero: %w", dev, ErrUnknownContents)
	}
	var args []string
	switch fsType {
	case "xfs":
		// No -f: mkfs.xfs itself refuses a device with any signature, a second guard.
		// -K: no discard; a fresh EBS volume reads zero already and discarding terabytes takes long.
		args = []string{"mkfs.xfs", "-q", "-K", "-L", trimLabel(label, 12), dev}
	case "ext4":
		args = []string{"mkfs.ext4", "-q", "-E", "nodiscard", "-L", trimLabel(label, 16), dev}
	default:
		return sig, false, fmt.Errorf("filesystem %q is not xfs or ext4", fsType)
	}
	if out, err := run(ctx, 30*time.Minute, args...); err != nil {
		return sig, false, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	sig, found, err = Probe(ctx, dev)
	if err != nil {
		return sig, true, err
	}
	if !found || sig.Type != fsType {
		return sig, true, fmt.Errorf("after mkfs, blkid finds TYPE=%q on %s, not %s", sig.Type, dev, fsType)
	}
	return sig, true, nil
}

func trimLabel(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func run(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	Dev        uint64 // major:minor
	MountPoint string
	FSType     string
}

func mounts() ([]mountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []mountEntry
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		var maj, min uint64
		if _, err := fmt.Sscanf(f[2], "%d:%d", &maj, &min); err != nil {
			continue
		}
		e := mountEntry{Dev: maj<<32 | min, MountPoint: unescapeMount(f[4])}
		for i := 6; i < len(f); i++ {
			if f[i] == "-" && i+1 < len(f) {
				e.FSType = f[i+1]
				break
			}
		}
		out = append(out, e)
	}
	return out, nil
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// devNumber returns a block device's major:minor in mountinfo's encoding (minor < 256 on the devices we see).
func devNumber(dev string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dev, err)
	}
	maj := (st.Rdev >> 8) & 0xfff
	min := (st.Rdev & 0xff) | ((st.Rdev >> 12) & 0xfff00)
	return maj<<32 | min, nil
}

// Mount mounts dev at path unless it is already; something else mounted there, or dev mounted elsewhere, is an
// error.
func Mount(ctx context.Context, dev, path, fsType string) (already bool, err error) {
	num, err := devNumber(dev)
	if err != nil {
		return false, err
	}
	ms, err := mounts()
	if err != nil {
		return false, fmt.Errorf("read mounts: %w", err)
	}
	for _, e := range ms {
		switch {
		case e.MountPoint == path && e.Dev == num:
			already = true
		case e.MountPoint == path:
			return false, fmt.Errorf("another filesystem (%s) is mounted at %s", e.FSType, path)
		case e.Dev == num:
			return false, fmt.Errorf("%s is already mounted at %s", dev, e.MountPoint)
		}
	}
	if already {
		return true, nil
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return false, fmt.Errorf("create mount point: %w", err)
	}
	if out, err := run(ctx, 5*time.Minute, "mount", "-t", fsType, "-o", mountOptions(fsType, false), dev, path); err != nil {
		return false, fmt.Errorf("mount %s at %s: %w: %s", dev, path, err, out)
	}
	return false, nil
}

// mountOptions: noatime for chain databases; nouuid for xfs so two volumes restored from one snapshot (same
// filesystem UUID) can be mounted on one host; nofail in fstab so a missing volume never blocks the boot.
func mountOptions(fsType string, fstab bool) string {
	opts := []string{"noatime"}
	if fstab {
		opts = append([]string{"defaults", "nofail"}, opts...)
	}
	if fsType == "xfs" {
		opts = append(opts, "nouuid")
	}
	return strings.Join(opts, ",")
}

// UpdateFstab makes path's entry in the fstab file "source path fsType options 0 2" (with a comment line naming
// the volume), replacing any line for the same mount point and leaving every other line as it was. It writes
// only when something changed, atomically.
func UpdateFstab(fstab, volume, volumeID, source, path, fsType string) (changed bool, err error) {
	old, err := os.ReadFile(fstab)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", fstab, err)
	}
	marker := "# chainwarden volume " + volume
	entry := fmt.Sprintf("%s %s %s %s 0 2", source, path, fsType, mountOptions(fsType, true))
	var lines []string
	if len(old) > 0 {
		lines = strings.Split(strings.TrimRight(string(old), "\n"), "\n")
	}
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, marker+" ") || l == marker {
			continue
		}
		if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") && f[1] == path {
			continue
		}
		out = append(out, l)
	}
	out = append(out, fmt.Sprintf("%s (%s), written by chainwarden volume ensure", marker, volumeID), entry)
	next := strings.Join(out, "\n") + "\n"
	if next == string(old) {
		return false, nil
	}
	return true, writeAtomic(fstab, []byte(next), 0o644)
}

// NomadHostVolume is the Nomad client config that makes the mount a host volume named like the volume.
func NomadHostVolume(vol Volume) string {
	f := hclwrite.NewEmptyFile()
	body := f.Body()
	body.AppendUnstructuredTokens(hclwrite.Tokens{{Type: hclsyntax.TokenComment,
		Bytes: []byte("# Written by chainwarden volume ensure for EBS volume " + strconv.Quote(vol.Name) + "; rewritten at every boot.\n")}})
	hv := body.AppendNewBlock("client", nil).Body().AppendNewBlock("host_volume", []string{vol.Name}).Body()
	hv.SetAttributeValue("path", cty.StringVal(vol.MountPath))
	hv.SetAttributeValue("read_only", cty.False)
	return string(f.Bytes())
}

// writeAtomic writes through a temp file in the same directory and a rename, keeping the old file's mode.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// prepare is the host half of Ensure: filesystem (only on a blank disk), mount, fstab, Nomad config.
func (m *Manager) prepare(ctx context.Context, vol Volume, dev Device, res *EnsureResult) error {
	log := m.Log.With("volume", vol.Name, "device", dev.Path)
	sig, formatted, err := MakeFilesystemIfBlank(ctx, dev.Path, vol.Filesystem, vol.Name)
	if err != nil {
		return fmt.Errorf("volume %s (%s): %w", vol.Name, res.VolumeID, err)
	}
	res.Formatted, res.Filesystem = formatted, sig.Type
	if formatted {
		log.Info("made a filesystem on the blank disk", "fs", sig.Type, "uuid", sig.UUID)
	} else {
		log.Info("disk has a filesystem: mounting it as it is", "fs", sig.Type, "uuid", sig.UUID)
		if sig.Type != vol.Filesystem {
			log.Warn("filesystem differs from the configured one; keeping the data", "found", sig.Type, "configured", vol.Filesystem)
		}
	}
	already, err := Mount(ctx, dev.Path, vol.MountPath, sig.Type)
	if err != nil {
		return fmt.Errorf("volume %s: %w", vol.Name, err)
	}
	if !already {
		log.Info("mounted", "path", vol.MountPath)
	}
	res.Source = dev.Link
	if res.Source == "" {
		res.Source = "UUID=" + sig.UUID
	}
	unlock, err := m.lock(ctx, "fstab")
	if err != nil {
		return err
	}
	changed, err := UpdateFstab(m.Paths.Fstab, vol.Name, res.VolumeID, res.Source, vol.MountPath, sig.Type)
	unlock()
	if err != nil {
		return fmt.Errorf("volume %s: fstab: %w", vol.Name, err)
	}
	if changed {
		log.Info("fstab entry written", "fstab", m.Paths.Fstab, "source", res.Source)
	}
	if m.NoNomadConfig {
		return nil
	}
	res.NomadConfig = filepath.Join(m.Paths.NomadConfigDir, "chainwarden-volume-"+vol.Name+".hcl")
	want := NomadHostVolume(vol)
	if have, err := os.ReadFile(res.NomadConfig); err != nil || string(have) != want {
		if err := writeAtomic(res.NomadConfig, []byte(want), 0o644); err != nil {
			return fmt.Errorf("volume %s: nomad host_volume config: %w", vol.Name, err)
		}
		log.Info("nomad host_volume config written", "file", res.NomadConfig)
	}
	return nil
}
