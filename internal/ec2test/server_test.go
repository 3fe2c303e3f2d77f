package ec2test_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/chainwarden/chainwarden/internal/ec2test"
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
	srv := ec2test.New(ec2test.Delays{Create: 100 * time.Millisecond, Snapshot: 200 * time.Millisecond})
	defer srv.Close()
	srv.AddInstance("i-1", "us-east-1a")
	ctx := context.Background()
	c := client(srv, "us-east-1")
	in := &ec2.CreateVolumeInput{AvailabilityZone: aws.String("us-east-1a"), Size: aws.Int32(10),
		VolumeType: types.VolumeTypeGp3, ClientToken: aws.String("tok"),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeVolume,
			Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}}}
	out, err := c.CreateVolume(ctx, in)
	if err != nil || out.State != types.VolumeStateCreating || aws.ToInt32(out.Size) != 10 {
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
	if _, err := c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: out.VolumeId, InstanceId: aws.String("i-1"),
		Device: aws.String("/dev/sdf")}); code(err) != "IncorrectState" {
		t.Fatalf("attach while creating: %v", err)
	}
	time.Sleep(150 * time.Millisecond)
	d, err := c.DescribeVolumes(ctx, &ec2.DescribeVolumesInput{Filters: []types.Filter{
		{Name: aws.String("tag:k"), Values: []string{"v"}}, {Name: aws.String("status"), Values: []string{"available"}}}})
	if err != nil || len(d.Volumes) != 1 || d.Volumes[0].Tags[0].Value == nil {
		t.Fatalf("describe: %+v %v", d, err)
	}
	// Another region sees nothing.
	if d, err := client(srv, "eu-west-1").DescribeVolumes(ctx, &ec2.DescribeVolumesInput{}); err != nil || len(d.Volumes) != 0 {
		t.Fatalf("other region: %+v %v", d, err)
	}
	if _, err := c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: out.VolumeId, InstanceId: aws.String("i-1"),
		Device: aws.String("/dev/sdf")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AttachVolume(ctx, &ec2.AttachVolumeInput{VolumeId: out.VolumeId, InstanceId: aws.String("i-1"),
		Device: aws.String("/dev/sdg")}); code(err) != "VolumeInUse" {
		t.Fatalf("attach twice: %v", err)
	}
	s, err := c.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{VolumeId: out.VolumeId})
	if err != nil || s.State != types.SnapshotStatePending {
		t.Fatalf("snapshot: %+v %v", s, err)
	}
	time.Sleep(250 * time.Millisecond)
	ds, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
	if err != nil || len(ds.Snapshots) != 1 || ds.Snapshots[0].State != types.SnapshotStateCompleted ||
		aws.ToString(ds.Snapshots[0].Progress) != "100%" {
		t.Fatalf("describe snapshots: %+v %v", ds, err)
	}
	if _, err := c.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String("snap-nope")}); code(err) != "InvalidSnapshot.NotFound" {
		t.Fatalf("delete missing: %v", err)
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
