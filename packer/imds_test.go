package packer_test

import (
	"testing"

	"github.com/chainwarden/chainwarden/internal/imdstest"
)

// fakeIMDS is the instance metadata service an instance launched from the AMI (imds_support = v2.0) has: the
// repository's one IMDSv2 test server (internal/imdstest, tested against the AWS SDK's own client), set up with the
// instance the boot tests expect. Set tags (nil: tags in metadata not enabled) and userData (nil: none) before
// start.
type fakeIMDS struct {
	tags     map[string]string
	userData *string

	srv *imdstest.Server
}

func newFakeIMDS(t *testing.T) *fakeIMDS { return &fakeIMDS{} }

// start runs the server until the test ends and returns its URL.
func (f *fakeIMDS) start(t *testing.T) string {
	id := imdstest.Identity{InstanceID: "i-0123456789abcdef0", AvailabilityZone: "eu-west-1b", Region: "eu-west-1",
		PrivateIP: "10.20.30.40", Tags: f.tags}
	if f.userData != nil {
		id.UserData = []byte(*f.userData)
	}
	f.srv = imdstest.New(id)
	t.Cleanup(f.srv.Close)
	return f.srv.URL
}

// stats says how many session tokens the server handed out and how many requests it refused.
func (f *fakeIMDS) stats() (tokens, rejected int) { return f.srv.Tokens(), f.srv.Rejected() }
