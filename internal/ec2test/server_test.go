package ec2test_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/fakes"
)

func client(srv *ec2test.Server, region string) *ec2.Client {
	return ec2.New(ec2.Options{
		Region:       region,
		BaseEndpoint: aws.String(srv.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
	})
}

func code(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}

func TestStateTransitionsAndTokens(t *testing.T) {
	clk := fakes.NewClock(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	srv := ec2test.New(ec2test.Delays{Create: time.Minute, Attach: 10 * time.Second, Snapshot: time.Hour})
	srv.Clock = clk
	defer srv.Close()
	var mu sync.Mutex
	var attachedCalls []string
	srv.OnAttach = func(volumeID, instanceID, device string) {
		mu.Lock()
		defer mu.Unlock()
		attachedCalls = append(attachedCalls, volumeID+" "+instanceID+" "+device)
	}
	attached := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(attachedCalls)
	}
	srv.AddInstance("i-1", "us-east-1a")
	ctx := context.Background()
	c := client(srv, "us-east-1")
	in := &ec2.CreateVolumeInput{AvailabilityZone: aws.String("us-east-1a"), Size: aws.Int32(10),
		VolumeType: types.VolumeTypeGp3, ClientToken: aws.String("tok"),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeVolume,
			Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}}}
	out, err := c.CreateVolume(ctx, in)
	if err != nil || out.State != types.VolumeStateCreating || aws.ToInt32(out.Size) != 10 || !out.CreateTime.Equal(clk.Now()) {
		t.Fatalf("create: %+v %v", out, err)
	}
	again, err := c.CreateVolume(ctx, in)
	if err != nil || aws.ToString(again.VolumeId) != aws.ToString(out.VolumeId) {
		t.Fatalf("same token: %v %v", again, err)
	}
	in.Size = aws.Int32(20)
	if _, err := c.CreateVolume(ctx, in); code(err) != "IdempotentParameterMismatch" {
		t.Fatalf("token with other parameters: %v", err)
	}
	attach := &ec2.AttachVolumeInput{VolumeId: out.VolumeId, InstanceId: aws.String("i-1"), Device: aws.String("/dev/sdf")}
	if _, err := c.AttachVolume(ctx, attach); code(err) != "IncorrectState" {
		t.Fatalf("attach while creating: %v", err)
	}
	available := &ec2.DescribeVolumesInput{Filters: []types.Filter{
		{Name: aws.String("tag:k"), Values: []string{"v"}}, {Name: aws.String("status"), Values: []string{"available"}}}}
	clk.Advance(time.Minute - time.Second)
	if d, err := c.DescribeVolumes(ctx, available); err != nil || len(d.Volumes) != 0 {
		t.Fatalf("available before its time: %+v %v", d, err)
	}
	clk.Advance(time.Second)
	d, err := c.DescribeVolumes(ctx, available)
	if err != nil || len(d.Volumes) != 1 || d.Volumes[0].Tags[0].Value == nil {
		t.Fatalf("describe: %+v %v", d, err)
	}
	// Another region sees nothing.
	if d, err := client(srv, "eu-west-1").DescribeVolumes(ctx, &ec2.DescribeVolumesInput{}); err != nil || len(d.Volumes) != 0 {
		t.Fatalf("other region: %+v %v", d, err)
	}
	if _, err := c.AttachVolume(ctx, attach); err != nil {
		t.Fatal(err)
	}
	attach.Device = aws.String("/dev/sdg")
	if _, err := c.AttachVolume(ctx, attach); code(err) != "VolumeInUse" {
		t.Fatalf("attach twice: %v", err)
	}
	byID := &ec2.DescribeVolumesInput{VolumeIds: []string{aws.ToString(out.VolumeId)}}
	if d, err := c.DescribeVolumes(ctx, byID); err != nil || d.Volumes[0].State != types.VolumeStateInUse ||
		d.Volumes[0].Attachments[0].State != types.VolumeAttachmentStateAttaching || len(attached()) != 0 {
		t.Fatalf("attaching: %+v %v, hook %v", d, err, attached())
	}
	clk.Advance(10 * time.Second)
	if d, err := c.DescribeVolumes(ctx, byID); err != nil || d.Volumes[0].Attachments[0].State != types.VolumeAttachmentStateAttached {
		t.Fatalf("attached: %+v %v", d, err)
	}
	if want := aws.ToString(out.VolumeId) + " i-1 /dev/sdf"; !slices.Equal(attached(), []string{want}) {
		t.Fatalf("OnAttach calls %v, want one %q before the answer saying attached", attached(), want)
	}
	s, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: out.VolumeId})
	if err != nil || s.State != types.SnapshotStatePending || aws.ToString(s.Progress) != "0%" {
		t.Fatalf("snapshot: %+v %v", s, err)
	}
	clk.Advance(30 * time.Minute)
	ds, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
	if err != nil || len(ds.Snapshots) != 1 || ds.Snapshots[0].State != types.SnapshotStatePending ||
		aws.ToString(ds.Snapshots[0].Progress) != "50%" {
		t.Fatalf("half way: %+v %v", ds, err)
	}
	clk.Advance(30 * time.Minute)
	ds, err = c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
	if err != nil || len(ds.Snapshots) != 1 || ds.Snapshots[0].State != types.SnapshotStateCompleted ||
		aws.ToString(ds.Snapshots[0].Progress) != "100%" {
		t.Fatalf("describe snapshots: %+v %v", ds, err)
	}
	if _, err := c.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String("snap-nope")}); code(err) != "InvalidSnapshot.NotFound" {
		t.Fatalf("delete missing: %v", err)
	}
}

