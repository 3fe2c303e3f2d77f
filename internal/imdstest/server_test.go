package imdstest_test

import (
	"context"
	"io"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
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
