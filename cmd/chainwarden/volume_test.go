package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/imdstest"
)

func TestVolumeCommandListAndPrune(t *testing.T) {
	// Credentials come from the SDK's standard chain: here its environment variables.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	srv := ec2test.New(ec2test.Delays{})
	defer srv.Close()
	md := imdstest.New(imdstest.Identity{InstanceID: "i-0abc", AvailabilityZone: "eu-west-1a"})
	defer md.Close()
	tags := []ec2test.Tag{{Key: ebs.TagFamily, Value: "ethereum/mainnet/geth"}, {Key: ebs.TagHeight, Value: "42"}}
	now := time.Now()
	oldest := srv.PutSnapshot(ec2test.Snapshot{Region: "eu-west-1", VolumeSize: 1, Started: now.Add(-3 * time.Hour), Tags: tags})
	srv.PutSnapshot(ec2test.Snapshot{Region: "eu-west-1", VolumeSize: 1, Started: now.Add(-2 * time.Hour), Tags: tags})
	srv.PutSnapshot(ec2test.Snapshot{Region: "eu-west-1", VolumeSize: 1, Started: now.Add(-1 * time.Hour), Tags: tags})

	cfg := filepath.Join(t.TempDir(), "agent.hcl")
	if err := os.WriteFile(cfg, []byte(`consul {}
volume "geth-data" {
  chain          = "ethereum"
  network        = "mainnet"
  client         = "geth"
  node           = "geth-a"
  keep_snapshots = 2
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	runCmd := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		args = append(args, "-config", cfg, "-ec2-endpoint", srv.URL, "-imds-endpoint", md.URL)
		code := volumeMain(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, stderr := runCmd("list")
	if code != 0 || strings.Count(out, "ethereum/mainnet/geth") != 3 || !strings.Contains(out, oldest) {
		t.Fatalf("list: %d\n%s\n%s", code, out, stderr)
	}
	if strings.Contains(stderr+out, "not-a-secret") {
		t.Fatal("secret in the output")
	}
	code, out, stderr = runCmd("prune", "-dry-run")
	if code != 0 || !strings.Contains(out, "would delete 1 "+oldest) || len(srv.Snapshots()) != 3 {
		t.Fatalf("prune -dry-run: %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = runCmd("prune")
	if code != 0 || !strings.Contains(out, "deleted 1 "+oldest) || len(srv.Snapshots()) != 2 {
		t.Fatalf("prune: %d\n%s\n%s", code, out, stderr)
	}
	if code, _, _ := runCmd("snapshot", "-volume", "nope"); code != 2 {
		t.Fatalf("unknown volume: exit %d, want 2", code)
	}
	if code := volumeMain(context.Background(), []string{"resize"}, &bytes.Buffer{}, &bytes.Buffer{}); code != 2 {
		t.Fatalf("unknown subcommand: exit %d", code)
	}
}
