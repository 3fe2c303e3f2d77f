package config

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/probe"
)

// FuzzParse feeds Parse arbitrary configuration files, starting from every good and bad file in testdata. A file
// either gives a configuration that keeps the rules validation enforces, or an error that names the file; never a
// panic, a hang, or an error that changes from one parse to the next.
func FuzzParse(f *testing.F) {
	f.Setenv("CW_TEST_CL_KEY", "k")
	f.Setenv("CW_TEST_CL_SECRET", "s")
	f.Setenv("CW_TEST_INFURA_URL", "https://mainnet.infura.io/v3/abc")
	files, _ := filepath.Glob("testdata/*/*.hcl")
	if len(files) < 10 {
		f.Fatalf("expected the good and bad config files as seeds, found %d", len(files))
	}
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Add([]byte(`consul {
  address   = "127.0.0.1:8500"
  check_ttl = "15s"
}
nomad {
  address = "http://127.0.0.1:4646"
  enabled = true
}
timeout = "500ms"
node "cl-0" {
  kind            = "chainlink"
  rpc             = "https://10.0.0.7:6688"
  service         = "chainlink-mainnet"
  tags            = ["ocr", "primary"]
  api_key         = env("CW_TEST_CL_KEY")
  api_secret      = file("testdata/good/minimal.hcl")
  min_balance     = "1.000000000000000001"
  max_failed_runs = 2
  fail_after      = 1
  pass_after      = 5
}
reference "cosmos" {
  service = "irita-mainnet"
  kind    = "cometbft"
  rpc     = "https://rpc.example.invalid"
}
volume "irita-data" {
  chain             = "irita"
  network           = "mainnet"
  client            = "irita"
  node              = "irita-0"
  type              = "io2"
  iops              = 16000
  kms_key_id        = "alias/chain"
  snapshot_interval = "6h"
  keep_snapshots    = 7
  freeze            = "command"
  stop_command      = ["systemctl", "stop", "irita"]
  start_command     = ["systemctl", "start", "irita"]
  drain_wait        = "30s"
}
`))

	f.Fuzz(func(t *testing.T, src []byte) {
		// file() reads whatever path the configuration names: an operator's file is trusted, but the fuzzer must not
		// wander into this machine's devices (an endless /dev/zero) or kernel files.
		for _, dir := range []string{"/dev", "/proc", "/sys"} {
			if bytes.Contains(src, []byte(dir)) {
				t.Skip("names a device or kernel file")
			}
		}
		cfg, err := parseGuarded(t, src)
		if (cfg == nil) == (err == nil) {
			t.Fatalf("Parse gave config %v and error %v: want exactly one", cfg != nil, err)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.hcl:") {
				t.Errorf("error does not name the file: %q", err)
			}
			if _, again := parseGuarded(t, src); again == nil || again.Error() != err.Error() {
				t.Errorf("the same file gave two errors:\n%v\n%v", err, again)
			}
			return
		}
		checkValid(t, cfg)
	})
}

// parseGuarded parses src as fuzz.hcl, failing the input if Parse does not return: it is CPU-bound on a small
// input, so the guard is far beyond any honest parse (a hang guard, not a speed target).
func parseGuarded(t *testing.T, src []byte) (*Config, error) {
	t.Helper()
	type result struct {
		cfg *Config
		err error
	}
	done := make(chan result, 1)
	go func() {
		cfg, err := Parse(src, "fuzz.hcl")
		done <- result{cfg, err}
	}()
	guard := time.NewTimer(10 * time.Second)
	defer guard.Stop()
	select {
	case r := <-done:
		return r.cfg, r.err
	case <-guard.C:
		t.Fatal("Parse still running after 10s")
		return nil, nil
	}
}

// checkValid fails unless a configuration Parse accepted keeps the top-level rules and names each node and volume
// once, and the rules of the packages that own node, reference and volume specs accept each of them again, defaults
// applied (the loader ran them, and what it filled in is valid).
func checkValid(t *testing.T, c *Config) {
	t.Helper()
	if c.Interval < 100*time.Millisecond || c.Timeout <= 0 || c.HeadMaxAge <= 0 || c.Consul.CheckTTL <= c.Interval ||
		c.Consul.DeregisterAfter < time.Minute || c.Listen == "" || c.Consul.KVPrefix == "" {
		t.Errorf("accepted top level out of its rules: %+v", c)
	}
	names := map[string]bool{}
	for _, n := range c.Nodes {
		if names[n.Name] || n.Source != nodespec.SourceConfig || !slices.Contains(probe.Kinds, n.Kind) {
			t.Errorf("accepted node out of the rules: %+v", n)
		}
		names[n.Name] = true
		before := n.Thresholds
		if errs := n.Normalize(); len(errs) > 0 || n.Thresholds != before {
			t.Errorf("accepted node %q: normalized again: %v, thresholds %+v then %+v", n.Name, errs, before, n.Thresholds)
		}
	}
	for _, r := range c.References {
		if errs := r.Normalize(c.Nodes); len(errs) > 0 {
			t.Errorf("accepted reference %q: normalized again: %v", r.Name, errs)
		}
	}
	vols := map[string]bool{}
	for _, v := range c.Volumes {
		if vols[v.Name] {
			t.Errorf("accepted volume %q twice", v.Name)
		}
		vols[v.Name] = true
		if errs := v.Validate(); len(errs) > 0 {
			t.Errorf("accepted volume %q: validated again: %v", v.Name, errs)
		}
	}
}

// TestParseErrorsInFileOrder pins what FuzzParse found: gohcl decodes a body's blocks in map order, so a file with
// errors in several blocks gave its errors in a different order from one parse to the next.
func TestParseErrorsInFileOrder(t *testing.T) {
	src := []byte("node \"a\" {\n  rpc = 1\n}\nnode \"b\" {\n  kind = \"ethereum\"\n}\nreference \"r\" {\n  bogus = 1\n}\n")
	want := `x.hcl:1,1: Missing consul block; A consul block is required.
x.hcl:1,10: Missing required argument; The argument "kind" is required, but no definition was found.
x.hcl:4,10: Missing required argument; The argument "rpc" is required, but no definition was found.
x.hcl:7,15: Missing required argument; The argument "rpc" is required, but no definition was found.
x.hcl:8,3: Unsupported argument; An argument named "bogus" is not expected here.`
	for range 20 {
		if _, err := Parse(src, "x.hcl"); err == nil || err.Error() != want {
			t.Fatalf("error\n got: %v\nwant: %s", err, want)
		}
	}
}
