package packer_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// fakeIMDS is an EC2 instance metadata service that speaks only IMDSv2, as an instance launched from the AMI
// (imds_support = v2.0) does: a session token from PUT /latest/api/token, then GETs carrying it. Instance tags
// appear under meta-data/tags/instance only when tags is not nil (the instance_metadata_tags launch option).
type fakeIMDS struct {
	meta     map[string]string // path under /latest/meta-data/ -> value
	tags     map[string]string // nil: tags in metadata not enabled
	userData *string           // nil: the instance has none

	mu        sync.Mutex
	token     string
	tokens    int // session tokens handed out
	rejected  int // requests refused (no or wrong token, wrong method, bad TTL)
	requested []string
}

func newFakeIMDS(t *testing.T) *fakeIMDS {
	return &fakeIMDS{
		token: "AQAEA-fake-session-token-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		meta: map[string]string{
			"instance-id":                 "i-0123456789abcdef0",
			"placement/region":            "eu-west-1",
			"placement/availability-zone": "eu-west-1b",
			"local-ipv4":                  "10.20.30.40",
		},
	}
}

func (f *fakeIMDS) start(t *testing.T) string {
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

func (f *fakeIMDS) reject(w http.ResponseWriter, code int) {
	f.rejected++
	http.Error(w, http.StatusText(code), code)
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requested = append(f.requested, r.Method+" "+r.URL.Path)
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			f.reject(w, http.StatusMethodNotAllowed)
			return
		}
		ttl, err := strconv.Atoi(r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		if err != nil || ttl < 1 || ttl > 21600 {
			f.reject(w, http.StatusBadRequest)
			return
		}
		f.tokens++
		w.Header().Set("X-aws-ec2-metadata-token-ttl-seconds", strconv.Itoa(ttl))
		io.WriteString(w, f.token)
		return
	}
	if r.Method != http.MethodGet {
		f.reject(w, http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get("X-aws-ec2-metadata-token") != f.token {
		f.reject(w, http.StatusUnauthorized) // IMDSv1 request on an instance that requires v2
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/latest/")
	switch {
	case path == "user-data":
		if f.userData == nil {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, *f.userData)
	case path == "meta-data/tags/instance" || path == "meta-data/tags/instance/":
		if f.tags == nil {
			http.NotFound(w, r)
			return
		}
		keys := make([]string, 0, len(f.tags))
		for k := range f.tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		io.WriteString(w, strings.Join(keys, "\n"))
	case strings.HasPrefix(path, "meta-data/tags/instance/"):
		v, ok := f.tags[strings.TrimPrefix(path, "meta-data/tags/instance/")]
		if !ok || f.tags == nil {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, v)
	case path == "dynamic/instance-identity/document":
		w.Header().Set("Content-Type", "text/plain")
		json.NewEncoder(w).Encode(map[string]string{
			"instanceId":       f.meta["instance-id"],
			"region":           f.meta["placement/region"],
			"availabilityZone": f.meta["placement/availability-zone"],
			"privateIp":        f.meta["local-ipv4"],
			"accountId":        "123456789012",
			"architecture":     "x86_64",
			"imageId":          "ami-0123456789abcdef0",
			"instanceType":     "m6i.large",
		})
	case strings.HasPrefix(path, "meta-data/"):
		v, ok := f.meta[strings.TrimPrefix(path, "meta-data/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, v)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeIMDS) stats() (tokens, rejected int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tokens, f.rejected
}

// TestFakeIMDSAnswersTheSDK drives the fake with the AWS SDK's own IMDS client, so the wire format the boot
// script is tested against is the one real clients speak.
func TestFakeIMDSAnswersTheSDK(t *testing.T) {
	f := newFakeIMDS(t)
	ud := "#chainwarden\nroles = proxy\n"
	f.userData = &ud
	f.tags = map[string]string{"chainwarden-datacenter": "use1", "Name": "node-a"}
	url := f.start(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := imds.New(imds.Options{Endpoint: url})

	region, err := client.GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil {
		t.Fatalf("GetRegion: %v", err)
	}
	if region.Region != "eu-west-1" {
		t.Errorf("region = %q", region.Region)
	}
	get := func(path string) string {
		t.Helper()
		out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			t.Fatalf("GetMetadata %s: %v", path, err)
		}
		defer out.Content.Close()
		b, _ := io.ReadAll(out.Content)
		return string(b)
	}
	if got := get("instance-id"); got != "i-0123456789abcdef0" {
		t.Errorf("instance-id = %q", got)
	}
	if got := get("tags/instance"); got != "Name\nchainwarden-datacenter" {
		t.Errorf("tags/instance = %q", got)
	}
	if got := get("tags/instance/chainwarden-datacenter"); got != "use1" {
		t.Errorf("tag = %q", got)
	}
	out, err := client.GetUserData(ctx, &imds.GetUserDataInput{})
	if err != nil {
		t.Fatalf("GetUserData: %v", err)
	}
	b, _ := io.ReadAll(out.Content)
	out.Content.Close()
	if string(b) != ud {
		t.Errorf("user-data = %q", b)
	}
	if _, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "tags/instance/missing"}); err == nil {
		t.Error("a missing tag answered")
	}

	// A request without a session token (IMDSv1) is refused.
	resp, err := http.Get(url + "/latest/meta-data/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("IMDSv1 GET: status %d, want 401", resp.StatusCode)
	}
	if tokens, _ := f.stats(); tokens == 0 {
		t.Error("the SDK never asked for a session token")
	}
}
