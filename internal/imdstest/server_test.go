package imdstest_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"

	"github.com/chainwarden/chainwarden/internal/imdstest"
)

func TestIdentityOverIMDSv2(t *testing.T) {
	srv := imdstest.New(imdstest.Identity{InstanceID: "i-0abc", AvailabilityZone: "ap-south-1c"})
	defer srv.Close()
	c := imds.New(imds.Options{Endpoint: srv.URL, EnableFallback: aws.FalseTernary})
	doc, err := c.GetInstanceIdentityDocument(context.Background(), &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		t.Fatal(err)
	}
	if doc.InstanceID != "i-0abc" || doc.AvailabilityZone != "ap-south-1c" || doc.Region != "ap-south-1" {
		t.Fatalf("%+v", doc.InstanceIdentityDocument)
	}
	md, err := c.GetMetadata(context.Background(), &imds.GetMetadataInput{Path: "placement/availability-zone"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(md.Content)
	if string(b) != "ap-south-1c" || srv.Refused() != 0 {
		t.Fatalf("az %q, refused %d", b, srv.Refused())
	}
}

// Tags and user data, as the AMI's boot script reads them, answered to the SDK's own client.
func TestTagsUserDataAndRefusals(t *testing.T) {
	ud := "#chainwarden\nroles = proxy\n"
	srv := imdstest.New(imdstest.Identity{InstanceID: "i-0123456789abcdef0", AvailabilityZone: "eu-west-1b",
		PrivateIP: "10.20.30.40", Tags: map[string]string{"chainwarden-datacenter": "use1", "Name": "node-a"},
		UserData: []byte(ud)})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := imds.New(imds.Options{Endpoint: srv.URL, EnableFallback: aws.FalseTernary})
	region, err := c.GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil || region.Region != "eu-west-1" {
		t.Fatalf("region %+v %v", region, err)
	}
	get := func(path string) (string, error) {
		out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			return "", err
		}
		defer out.Content.Close()
		b, err := io.ReadAll(out.Content)
		return string(b), err
	}
	for path, want := range map[string]string{
		"instance-id":                          "i-0123456789abcdef0",
		"local-ipv4":                           "10.20.30.40",
		"tags/instance":                        "Name\nchainwarden-datacenter",
		"tags/instance/chainwarden-datacenter": "use1",
	} {
		if got, err := get(path); err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	if _, err := get("tags/instance/missing"); err == nil {
		t.Error("a missing tag answered")
	}
	out, err := c.GetUserData(ctx, &imds.GetUserDataInput{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(out.Content)
	out.Content.Close()
	if string(b) != ud {
		t.Errorf("user-data = %q", b)
	}
	if srv.Tokens() == 0 || srv.Rejected() != 0 {
		t.Fatalf("tokens %d, rejected %d", srv.Tokens(), srv.Rejected())
	}

	// Without tags in metadata or user data, both are not found; a token-less GET is refused.
	bare := imdstest.New(imdstest.Identity{InstanceID: "i-1", AvailabilityZone: "eu-west-1b"})
	defer bare.Close()
	c = imds.New(imds.Options{Endpoint: bare.URL, EnableFallback: aws.FalseTernary})
	if _, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: "tags/instance"}); err == nil {
		t.Error("tags answered with tags in metadata off")
	}
	if _, err := c.GetUserData(ctx, &imds.GetUserDataInput{}); err == nil {
		t.Error("user-data answered for an instance with none")
	}
	resp, err := http.Get(bare.URL + "/latest/meta-data/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || bare.Refused() != 1 || bare.Rejected() != 1 {
		t.Fatalf("IMDSv1 GET: status %d, refused %d, rejected %d", resp.StatusCode, bare.Refused(), bare.Rejected())
	}
}

// The instance role's credentials, as the SDK's instance role provider (the default chain's last link on EC2) reads
// them; an instance without a role has none.
func TestInstanceRoleCredentials(t *testing.T) {
	srv := imdstest.New(imdstest.Identity{InstanceID: "i-0abc", AvailabilityZone: "us-east-1a", Role: "chainwarden-node"})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	provider := ec2rolecreds.New(func(o *ec2rolecreds.Options) {
		o.Client = imds.New(imds.Options{Endpoint: srv.URL, EnableFallback: aws.FalseTernary})
	})
	creds, err := provider.Retrieve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := srv.RoleCredentials()
	if creds.AccessKeyID != want.AccessKeyID || creds.SecretAccessKey != want.SecretAccessKey ||
		creds.SessionToken != want.Token || !creds.CanExpire || creds.Expires.After(want.Expiration) {
		t.Errorf("retrieved %+v, served %+v", creds, want)
	}
	if !strings.HasPrefix(creds.AccessKeyID, "ASIA") || srv.Refused() != 0 {
		t.Errorf("access key %q, refused %d", creds.AccessKeyID, srv.Refused())
	}

	bare := imdstest.New(imdstest.Identity{InstanceID: "i-1", AvailabilityZone: "us-east-1a"})
	defer bare.Close()
	provider = ec2rolecreds.New(func(o *ec2rolecreds.Options) {
		o.Client = imds.New(imds.Options{Endpoint: bare.URL, EnableFallback: aws.FalseTernary})
	})
	if _, err := provider.Retrieve(ctx); err == nil {
		t.Error("credentials retrieved for an instance without a role")
	}
}
