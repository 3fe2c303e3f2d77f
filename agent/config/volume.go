package config

import (
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/chainwarden/chainwarden/internal/ebs"
)

// VolumeBlock is a `volume` block as written in the file: an EBS-backed host volume this host keeps for a chain
// node (see `chainwarden volume`). Parse turns each into an ebs.Volume in Config.Volumes; the rules and the
// defaults are ebs.Volume's.
type VolumeBlock struct {
	Name         string     `hcl:"name,label"`
	Chain        string     `hcl:"chain"`
	Network      string     `hcl:"network"`
	Client       string     `hcl:"client"`
	Service      string     `hcl:"service,optional"`
	Node         string     `hcl:"node,optional"`
	SizeGiB      int32      `hcl:"size_gib,optional"`
	Type         string     `hcl:"type,optional"`
	IOPS         *int32     `hcl:"iops,optional"`
	Throughput   *int32     `hcl:"throughput,optional"`
	Encrypted    *bool      `hcl:"encrypted,optional"`
	KMSKeyID     string     `hcl:"kms_key_id,optional"`
	MountPath    string     `hcl:"mount_path,optional"`
	Filesystem   string     `hcl:"filesystem,optional"`
	Snapshot     string     `hcl:"snapshot_interval,optional"`
	Keep         int        `hcl:"keep_snapshots,optional"`
	Freeze       string     `hcl:"freeze,optional"`
	StopCommand  []string   `hcl:"stop_command,optional"`
	StartCommand []string   `hcl:"start_command,optional"`
	DrainWait    string     `hcl:"drain_wait,optional"`
	Grow         *GrowBlock `hcl:"grow,block"`
}

// GrowBlock is a volume's `grow` block: the agent grows the EBS volume and its filesystem once the filesystem is
// fuller than threshold percent (ebs.Grow).
type GrowBlock struct {
	Threshold  int     `hcl:"threshold,optional"`
	StepGiB    int32   `hcl:"step_gib,optional"`
	Factor     float64 `hcl:"factor,optional"`
	MaxSizeGiB int32   `hcl:"max_size_gib,optional"`
	Interval   string  `hcl:"check_interval,optional"`
}

// volumes validates every volume block into an ebs.Volume, each error at the file and line of its attribute.
func (v *validator) volumes(blocks []VolumeBlock) []ebs.Volume {
	vols := make([]ebs.Volume, 0, len(blocks))
	seen := map[string]bool{}
	for _, b := range blocks {
		block := v.blockRange("volume", b.Name)
		if seen[b.Name] {
			v.errf(block, "duplicate volume %q", b.Name)
		}
		seen[b.Name] = true
		vols = append(vols, v.volume(b, block))
	}
	return vols
}

func (v *validator) volume(b VolumeBlock, block hcl.Range) ebs.Volume {
	at := func(attr string) hcl.Range {
		if attr == "" {
			return block
		}
		if sub, ok := strings.CutPrefix(attr, "grow."); ok {
			return v.nestedAttrRange("volume", b.Name, "grow", sub)
		}
		return v.attrRange("volume", b.Name, attr)
	}
	vol := ebs.Volume{
		Name: b.Name, Chain: b.Chain, Network: b.Network, Client: b.Client, Service: b.Service, Node: b.Node,
		SizeGiB: b.SizeGiB, Type: b.Type, IOPS: b.IOPS, Throughput: b.Throughput, Encrypted: b.Encrypted,
		KMSKeyID: b.KMSKeyID, MountPath: b.MountPath, Filesystem: b.Filesystem, Keep: b.Keep, Freeze: b.Freeze,
		StopCommand: b.StopCommand, StartCommand: b.StartCommand,
	}
	var badInterval bool
	if b.Snapshot != "" {
		vol.SnapshotInterval = v.duration(b.Snapshot, 0, at("snapshot_interval"), "volume \""+b.Name+"\": snapshot_interval")
		badInterval = vol.SnapshotInterval == 0
	}
	if b.DrainWait != "" {
		vol.DrainWait = v.duration(b.DrainWait, 0, at("drain_wait"), "volume \""+b.Name+"\": drain_wait")
	}
	if g := b.Grow; g != nil {
		vol.Grow = &ebs.Grow{Threshold: g.Threshold, StepGiB: g.StepGiB, Factor: g.Factor, MaxSizeGiB: g.MaxSizeGiB}
		if g.Interval != "" {
			vol.Grow.Interval = v.duration(g.Interval, 0, at("grow.check_interval"), "volume \""+b.Name+"\": grow check_interval")
		}
	}
	for _, e := range vol.Validate() {
		v.errf(at(e.Field), "%s", e.Msg)
	}
	if badInterval && b.Node == "" {
		// The interval did not parse, so Validate saw none; it still needs a node.
		v.errf(at("snapshot_interval"), "volume %q: snapshot_interval needs node (whose Consul check gates snapshots)", b.Name)
	}
	return vol
}

// nestedAttrRange finds an attribute of a block nested in a labelled block (grow in volume "x"); the nested block,
// else the outer one, when the attribute is not written.
func (v *validator) nestedAttrRange(typ, label, nested, attr string) hcl.Range {
	for _, b := range v.src.Blocks {
		if b.Type != typ || len(b.Labels) == 0 || b.Labels[0] != label {
			continue
		}
		for _, n := range b.Body.Blocks {
			if n.Type != nested {
				continue
			}
			if a, ok := n.Body.Attributes[attr]; ok {
				return a.SrcRange
			}
			return n.DefRange()
		}
		return b.DefRange()
	}
	return hcl.Range{}
}
