package ebs

import (
	"math"
	"regexp"
	"strings"
	"time"

	"github.com/chainwarden/chainwarden/internal/fielderr"
)

// Volume is one EBS-backed host volume a host keeps for a chain node: a `volume` block of the agent's
// configuration, or the parameters of a Nomad dynamic host volume. Validate fills in the defaults.
type Volume struct {
	Name    string
	Chain   string
	Network string
	Client  string
	Service string // Consul service of the node (default: the service the node is registered under)
	Node    string // node name, the Consul service ID of the writer: its check gates snapshots

	SizeGiB    int32
	Type       string
	IOPS       *int32
	Throughput *int32
	Encrypted  *bool
	KMSKeyID   string
	MountPath  string
	Filesystem string

	SnapshotInterval time.Duration // 0: no scheduled snapshots
	Keep             int           // completed snapshots kept per family
	// How a snapshot makes the disk consistent: "fsfreeze" freezes the filesystem at MountPath, "command" runs
	// StopCommand before and StartCommand after, "none" takes a crash-consistent snapshot.
	Freeze       string
	StopCommand  []string
	StartCommand []string
	DrainWait    time.Duration // pause after Consul maintenance so proxies drop the node

	// Grow turns on growing the volume (EBS and filesystem) when its filesystem fills up; nil: never grown.
	Grow *Grow
}

// Grow says when and how far the agent grows a volume whose filesystem fills up: once more than Threshold percent
// of the filesystem is used, the EBS volume grows to the larger of size + StepGiB and size × Factor, never beyond
// MaxSizeGiB, and the filesystem is grown online to fill it.
type Grow struct {
	Threshold  int           // percent of the filesystem used that triggers growth, 1 to 99 (default 85)
	StepGiB    int32         // grow by at least this much
	Factor     float64       // grow to at least size × Factor, 1.01 to 10 (default 1.2 when step_gib is not set)
	MaxSizeGiB int32         // the volume never grows beyond this (required)
	Interval   time.Duration // how often the filesystem is looked at (default 5m, at least 10s)
}

// Defaults of a volume.
const (
	DefaultSizeGiB    = 100
	DefaultType       = "gp3"
	DefaultFilesystem = "xfs"
	DefaultKeep       = 3
	DefaultFreeze     = "fsfreeze"
	DefaultDrainWait  = 10 * time.Second
	// Growing volumes.
	DefaultGrowThreshold = 85
	DefaultGrowFactor    = 1.2
	DefaultGrowInterval  = 5 * time.Minute
	MinGrowInterval      = 10 * time.Second
	// MinSnapshotInterval keeps the scheduler from snapshotting a family more than hourly.
	MinSnapshotInterval = time.Hour
)

