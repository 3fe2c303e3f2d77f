package ebs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// PluginVersion is what the Nomad dynamic host volume plugin reports on fingerprint.
const PluginVersion = "0.1.0"

// PluginRequest is what Nomad (1.10+) hands a dynamic host volume plugin in its DHV_* environment variables.
type PluginRequest struct {
	Operation   string // fingerprint, create, delete
	VolumesDir  string
	VolumeName  string
	VolumeID    string
	CreatedPath string // delete: the path create returned
	CapacityMin int64
	CapacityMax int64
	Parameters  map[string]string
}

// PluginRequestFromEnv reads a request from DHV_* variables.
func PluginRequestFromEnv(getenv func(string) string) (PluginRequest, error) {
	r := PluginRequest{
		Operation: getenv("DHV_OPERATION"), VolumesDir: getenv("DHV_VOLUMES_DIR"), VolumeName: getenv("DHV_VOLUME_NAME"),
		VolumeID: getenv("DHV_VOLUME_ID"), CreatedPath: getenv("DHV_CREATED_PATH"), Parameters: map[string]string{},
	}
	for k, p := range map[string]*int64{"DHV_CAPACITY_MIN_BYTES": &r.CapacityMin, "DHV_CAPACITY_MAX_BYTES": &r.CapacityMax} {
		if v := getenv(k); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return r, fmt.Errorf("%s=%q is not a number", k, v)
			}
			*p = n
		}
	}
	if p := getenv("DHV_PARAMETERS"); p != "" && p != "null" {
		if err := json.Unmarshal([]byte(p), &r.Parameters); err != nil {
			return r, fmt.Errorf("DHV_PARAMETERS is not a JSON object of strings: %w", err)
		}
	}
	return r, nil
}

// pluginParams are the volume parameters the plugin understands, by the name of the volume block attribute
// they set; anything else is an error, to catch typos.
var pluginParams = map[string]func(v *Volume, val string) error{
	"chain":      func(v *Volume, s string) error { v.Chain = s; return nil },
	"network":    func(v *Volume, s string) error { v.Network = s; return nil },
	"client":     func(v *Volume, s string) error { v.Client = s; return nil },
	"node":       func(v *Volume, s string) error { v.Node = s; return nil },
	"type":       func(v *Volume, s string) error { v.Type = s; return nil },
	"kms_key_id": func(v *Volume, s string) error { v.KMSKeyID = s; return nil },
	"filesystem": func(v *Volume, s string) error { v.Filesystem = s; return nil },
	"iops":       func(v *Volume, s string) (err error) { v.IOPS, err = int32Param(s); return err },
	"throughput": func(v *Volume, s string) (err error) { v.Throughput, err = int32Param(s); return err },
	"encrypted": func(v *Volume, s string) error {
		t, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("is not true or false")
		}
		v.Encrypted = &t
		return nil
	},
}

func int32Param(s string) (*int32, error) {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return nil, errors.New("is not a number")
	}
	n32 := int32(n)
	return &n32, nil
}

// PluginVolume turns a create request into a volume, validated by the same rules as a volume block of the agent
// config. The volume is mounted at <DHV_VOLUMES_DIR>/<volume id>; its size is capacity_min rounded up to GiB
// (100 GiB when the spec gives none).
func PluginVolume(r PluginRequest) (Volume, error) {
	if r.VolumeName == "" || r.VolumeID == "" || r.VolumesDir == "" {
		return Volume{}, errors.New("DHV_VOLUME_NAME, DHV_VOLUME_ID and DHV_VOLUMES_DIR must be set")
	}
	vol := Volume{Name: r.VolumeName, MountPath: filepath.Join(r.VolumesDir, r.VolumeID)}
	for _, k := range slices.Sorted(maps.Keys(r.Parameters)) {
		set, ok := pluginParams[k]
		if !ok {
			return Volume{}, fmt.Errorf("unknown parameter %q (known: chain, network, client, node, type, iops, throughput, encrypted, kms_key_id, filesystem)", k)
		}
		if err := set(&vol, r.Parameters[k]); err != nil {
			return Volume{}, fmt.Errorf("parameter %s=%q %w", k, r.Parameters[k], err)
		}
	}
	if r.CapacityMin > 0 {
		gib := (r.CapacityMin + 1<<30 - 1) >> 30
		if r.CapacityMax > 0 && gib<<30 > r.CapacityMax {
			return Volume{}, fmt.Errorf("capacity_min %d rounded up to %d GiB exceeds capacity_max %d", r.CapacityMin, gib, r.CapacityMax)
		}
		if gib > 65536 {
			return Volume{}, fmt.Errorf("capacity_min %d is more than 65536 GiB", r.CapacityMin)
		}
		vol.SizeGiB = int32(gib)
	}
	if err := vol.Validate().Err(); err != nil {
		return Volume{}, err
	}
	return vol, nil
}

// PluginCreateResponse is the JSON a plugin prints for create.
type PluginCreateResponse struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

// PluginCreate ensures the EBS volume of a Nomad dynamic host volume (the same steps as Ensure, without the
// static host_volume file). Nomad gives create 60 s; ensure is idempotent, so a retry continues a slow run.
func (m *Manager) PluginCreate(ctx context.Context, r PluginRequest) (*PluginCreateResponse, error) {
	vol, err := PluginVolume(r)
	if err != nil {
		return nil, err
	}
	m.NoNomadConfig = true
	res, err := m.Ensure(ctx, vol)
	if err != nil {
		return nil, err
	}
	return &PluginCreateResponse{Path: res.MountPath, Bytes: int64(vol.SizeGiB) << 30}, nil
}

// PluginDelete unmounts a dynamic host volume and drops its fstab entry. The EBS volume itself is kept (attached,
// with its data and tags): deleting chain data is never implicit. Create of the same name finds it again.
func (m *Manager) PluginDelete(ctx context.Context, r PluginRequest) error {
	m.defaults()
	path := r.CreatedPath
	if path == "" {
		return errors.New("DHV_CREATED_PATH is not set")
	}
	ms, err := mounts()
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	for _, e := range ms {
		if e.MountPoint == path {
			if out, err := run(ctx, 5*time.Minute, "umount", path); err != nil {
				return fmt.Errorf("umount %s: %w: %s", path, err, out)
			}
			m.Log.Info("unmounted; the EBS volume is kept", "path", path, "volume", r.VolumeName)
			break
		}
	}
	unlock, err := m.lock(ctx, "fstab")
	if err != nil {
		return err
	}
	defer unlock()
	if err := RemoveFstab(m.Paths.Fstab, r.VolumeName, path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.Log.Warn("could not remove the mount point", "path", path, "error", err)
	}
	return nil
}

// RemoveFstab drops the entry for path and its chainwarden comment line; other lines stay as they were.
func RemoveFstab(fstab, volume, path string) error {
	old, err := os.ReadFile(fstab)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", fstab, err)
	}
	marker := "# chainwarden volume " + volume
	var out []string
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		if strings.HasPrefix(l, marker+" ") || l == marker {
			continue
		}
		if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") && f[1] == path {
			continue
		}
		out = append(out, l)
	}
	next := strings.Join(out, "\n") + "\n"
	if len(out) == 0 {
		next = ""
	}
	if next == string(old) {
		return nil
	}
	return writeAtomic(fstab, []byte(next), 0o644)
}
