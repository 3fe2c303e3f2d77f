package ebs_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/fielderr"
)

func ptr[T any](v T) *T { return &v }

func fe(field, msg string) fielderr.Error { return fielderr.Error{Field: field, Msg: msg} }

func TestVolumeValidate(t *testing.T) {
	base := func() ebs.Volume { return ebs.Volume{Name: "v", Chain: "ethereum", Network: "mainnet", Client: "geth"} }
	cases := []struct {
		name string
		mod  func(*ebs.Volume)
		want fielderr.List
	}{
		{"bad name", func(v *ebs.Volume) { v.Name = "geth.data" },
			fielderr.List{fe("", `volume "geth.data": the name must be letters, digits and dashes`)}},
		{"empty chain, slash in network", func(v *ebs.Volume) { v.Chain, v.Network = "", "main/net" },
			fielderr.List{fe("chain", `volume "v": chain must not be empty`),
				fe("network", `volume "v": network "main/net" must not contain a slash or a space`)}},
		{"size", func(v *ebs.Volume) { v.SizeGiB = 70000 },
			fielderr.List{fe("size_gib", `volume "v": size_gib 70000 is not between 1 and 65536`)}},
		{"type", func(v *ebs.Volume) { v.Type = "gp4" },
			fielderr.List{fe("type", `volume "v": type "gp4" is not one of gp3, gp2, io1, io2, st1, sc1`)}},
		{"iops on gp2", func(v *ebs.Volume) { v.Type, v.IOPS = "gp2", ptr(int32(3000)) },
			fielderr.List{fe("iops", `volume "v": iops is only for gp3, io1 and io2 volumes`)}},
		{"io2 without iops", func(v *ebs.Volume) { v.Type = "io2" },
			fielderr.List{fe("type", `volume "v": an io2 volume needs iops`)}},
		{"throughput on io1", func(v *ebs.Volume) { v.Type, v.IOPS, v.Throughput = "io1", ptr(int32(100)), ptr(int32(250)) },
			fielderr.List{fe("throughput", `volume "v": throughput is only for gp3 volumes`)}},
		{"kms without encryption", func(v *ebs.Volume) { v.KMSKeyID, v.Encrypted = "alias/x", ptr(false) },
			fielderr.List{fe("kms_key_id", `volume "v": kms_key_id needs encrypted = true`)}},
		{"relative mount path", func(v *ebs.Volume) { v.MountPath = "data" },
			fielderr.List{fe("mount_path", `volume "v": mount_path "data" must be an absolute path below /`)}},
		{"filesystem", func(v *ebs.Volume) { v.Filesystem = "btrfs" },
			fielderr.List{fe("filesystem", `volume "v": filesystem "btrfs" must be xfs or ext4`)}},
		{"keep", func(v *ebs.Volume) { v.Keep = -1 },
			fielderr.List{fe("keep_snapshots", `volume "v": keep_snapshots must be at least 1`)}},
		{"interval without node, too short", func(v *ebs.Volume) { v.SnapshotInterval = 10 * time.Minute },
			fielderr.List{fe("snapshot_interval", `volume "v": snapshot_interval 10m0s is shorter than 1h`),
				fe("snapshot_interval", `volume "v": snapshot_interval needs node (whose Consul check gates snapshots)`)}},
		{"command without commands", func(v *ebs.Volume) { v.Freeze = "command" },
			fielderr.List{fe("freeze", `volume "v": freeze = "command" needs stop_command and start_command`)}},
		{"commands without command freeze", func(v *ebs.Volume) { v.StopCommand = []string{"true"} },
			fielderr.List{fe("freeze", `volume "v": stop_command and start_command need freeze = "command"`)}},
		{"unknown freeze", func(v *ebs.Volume) { v.Freeze = "lvm" },
			fielderr.List{fe("freeze", `volume "v": freeze "lvm" is not one of fsfreeze, command, none`)}},
		{"grow without max", func(v *ebs.Volume) { v.Grow = &ebs.Grow{} },
			fielderr.List{fe("grow.max_size_gib", `volume "v": grow needs max_size_gib, the size the volume never grows beyond`)}},
		{"grow out of bounds", func(v *ebs.Volume) {
			v.Grow = &ebs.Grow{Threshold: 100, StepGiB: -1, Factor: 1.001, MaxSizeGiB: 50, Interval: time.Second}
		}, fielderr.List{fe("grow.threshold", `volume "v": grow threshold 100 is not a percentage between 1 and 99`),
			fe("grow.step_gib", `volume "v": grow step_gib -1 is negative`),
			fe("grow.factor", `volume "v": grow factor 1.001 is not between 1.01 and 10`),
			fe("grow.max_size_gib", `volume "v": grow max_size_gib 50 is smaller than size_gib 100`),
			fe("grow.check_interval", `volume "v": grow check_interval 1s is shorter than 10s`)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := base()
			tc.mod(&v)
			if got := v.Validate(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestVolumeDefaults(t *testing.T) {
	v := ebs.Volume{Name: "v", Chain: "ethereum", Network: "mainnet", Client: "geth", Node: "geth-a",
		SnapshotInterval: 6 * time.Hour, KMSKeyID: "alias/x"}
	if errs := v.Validate(); errs != nil {
		t.Fatal(errs)
	}
	want := ebs.Volume{Name: "v", Chain: "ethereum", Network: "mainnet", Client: "geth", Node: "geth-a",
		SizeGiB: 100, Type: "gp3", Encrypted: ptr(true), KMSKeyID: "alias/x", MountPath: "/data/v", Filesystem: "xfs",
		SnapshotInterval: 6 * time.Hour, Keep: 3, Freeze: "fsfreeze", DrainWait: 10 * time.Second}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("defaults\n got %+v\nwant %+v", v, want)
	}
	g := ebs.Volume{Name: "v", Chain: "ethereum", Network: "mainnet", Client: "geth", Grow: &ebs.Grow{MaxSizeGiB: 4000}}
	if errs := g.Validate(); errs != nil {
		t.Fatal(errs)
	}
	if want := (ebs.Grow{Threshold: 85, Factor: 1.2, MaxSizeGiB: 4000, Interval: 5 * time.Minute}); *g.Grow != want {
		t.Fatalf("grow defaults %+v, want %+v", *g.Grow, want)
	}
	s := ebs.Volume{Name: "v", Chain: "ethereum", Network: "mainnet", Client: "geth", Grow: &ebs.Grow{StepGiB: 100, MaxSizeGiB: 4000}}
	if errs := s.Validate(); errs != nil || s.Grow.Factor != 0 {
		t.Fatalf("a step and no factor: %v %+v", errs, *s.Grow)
	}
}

func TestPluginVolume(t *testing.T) {
	req := func(params map[string]string) ebs.PluginRequest {
		return ebs.PluginRequest{Operation: "create", VolumesDir: "/opt/nomad/volumes", VolumeName: "geth-dyn",
			VolumeID: "6f1c", CapacityMin: 1<<30 + 1, CapacityMax: 4 << 30, Parameters: params}
	}
	v, err := ebs.PluginVolume(req(map[string]string{"chain": "ethereum", "network": "mainnet", "client": "geth",
		"iops": "4000", "throughput": "250", "encrypted": "true", "kms_key_id": "alias/k", "filesystem": "ext4",
		"node": "geth-a", "type": "gp3"}))
	if err != nil {
		t.Fatal(err)
	}
	want := ebs.Volume{Name: "geth-dyn", Chain: "ethereum", Network: "mainnet", Client: "geth", Node: "geth-a",
		SizeGiB: 2, Type: "gp3", IOPS: ptr(int32(4000)), Throughput: ptr(int32(250)), Encrypted: ptr(true),
		KMSKeyID: "alias/k", MountPath: "/opt/nomad/volumes/6f1c", Filesystem: "ext4", Keep: 3, Freeze: "fsfreeze",
		DrainWait: 10 * time.Second}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("volume\n got %+v\nwant %+v", v, want)
	}

	for params, wantErr := range map[string]string{
		"chain=ethereum network=mainnet client=geth sizes=1":          `unknown parameter "sizes"`,
		"chain=ethereum network=mainnet client=geth iops=lots":        `parameter iops="lots" is not a number`,
		"chain=ethereum network=mainnet client=geth encrypted=maybe":  `parameter encrypted="maybe" is not true or false`,
		"chain=ethereum network=mainnet client=geth type=gp2 iops=10": `volume "geth-dyn": iops is only for gp3, io1 and io2 volumes`,
		"chain=ethereum network=mainnet":                              `volume "geth-dyn": client must not be empty`,
		"chain=ethereum network=main/net client=geth":                 `volume "geth-dyn": network "main/net" must not contain a slash or a space`,
	} {
		p := map[string]string{}
		for _, kv := range strings.Fields(params) {
			k, val, _ := strings.Cut(kv, "=")
			p[k] = val
		}
		if _, err := ebs.PluginVolume(req(p)); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: error %v, want %q", params, err, wantErr)
		}
	}
	r := req(map[string]string{"chain": "ethereum", "network": "mainnet", "client": "geth"})
	r.CapacityMax = 1 << 30
	if _, err := ebs.PluginVolume(r); err == nil || !strings.Contains(err.Error(), "exceeds capacity_max") {
		t.Errorf("capacity above max: %v", err)
	}
}
