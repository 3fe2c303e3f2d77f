package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/restart"
)

// Bad files and the exact error each must give: the .err file beside each .hcl.
func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.hcl")
	if len(files) < 8 {
		t.Fatalf("expected the bad config cases, found %d", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			want, err := os.ReadFile(strings.TrimSuffix(f, ".hcl") + ".err")
			if err != nil {
				t.Fatal(err)
			}
			_, err = Load(f)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.HasSuffix(f, "syntax.hcl") { // HCL's own parser message; only the location is ours to pin
				if !strings.HasPrefix(err.Error(), "testdata/bad/syntax.hcl:") {
					t.Fatalf("error does not name the file and line: %v", err)
				}
				return
			}
			if got := err.Error(); got != strings.TrimSpace(string(want)) {
				t.Fatalf("error\n got: %s\nwant: %s", got, want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "KEY") {
				t.Fatalf("error leaks a secret: %v", err)
			}
		})
	}
}

func TestGoodFull(t *testing.T) {
	t.Setenv("CW_TEST_CL_KEY", "k")
	t.Setenv("CW_TEST_CL_SECRET", "s")
	t.Setenv("CW_TEST_INFURA_URL", "https://mainnet.infura.io/v3/abc")
	c, err := Load("testdata/good/full.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if c.Interval != time.Second || c.Timeout != time.Second || c.HeadMaxAge != 30*time.Second {
		t.Fatalf("durations: %v %v %v", c.Interval, c.Timeout, c.HeadMaxAge)
	}
	if c.PushPollInterval != 15*time.Second || c.Nodes[0].WS != "ws://127.0.0.1:8546" || c.Nodes[2].WS != "ws://10.0.1.5:26657/websocket" {
		t.Fatalf("push: %v %q %q", c.PushPollInterval, c.Nodes[0].WS, c.Nodes[2].WS)
	}
	if c.Consul.DeregisterAfter != 5*time.Minute {
		t.Fatalf("deregister_after %v", c.Consul.DeregisterAfter)
	}
	geth := c.Nodes[0]
	if geth.Address != "127.0.0.1" || geth.Port != 8545 || *geth.ChainID != 4242 {
		t.Fatalf("geth: %+v", geth)
	}
	if th := geth.Thresholds; th.WarnLag != 2 || th.MaxLag != 10 || th.MinPeers != 1 || th.FailAfter != 2 || th.PassAfter != 3 ||
		th.WarnBehind != 30*time.Second || th.MaxBehind != 2*time.Minute || th.TimeOnly || th.MaxFinalizedBehind != 5*time.Minute {
		t.Fatalf("geth thresholds: %+v", th)
	}
	if geth.Chain.MinBlockTime != time.Second || geth.Chain.Confirmations != 2 || !geth.Target().Finality {
		t.Fatalf("geth chain %+v, finality %v", geth.Chain, geth.Target().Finality)
	}
	// Time thresholds without block ones: judged by time alone, on its own chain's pace; no finality asked for.
	arb := c.Nodes[1]
	if th := arb.Thresholds; !th.TimeOnly || th.WarnBehind != 10*time.Second || th.MaxBehind != time.Minute ||
		th.MaxFinalizedBehind != 0 || arb.Chain.MinBlockTime != 100*time.Millisecond || arb.Target().Finality {
		t.Fatalf("arb: %+v %+v", th, arb.Chain)
	}
	irita := c.Nodes[2]
	if irita.Thresholds.MaxBlockAge != 30*time.Second || irita.Thresholds.MinPeers != 3 || irita.Port != 26657 {
		t.Fatalf("irita: %+v", irita)
	}
	if irita.Chain.MinBlockTime != 250*time.Millisecond || irita.Chain.Confirmations != 0 || irita.Target().Finality ||
		irita.Thresholds.WarnBehind != 0 || irita.Thresholds.TimeOnly {
		t.Fatalf("irita chain %+v thresholds %+v", irita.Chain, irita.Thresholds)
	}
	cl := c.Nodes[3]
	if cl.APIKey != "k" || cl.Thresholds.MinBalanceWei != "250000000000000000" {
		t.Fatalf("chainlink: %+v", cl.Thresholds)
	}
	if c.References[0].Kind != probe.Ethereum || c.References[0].RPC != "https://mainnet.infura.io/v3/abc" {
		t.Fatalf("reference: %+v", c.References[0])
	}
	v := c.Volumes[0]
	if v.SizeGiB != 2000 || v.Type != "gp3" || v.MountPath != "/data/geth-data" || v.Filesystem != "xfs" {
		t.Fatalf("volume: %+v", v)
	}
	if g := v.Grow; g == nil || *g != (ebs.Grow{Threshold: 80, StepGiB: 250, MaxSizeGiB: 4000, Interval: 2 * time.Minute}) {
		t.Fatalf("grow: %+v", g)
	}
}

func TestGoodMinimalDefaults(t *testing.T) {
	c, err := Load("testdata/good/minimal.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != DefaultListen || c.Interval != DefaultInterval || c.Consul.KVPrefix != "chainwarden" || c.Consul.HeadPublishers != 5 ||
		c.PushPollInterval != DefaultPushPollInterval || c.Nodes[0].WS != "" {
		t.Fatalf("defaults: %+v", c)
	}
	if c.Nodes[0].Source != "config" {
		t.Fatalf("source %q", c.Nodes[0].Source)
	}
}

func TestFileFunction(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "url")
	os.WriteFile(secret, []byte("https://provider.example/key123\n"), 0o600)
	src := `consul {}
reference "p" {
  service = "eth-mainnet"
  rpc     = file("` + secret + `")
}`
	c, err := Parse([]byte(src), "x.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if c.References[0].RPC != "https://provider.example/key123" {
		t.Fatalf("rpc %q", c.References[0].RPC)
	}
	_, err = Parse([]byte(strings.Replace(src, secret, filepath.Join(dir, "missing"), 1)), "x.hcl")
	if err == nil || !strings.HasPrefix(err.Error(), "x.hcl:4,13:") {
		t.Fatalf("missing file error: %v", err)
	}
}

// The restart block turns restarts on: what it says, with the defaults for the rest; without it they are off.
func TestRestartBlock(t *testing.T) {
	c, err := Load("testdata/good/restart.hcl")
	if err != nil {
		t.Fatal(err)
	}
	p := c.Restart
	if p == nil || p.After != 3*time.Minute || p.MaxPerHour != 2 || p.Hold != 20*time.Minute ||
		p.Backoff != restart.DefaultBackoff || p.MaxBackoff != restart.DefaultMaxBackoff || p.LockTTL != restart.DefaultLockTTL {
		t.Fatalf("policy %+v", p)
	}
	if c, err := Load("testdata/good/minimal.hcl"); err != nil || c.Restart != nil {
		t.Fatalf("restarts are on without a restart block: %+v %v", c.Restart, err)
	}
}
