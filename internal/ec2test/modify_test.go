package ec2test_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/fakes"
)

// ModifyVolume and DescribeVolumesModifications through the real SDK: modifying -> optimizing (the new size in
// effect, the hook called once, before the answer that shows it) -> completed, on the server's clock; the errors
// EC2 gives for a smaller size, an unchanged volume, a modification in progress, and a volume never modified.
func TestModifyVolume(t *testing.T) {
	clk := fakes.NewClock(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	srv := ec2test.New(ec2test.Delays{Modify: 10 * time.Second, Optimize: time.Minute})
	srv.Clock = clk
	defer srv.Close()
	var mu sync.Mutex
	var hooked []int32
	srv.OnModify = func(_ string, size int32) { mu.Lock(); hooked = append(hooked, size); mu.Unlock() }
	calls := func() []int32 { mu.Lock(); defer mu.Unlock(); return slices.Clone(hooked) }
	id := srv.PutVolume(ec2test.Volume{AZ: "us-east-1a", Size: 100, Type: "gp3", IOPS: 3000, Throughput: 125})
	ctx := context.Background()
	c := client(srv, "us-east-1")

	mods := &ec2.DescribeVolumesModificationsInput{VolumeIds: []string{id}}
	if _, err := c.DescribeVolumesModifications(ctx, mods); code(err) != "InvalidVolumeModification.NotFound" {
		t.Fatalf("never modified: %v", err)
	}
	if _, err := c.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(id), Size: aws.Int32(50)}); code(err) != "InvalidParameterValue" {
		t.Fatalf("smaller: %v", err)
	}
	if _, err := c.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(id), Size: aws.Int32(100)}); code(err) != "InvalidParameterCombination" {
		t.Fatalf("unchanged: %v", err)
	}
	if _, err := c.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(id), Size: aws.Int32(20000)}); code(err) != "InvalidParameterValue" {
		t.Fatalf("too large for gp3: %v", err)
	}
	out, err := c.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(id), Size: aws.Int32(150)})
	if err != nil {
		t.Fatal(err)
	}
	m := out.VolumeModification
	if m.ModificationState != types.VolumeModificationStateModifying || aws.ToInt32(m.OriginalSize) != 100 ||
		aws.ToInt32(m.TargetSize) != 150 || aws.ToString(m.VolumeId) != id || !aws.ToTime(m.StartTime).Equal(clk.Now()) ||
		m.TargetVolumeType != types.VolumeTypeGp3 || aws.ToInt32(m.TargetIops) != 3000 {
		t.Fatalf("modification %+v", m)
	}
	if _, err := c.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(id), Size: aws.Int32(200)}); code(err) != "IncorrectModificationState" {
		t.Fatalf("while modifying: %v", err)
	}
	state := func() (types.VolumeModification, int32) {
		t.Helper()
		d, err := c.DescribeVolumesModifications(ctx, mods)
		if err != nil || len(d.VolumesModifications) != 1 {
			t.Fatalf("describe modifications: %+v %v", d, err)
		}
		v, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		return d.VolumesModifications[0], aws.ToInt32(v.Volumes[0].Size)
	}
	if m, size := state(); m.ModificationState != types.VolumeModificationStateModifying || size != 100 || len(calls()) != 0 {
		t.Fatalf("before its time: %s size %d hook %v", m.ModificationState, size, calls())
	}
	clk.Advance(10 * time.Second)
	if m, size := state(); m.ModificationState != types.VolumeModificationStateOptimizing || size != 150 ||
		!slices.Equal(calls(), []int32{150}) || aws.ToInt64(m.Progress) != 50 {
		t.Fatalf("optimizing: %s size %d progress %d hook %v", m.ModificationState, size, aws.ToInt64(m.Progress), calls())
	}
	clk.Advance(time.Minute)
	if m, _ := state(); m.ModificationState != types.VolumeModificationStateCompleted || aws.ToInt64(m.Progress) != 100 ||
		!aws.ToTime(m.EndTime).Equal(clk.Now()) || len(calls()) != 1 {
		t.Fatalf("completed: %+v hook %v", m, calls())
	}
	// Filters, and a failure AWS reports in the modification.
	d, err := c.DescribeVolumesModifications(ctx, &ec2.DescribeVolumesModificationsInput{Filters: []types.Filter{
		{Name: aws.String("modification-state"), Values: []string{"modifying", "optimizing"}}}})
	if err != nil || len(d.VolumesModifications) != 0 {
		t.Fatalf("filter on state: %+v %v", d, err)
	}
	if _, err := c.ModifyVolume(ctx, &ec2.ModifyVolumeInput{VolumeId: aws.String(id), Size: aws.Int32(200)}); err != nil {
		t.Fatal(err)
	}
	srv.FailModification(id, "transient failure")
	if m, size := state(); m.ModificationState != types.VolumeModificationStateFailed ||
		aws.ToString(m.StatusMessage) != "transient failure" || size != 150 {
		t.Fatalf("failed: %+v size %d", m, size)
	}
}