// The SDK's paginators walk the server's pages: MaxResults and NextToken as EC2 takes and gives them.
func TestPaginators(t *testing.T) {
	srv := ec2test.New(ec2test.Delays{})
	defer srv.Close()
	start := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var vols, snaps []string
	for i := 0; i < 12; i++ {
		vols = append(vols, srv.PutVolume(ec2test.Volume{AZ: "us-east-1a", Size: 1, Created: start.Add(time.Duration(i) * time.Minute)}))
		snaps = append(snaps, srv.PutSnapshot(ec2test.Snapshot{Region: "us-east-1", VolumeSize: 1, Started: start.Add(time.Duration(i) * time.Minute)}))
	}
	ctx := context.Background()
	c := client(srv, "us-east-1")
	var got []string
	pages := 0
	vp := ec2.NewDescribeVolumesPaginator(c, &ec2.DescribeVolumesInput{}, func(o *ec2.DescribeVolumesPaginatorOptions) { o.Limit = 5 })
	for vp.HasMorePages() {
		page, err := vp.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, v := range page.Volumes {
			got = append(got, aws.ToString(v.VolumeId))
		}
	}
	if pages != 3 || !slices.Equal(got, vols) {
		t.Fatalf("%d pages of volumes %v, want 3 pages of %v", pages, got, vols)
	}
	got, pages = nil, 0
	sp := ec2.NewDescribeSnapshotsPaginator(c, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}},
		func(o *ec2.DescribeSnapshotsPaginatorOptions) { o.Limit = 5 })
	for sp.HasMorePages() {
		page, err := sp.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, s := range page.Snapshots {
			got = append(got, aws.ToString(s.SnapshotId))
		}
	}
	if pages != 3 || !slices.Equal(got, snaps) {
		t.Fatalf("%d pages of snapshots %v, want 3 pages of %v", pages, got, snaps)
	}
	// Without MaxResults everything comes in one page.
	if d, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{}); err != nil || len(d.Volumes) != 12 || d.NextToken != nil {
		t.Fatalf("one page: %d volumes, next %v, %v", len(d.Volumes), d.NextToken, err)
	}
	for _, in := range []*ec2.DescribeVolumesInput{
		{MaxResults: aws.Int32(4)},
		{MaxResults: aws.Int32(501)},
		{MaxResults: aws.Int32(5), VolumeIds: vols[:1]},
		{NextToken: aws.String("forged")},
	} {
		if _, err := c.DescribeVolumes(ctx, in); code(err) == "" {
			t.Errorf("%+v accepted", in)
		}
	}
}

// The SDK's waiters end when the server's volume and snapshot reach their states, and report a failed snapshot.
func TestWaiters(t *testing.T) {
	clk := fakes.NewClock(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	srv := ec2test.New(ec2test.Delays{Create: time.Minute, Snapshot: time.Hour})
	srv.Clock = clk
	defer srv.Close()
	ctx := context.Background()
	c := client(srv, "us-east-1")
	out, err := c.CreateVolume(ctx, &ec2.CreateVolumeInput{AvailabilityZone: aws.String("us-east-1a"), Size: aws.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	fast := func(o *ec2.VolumeAvailableWaiterOptions) { o.MinDelay, o.MaxDelay = time.Millisecond, time.Millisecond }
	done := make(chan error, 1)
	go func() {
		done <- ec2.NewVolumeAvailableWaiter(c, fast).Wait(ctx, &ec2.DescribeVolumesInput{VolumeIds: []string{*out.VolumeId}}, time.Minute)
	}()
	pollCalls(t, srv, "DescribeVolumes", 3) // the waiter is polling a volume that is still creating
	clk.Advance(time.Minute)
	if err := <-done; err != nil {
		t.Fatalf("volume available waiter: %v", err)
	}

	snap, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: out.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		done <- ec2.NewSnapshotCompletedWaiter(c, func(o *ec2.SnapshotCompletedWaiterOptions) {
			o.MinDelay, o.MaxDelay = time.Millisecond, time.Millisecond
		}).Wait(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{*snap.SnapshotId}}, time.Minute)
	}()
	pollCalls(t, srv, "DescribeSnapshots", 3)
	clk.Advance(time.Hour)
	if err := <-done; err != nil {
		t.Fatalf("snapshot completed waiter: %v", err)
	}

	failed := srv.PutSnapshot(ec2test.Snapshot{Region: "us-east-1", VolumeSize: 1, State: "error"})
	err = ec2.NewSnapshotCompletedWaiter(c, func(o *ec2.SnapshotCompletedWaiterOptions) {
		o.MinDelay, o.MaxDelay = time.Millisecond, time.Millisecond
	}).Wait(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{failed}}, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "Failure") {
		t.Fatalf("failed snapshot: %v", err)
	}
}