// volumeName follows Consul's DNS-safe naming, like node names (the volume is also a Nomad host volume name).
var volumeName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})$`)

// Validate applies the defaults and checks every field. Each problem names the configuration attribute it is
// about ("size_gib"; "" for the volume as a whole), so the config loader can point at its file and line.
func (v *Volume) Validate() fielderr.List {
	var errs fielderr.List
	if !volumeName.MatchString(v.Name) {
		errs.Add("", "volume %q: the name must be letters, digits and dashes", v.Name)
	}
	for _, f := range []struct{ attr, val string }{{"chain", v.Chain}, {"network", v.Network}, {"client", v.Client}} {
		if f.val == "" {
			errs.Add(f.attr, "volume %q: %s must not be empty", v.Name, f.attr)
		} else if strings.ContainsAny(f.val, "/ ") {
			errs.Add(f.attr, "volume %q: %s %q must not contain a slash or a space", v.Name, f.attr, f.val)
		}
	}
	if v.SizeGiB == 0 {
		v.SizeGiB = DefaultSizeGiB
	}
	if v.SizeGiB < 1 || v.SizeGiB > 65536 {
		errs.Add("size_gib", "volume %q: size_gib %d is not between 1 and 65536", v.Name, v.SizeGiB)
	}
	if v.Type == "" {
		v.Type = DefaultType
	}
	switch v.Type {
	case "gp3", "gp2", "io1", "io2", "st1", "sc1":
	default:
		errs.Add("type", "volume %q: type %q is not one of gp3, gp2, io1, io2, st1, sc1", v.Name, v.Type)
	}
	if v.IOPS != nil && v.Type != "gp3" && v.Type != "io1" && v.Type != "io2" {
		errs.Add("iops", "volume %q: iops is only for gp3, io1 and io2 volumes", v.Name)
	}
	if (v.Type == "io1" || v.Type == "io2") && v.IOPS == nil {
		errs.Add("type", "volume %q: an %s volume needs iops", v.Name, v.Type)
	}
	if v.Throughput != nil && v.Type != "gp3" {
		errs.Add("throughput", "volume %q: throughput is only for gp3 volumes", v.Name)
	}
	if v.KMSKeyID != "" {
		if v.Encrypted != nil && !*v.Encrypted {
			errs.Add("kms_key_id", "volume %q: kms_key_id needs encrypted = true", v.Name)
		}
		t := true
		v.Encrypted = &t
	}
	if v.MountPath == "" {
		v.MountPath = "/data/" + v.Name
	}
	if !strings.HasPrefix(v.MountPath, "/") || v.MountPath == "/" {
		errs.Add("mount_path", "volume %q: mount_path %q must be an absolute path below /", v.Name, v.MountPath)
	}
	if v.Filesystem == "" {
		v.Filesystem = DefaultFilesystem
	}
	if v.Filesystem != "xfs" && v.Filesystem != "ext4" {
		errs.Add("filesystem", "volume %q: filesystem %q must be xfs or ext4", v.Name, v.Filesystem)
	}
	if v.Keep == 0 {
		v.Keep = DefaultKeep
	}
	if v.Keep < 1 {
		errs.Add("keep_snapshots", "volume %q: keep_snapshots must be at least 1", v.Name)
	}
	if v.SnapshotInterval < 0 {
		errs.Add("snapshot_interval", "volume %q: snapshot_interval %s is negative", v.Name, v.SnapshotInterval)
	}
	if v.SnapshotInterval > 0 {
		if v.SnapshotInterval < MinSnapshotInterval {
			errs.Add("snapshot_interval", "volume %q: snapshot_interval %s is shorter than 1h", v.Name, v.SnapshotInterval)
		}
		if v.Node == "" {
			errs.Add("snapshot_interval", "volume %q: snapshot_interval needs node (whose Consul check gates snapshots)", v.Name)
		}
	}
	if v.DrainWait < 0 {
		errs.Add("drain_wait", "volume %q: drain_wait %s is negative", v.Name, v.DrainWait)
	}
	if v.DrainWait == 0 {
		v.DrainWait = DefaultDrainWait
	}
	switch v.Freeze {
	case "":
		v.Freeze = DefaultFreeze
	case "fsfreeze", "none":
	case "command":
		if len(v.StopCommand) == 0 || len(v.StartCommand) == 0 {
			errs.Add("freeze", "volume %q: freeze = \"command\" needs stop_command and start_command", v.Name)
		}
	default:
		errs.Add("freeze", "volume %q: freeze %q is not one of fsfreeze, command, none", v.Name, v.Freeze)
	}
	if v.Freeze != "command" && (len(v.StopCommand) > 0 || len(v.StartCommand) > 0) {
		errs.Add("freeze", "volume %q: stop_command and start_command need freeze = \"command\"", v.Name)
	}
	if v.Grow != nil {
		v.Grow.validate(v, &errs)
	}
	return errs
}

// validate applies the grow defaults and checks them; field names are "grow.<attribute>".
func (g *Grow) validate(v *Volume, errs *fielderr.List) {
	if g.Threshold == 0 {
		g.Threshold = DefaultGrowThreshold
	}
	if g.Threshold < 1 || g.Threshold > 99 {
		errs.Add("grow.threshold", "volume %q: grow threshold %d is not a percentage between 1 and 99", v.Name, g.Threshold)
	}
	if g.StepGiB < 0 {
		errs.Add("grow.step_gib", "volume %q: grow step_gib %d is negative", v.Name, g.StepGiB)
	}
	if g.Factor == 0 && g.StepGiB == 0 {
		g.Factor = DefaultGrowFactor
	}
	if g.Factor != 0 && (g.Factor < 1.01 || g.Factor > 10) {
		errs.Add("grow.factor", "volume %q: grow factor %g is not between 1.01 and 10", v.Name, g.Factor)
	}
	switch {
	case g.MaxSizeGiB == 0:
		errs.Add("grow.max_size_gib", "volume %q: grow needs max_size_gib, the size the volume never grows beyond", v.Name)
	case g.MaxSizeGiB < v.SizeGiB:
		errs.Add("grow.max_size_gib", "volume %q: grow max_size_gib %d is smaller than size_gib %d", v.Name, g.MaxSizeGiB, v.SizeGiB)
	case g.MaxSizeGiB > 65536:
		errs.Add("grow.max_size_gib", "volume %q: grow max_size_gib %d is more than EBS's largest volume (65536)", v.Name, g.MaxSizeGiB)
	}
	if g.Interval == 0 {
		g.Interval = DefaultGrowInterval
	}
	if g.Interval < MinGrowInterval {
		errs.Add("grow.check_interval", "volume %q: grow check_interval %s is shorter than %s", v.Name, g.Interval, MinGrowInterval)
	}
}

// Next is the size a volume of size GiB grows to, and false when it is at its maximum already.
func (g *Grow) Next(size int32) (int32, bool) {
	if size >= g.MaxSizeGiB {
		return size, false
	}
	next := int64(size) + int64(g.StepGiB)
	if g.Factor > 0 {
		next = max(next, int64(math.Ceil(float64(size)*g.Factor-1e-6))) // 900 × 1.1 is 990, not 990.0000001
	}
	next = max(next, int64(size)+1)
	return int32(min(next, int64(g.MaxSizeGiB))), true
}