// DetachVolume (detaching -> detached, the hook called once) and CreateTags (overwriting a key, all or nothing).
func TestDetachAndTags(t *testing.T) {
	clk := fakes.NewClock(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	srv := ec2test.New(ec2test.Delays{Detach: 5 * time.Second})
	srv.Clock = clk
	defer srv.Close()
	srv.AddInstance("i-1", "us-east-1a")
	var mu sync.Mutex
	var detached []string
	srv.OnDetach = func(vol, inst string) { mu.Lock(); detached = append(detached, vol+" "+inst); mu.Unlock() }
	id := srv.PutVolume(ec2test.Volume{AZ: "us-east-1a", Size: 10, Tags: []ec2test.Tag{{"a", "1"}, {"b", "2"}}})
	ctx := context.Background()
	c := client(srv, "us-east-1")
	if _, err := c.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: aws.String(id)}); code(err) != "IncorrectState" {
		t.Fatalf("detach an available volume: %v", err)
	}
	if _, err := c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: aws.String(id), InstanceId: aws.String("i-1"), Device: aws.String("/dev/sdf")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: aws.String(id), InstanceId: aws.String("i-2")}); code(err) != "InvalidAttachment.NotFound" {
		t.Fatalf("detach from another instance: %v", err)
	}
	out, err := c.DetachVolume(ctx, &ec2.DetachVolumeInput{VolumeId: aws.String(id), InstanceId: aws.String("i-1")})
	if err != nil || out.State != types.VolumeAttachmentStateDetaching || aws.ToString(out.Device) != "/dev/sdf" {
		t.Fatalf("detach: %+v %v", out, err)
	}
	clk.Advance(5 * time.Second)
	v, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{id}})
	mu.Lock()
	hooks := slices.Clone(detached)
	mu.Unlock()
	if err != nil || v.Volumes[0].State != types.VolumeStateAvailable || len(v.Volumes[0].Attachments) != 0 ||
		!slices.Equal(hooks, []string{id + " i-1"}) {
		t.Fatalf("detached: %+v %v hooks %v", v, err, hooks)
	}

	tag := func(k, v string) types.Tag { return types.Tag{Key: aws.String(k), Value: aws.String(v)} }
	if _, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id, "vol-0000000000000000"},
		Tags: []types.Tag{tag("a", "9")}}); code(err) != "InvalidVolume.NotFound" {
		t.Fatalf("tag a missing volume: %v", err)
	}
	if _, err := c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: []types.Tag{tag("a", "3"), tag("c", "4")}}); err != nil {
		t.Fatal(err)
	}
	got := srv.Volumes()[0].Tags
	if want := []ec2test.Tag{{"a", "3"}, {"b", "2"}, {"c", "4"}}; !slices.Equal(got, want) {
		t.Fatalf("tags %v, want %v (the failed call changed nothing, the second overwrote a and added c)", got, want)
	}
}
