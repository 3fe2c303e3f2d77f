package ebs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/chainwarden/chainwarden/agent/config"
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

// pluginParams are the volume spec parameters the plugin understands (the rest is an error, to catch typos).
var pluginParams = map[string]string{
	"chain": "string", "network": "string", "client": "string", "node": "string", "type": "string",
	"kms_key_id": "string", "filesystem": "string", "iops": "number", "throughput": "number", "encrypted": "bool",
}

// hclString quotes s for HCL: Go quoting plus escaped template sequences.
func hclString(s string) string {
	q := strconv.Quote(s)
	q = strings.ReplaceAll(q, "${", "$${")
	return strings.ReplaceAll(q, "%{", "%%{")
}

// PluginVolume turns a create request into a volume, validated exactly like a volume block of the agent config.
// The volume is mounted at <DHV_VOLUMES_DIR>/<volume id>; its size is capacity_min rounded up to GiB (100 GiB
// when the spec gives none).
func PluginVolume(r PluginRequest) (config.Volume, error) {
	if r.VolumeName == "" || r.VolumeID == "" || r.VolumesDir == "" {
		return config.Volume{}, errors.New("DHV_VOLUME_NAME, DHV_VOLUME_ID and DHV_VOLUMES_DIR must be set")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "consul {}\nvolume %s {\n", hclString(r.VolumeName))
	for k, v := range r.Parameters {
		switch pluginParams[k] {
		case "string":
			fmt.Fprintf(&b, "  %s = %s\n", k, hclString(v))
		case "number":
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil {
				return config.Volume{}, fmt.Errorf("parameter %s=%q is not a number", k, v)
			}
			fmt.Fprintf(&b, "  %s = %d\n", k, n)
		case "bool":
			t, err := strconv.ParseBool(v)
			if err != nil {
				return config.Volume{}, fmt.Errorf("parameter %s=%q is not true or false", k, v)
			}
			fmt.Fprintf(&b, "  %s = %v\n", k, t)
		default:
			return config.Volume{}, fmt.Errorf("unknown parameter %q (known: chain, network, client, node, type, iops, throughput, encrypted, kms_key_id, filesystem)", k)
		}
	}
	if r.CapacityMin > 0 {
		gib := (r.CapacityMin + 1<<30 - 1) >> 30
		if r.CapacityMax > 0 && gib<<30 > r.CapacityMax {
			return config.Volume{}, fmt.Errorf("capacity_min %d rounded up to %d GiB exceeds capacity_max %d", r.CapacityMin, gib, r.CapacityMax)
		}
		fmt.Fprintf(&b, "  size_gib = %d\n", gib)
	}
	fmt.Fprintf(&b, "  mount_path = %s\n}\n", hclString(filepath.Join(r.VolumesDir, r.VolumeID)))
	cfg, err := config.Parse([]byte(b.String()), "volume parameters")
	if err != nil {
		return config.Volume{}, err
	}
	return cfg.Volumes[0], nil
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
