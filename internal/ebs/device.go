package ebs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Device is the block device of an attached volume.
type Device struct {
	Path string // the device node, e.g. /dev/nvme1n1
	Link string // a stable link to it (by-id), "" when only the serial matched
}

// DeviceFinder maps an attached EBS volume id to its block device; ErrNoDevice while it is not there yet.
type DeviceFinder interface {
	Find(volumeID string) (Device, error)
}

// NVMe finds EBS volumes on Nitro instances: the udev link
// <ByIDDir>/nvme-Amazon_Elastic_Block_Store_vol0123... (the volume id without its hyphen is the NVMe serial),
// else the NVMe controller serial in sysfs (<SysBlockDir>/nvme*n1/device/serial) when udev made no link.
type NVMe struct {
	ByIDDir     string // default /dev/disk/by-id
	SysBlockDir string // default /sys/block
	DevDir      string // default /dev
}

// Serial is the NVMe serial of an EBS volume: its id without the hyphen.
func Serial(volumeID string) string { return strings.ReplaceAll(volumeID, "-", "") }

// Find implements DeviceFinder.
func (n NVMe) Find(volumeID string) (Device, error) {
	byID, sys, dev := n.ByIDDir, n.SysBlockDir, n.DevDir
	if byID == "" {
		byID = "/dev/disk/by-id"
	}
	if sys == "" {
		sys = "/sys/block"
	}
	if dev == "" {
		dev = "/dev"
	}
	serial := Serial(volumeID)
	link := filepath.Join(byID, "nvme-Amazon_Elastic_Block_Store_"+serial)
	if target, err := filepath.EvalSymlinks(link); err == nil {
		if err := isBlockDevice(target); err != nil {
			return Device{}, fmt.Errorf("by-id link %s: %w", link, err)
		}
		return Device{Path: target, Link: link}, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return Device{}, fmt.Errorf("resolve %s: %w", link, err)
	}
	entries, err := os.ReadDir(sys)
	if err != nil {
		return Device{}, fmt.Errorf("read %s: %w", sys, err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "nvme") || strings.Contains(name, "p") && strings.LastIndex(name, "p") > strings.LastIndex(name, "n") {
			continue // only whole namespaces, no partitions (nvme1n1p1)
		}
		b, err := os.ReadFile(filepath.Join(sys, name, "device", "serial"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == serial {
			return Device{Path: filepath.Join(dev, name)}, nil
		}
	}
	return Device{}, fmt.Errorf("volume %s: %w", volumeID, ErrNoDevice)
}

func isBlockDevice(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
		return fmt.Errorf("%s is not a block device", path)
	}
	return nil
}