// pollCalls waits (polling, no fixed sleep) until the server has answered n requests of action.
func pollCalls(t *testing.T, srv *ec2test.Server, action string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Calls(action) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d %s calls, want %d", srv.Calls(action), action, n)
		}
		time.Sleep(time.Millisecond) // a poll interval, not a wait for anything in particular
	}
}

func TestWireErrors(t *testing.T) {
	srv := ec2test.New(ec2test.Delays{})
	defer srv.Close()
	// Unsigned: AuthFailure in EC2's error envelope.
	resp, err := http.PostForm(srv.URL, url.Values{"Action": {"DescribeVolumes"}, "Version": {"2016-11-15"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(body), "<Response><Errors><Error><Code>AuthFailure</Code>") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	srv.Fail("DescribeVolumes", "UnauthorizedOperation", 1)
	if _, err := client(srv, "us-east-1").DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{}); code(err) != "UnauthorizedOperation" {
		t.Fatalf("injected: %v", err)
	}
	if _, err := client(srv, "us-east-1").DescribeVolumes(context.Background(), &ec2.DescribeVolumesInput{
		Filters: []types.Filter{{Name: aws.String("bogus"), Values: []string{"x"}}}}); code(err) != "InvalidParameterValue" {
		t.Fatalf("bad filter: %v", err)
	}
}

// TestDescribeInstances answers the call Consul's cloud auto-join makes (go-discover's aws provider: the running
// instances with a tag, their private addresses), read by the real SDK's paginator.
func TestDescribeInstances(t *testing.T) {
	srv := ec2test.New(ec2test.Delays{})
	defer srv.Close()
	consulTag := []ec2test.Tag{{Key: "chainwarden-consul", Value: "use1"}}
	srv.PutInstance(ec2test.Instance{ID: "i-0000000000000000a", AZ: "us-east-1a", PrivateIP: "10.0.1.10", Tags: consulTag})
	srv.PutInstance(ec2test.Instance{ID: "i-0000000000000000b", AZ: "us-east-1b", PrivateIP: "10.0.2.10", Tags: consulTag})
	srv.PutInstance(ec2test.Instance{ID: "i-0000000000000000c", AZ: "us-east-1a", PrivateIP: "10.0.1.11", Tags: consulTag,
		State: "stopped"})
	srv.PutInstance(ec2test.Instance{ID: "i-0000000000000000d", AZ: "us-east-1a", PrivateIP: "10.0.1.12",
		Tags: []ec2test.Tag{{Key: "chainwarden-consul", Value: "euw1"}}})
	srv.PutInstance(ec2test.Instance{ID: "i-0000000000000000e", AZ: "eu-west-1a", PrivateIP: "10.9.0.1", Tags: consulTag})
	srv.AddInstance("i-0000000000000000f", "us-east-1c")
	ctx := context.Background()

	in := &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), Filters: []types.Filter{
		{Name: aws.String("tag:chainwarden-consul"), Values: []string{"use1"}},
		{Name: aws.String("instance-state-name"), Values: []string{"running"}},
	}}
	var addrs []string
	p := ec2.NewDescribeInstancesPaginator(client(srv, "us-east-1"), in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Reservations {
			for _, i := range r.Instances {
				if i.State == nil || i.State.Name != types.InstanceStateNameRunning || aws.ToInt32(i.State.Code) != 16 {
					t.Errorf("%s: state %+v", aws.ToString(i.InstanceId), i.State)
				}
				if len(i.Tags) != 1 || aws.ToString(i.Tags[0].Key) != "chainwarden-consul" {
					t.Errorf("%s: tags %+v", aws.ToString(i.InstanceId), i.Tags)
				}
				addrs = append(addrs, aws.ToString(i.PrivateIpAddress)+" "+aws.ToString(i.Placement.AvailabilityZone))
			}
		}
	}
	// The stopped one, another tag value and another region are left out.
	if want := []string{"10.0.1.10 us-east-1a", "10.0.2.10 us-east-1b"}; !slices.Equal(addrs, want) {
		t.Errorf("running use1 instances = %v, want %v", addrs, want)
	}

	out, err := client(srv, "us-east-1").DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0000000000000000c"}})
	if err != nil || len(out.Reservations) != 1 || out.Reservations[0].Instances[0].State.Name != types.InstanceStateNameStopped {
		t.Errorf("by id: %+v, %v", out, err)
	}
	if _, err := client(srv, "eu-west-1").DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0000000000000000c"}}); code(err) != "InvalidInstanceID.NotFound" {
		t.Errorf("another region's instance: %v", err)
	}
	if _, err := client(srv, "us-east-1").DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("no-such-filter"), Values: []string{"x"}}}}); code(err) != "InvalidParameterValue" {
		t.Errorf("unknown filter: %v", err)
	}
}
