package config

import (
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/chainwarden/chainwarden/internal/nodespec"
)

// Volume is an EBS-backed host volume this host keeps for a chain node (see `chainwarden volume`).
type Volume struct {
	Name       string `hcl:"name,label"`
	Chain      string `hcl:"chain"`
	Network    string `hcl:"network"`
	Client     string `hcl:"client"`
	Service    string `hcl:"service,optional"` // Consul service whose check gates snapshots
	Node       string `hcl:"node,optional"`    // node name (Consul service ID suffix) of the writer
	SizeGiB    int32  `hcl:"size_gib,optional"`
	Type       string `hcl:"type,optional"`
	IOPS       *int32 `hcl:"iops,optional"`
	Throughput *int32 `hcl:"throughput,optional"`
	Encrypted  *bool  `hcl:"encrypted,optional"`
	KMSKeyID   string `hcl:"kms_key_id,optional"`
	MountPath  string `hcl:"mount_path,optional"`
	Filesystem string `hcl:"filesystem,optional"`
	Snapshot   string `hcl:"snapshot_interval,optional"`
	Keep       int    `hcl:"keep_snapshots,optional"`
	// How `volume snapshot` makes the disk consistent: "fsfreeze" (default) freezes the filesystem at mount_path,
	// "command" runs stop_command before and start_command after, "none" takes a crash-consistent snapshot.
	Freeze       string   `hcl:"freeze,optional"`
	StopCommand  []string `hcl:"stop_command,optional"`
	StartCommand []string `hcl:"start_command,optional"`
	DrainWait    string   `hcl:"drain_wait,optional"` // pause after Consul maintenance so proxies drop the node

	// Filled by Validate.
	SnapshotDur  time.Duration // 0 = no scheduled snapshots
	DrainWaitDur time.Duration

	Range hcl.Range
}

func (v *validator) volume(vol *Volume) {
	at := func(attr string) hcl.Range { return v.attrRange("volume", vol.Name, attr) }
	if !nodespec.ValidName(vol.Name) {
		v.errf(vol.Range, "volume %q: the name must be letters, digits and dashes", vol.Name)
	}
	for _, attr := range []string{"chain", "network", "client"} {
		val := map[string]string{"chain": vol.Chain, "network": vol.Network, "client": vol.Client}[attr]
		if val == "" {
			v.errf(at(attr), "volume %q: %s must not be empty", vol.Name, attr)
		} else if strings.ContainsAny(val, "/ ") {
			v.errf(at(attr), "volume %q: %s %q must not contain a slash or a space", vol.Name, attr, val)
		}
	}
	if vol.SizeGiB == 0 {
		vol.SizeGiB = 100
	}
	if vol.SizeGiB < 1 || vol.SizeGiB > 65536 {
		v.errf(at("size_gib"), "volume %q: size_gib %d is not between 1 and 65536", vol.Name, vol.SizeGiB)
	}
	if vol.Type == "" {
		vol.Type = "gp3"
	}
	switch vol.Type {
	case "gp3", "gp2", "io1", "io2", "st1", "sc1":
	default:
		v.errf(at("type"), "volume %q: type %q is not one of gp3, gp2, io1, io2, st1, sc1", vol.Name, vol.Type)
	}
	if vol.IOPS != nil && vol.Type != "gp3" && vol.Type != "io1" && vol.Type != "io2" {
		v.errf(at("iops"), "volume %q: iops is only for gp3, io1 and io2 volumes", vol.Name)
	}
	if (vol.Type == "io1" || vol.Type == "io2") && vol.IOPS == nil {
		v.errf(at("type"), "volume %q: an %s volume needs iops", vol.Name, vol.Type)
	}
	if vol.Throughput != nil && vol.Type != "gp3" {
		v.errf(at("throughput"), "volume %q: throughput is only for gp3 volumes", vol.Name)
	}
	if vol.KMSKeyID != "" {
		if vol.Encrypted != nil && !*vol.Encrypted {
			v.errf(at("kms_key_id"), "volume %q: kms_key_id needs encrypted = true", vol.Name)
		}
		t := true
		vol.Encrypted = &t
	}
	if vol.MountPath == "" {
		vol.MountPath = "/data/" + vol.Name
	}
	if !strings.HasPrefix(vol.MountPath, "/") || vol.MountPath == "/" {
		v.errf(at("mount_path"), "volume %q: mount_path %q must be an absolute path below /", vol.Name, vol.MountPath)
	}
	if vol.Filesystem == "" {
		vol.Filesystem = "xfs"
	}
	if vol.Filesystem != "xfs" && vol.Filesystem != "ext4" {
		v.errf(at("filesystem"), "volume %q: filesystem %q must be xfs or ext4", vol.Name, vol.Filesystem)
	}
	if vol.Keep == 0 {
		vol.Keep = 3
	}
	if vol.Keep < 1 {
		v.errf(at("keep_snapshots"), "volume %q: keep_snapshots must be at least 1", vol.Name)
	}
	if vol.Snapshot != "" {
		vol.SnapshotDur = v.duration(vol.Snapshot, 0, at("snapshot_interval"), "volume \""+vol.Name+"\": snapshot_interval")
		if vol.SnapshotDur > 0 && vol.SnapshotDur < time.Hour {
			v.errf(at("snapshot_interval"), "volume %q: snapshot_interval %s is shorter than 1h", vol.Name, vol.SnapshotDur)
		}
		if vol.Node == "" {
			v.errf(at("snapshot_interval"), "volume %q: snapshot_interval needs node (whose Consul check gates snapshots)", vol.Name)
		}
	}
	vol.DrainWaitDur = 10 * time.Second
	if vol.DrainWait != "" {
		vol.DrainWaitDur = v.duration(vol.DrainWait, vol.DrainWaitDur, at("drain_wait"), "volume \""+vol.Name+"\": drain_wait")
	}
	switch vol.Freeze {
	case "":
		vol.Freeze = "fsfreeze"
	case "fsfreeze", "none":
	case "command":
		if len(vol.StopCommand) == 0 || len(vol.StartCommand) == 0 {
			v.errf(at("freeze"), "volume %q: freeze = \"command\" needs stop_command and start_command", vol.Name)
		}
	default:
		v.errf(at("freeze"), "volume %q: freeze %q is not one of fsfreeze, command, none", vol.Name, vol.Freeze)
	}
	if vol.Freeze != "command" && (len(vol.StopCommand) > 0 || len(vol.StartCommand) > 0) {
		v.errf(at("freeze"), "volume %q: stop_command and start_command need freeze = \"command\"", vol.Name)
	}
}
