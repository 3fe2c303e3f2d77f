package kvlayout

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	l := New("/cw/")
	for got, want := range map[string]string{
		l.Prefix():                 "cw",
		l.Heads():                  "cw/heads/",
		l.Head("eth-mainnet", "a"): "cw/heads/eth-mainnet/a",
		l.Fallback("eth-mainnet"):  "cw/fallback/eth-mainnet",
		l.Flags():                  "cw/flags/",
		l.Flag("eth-mainnet", "host-a", "infura"): "cw/flags/eth-mainnet/host-a/infura",
		l.DenyMethods():          "cw/proxy/deny_methods",
		l.DefaultService():       "cw/proxy/default_service",
		l.RestartLock("eth-a"):   "cw/restart/eth-a",
		l.VolumeHolder("geth-a"): "cw/volumes/geth-a",
		l.VolumeOp("geth-a"):     "cw/volume-ops/geth-a",
		New("").Prefix():         DefaultPrefix,
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

// The proxy templates read the same keys, under the default prefix.
func TestTemplatesUseTheLayout(t *testing.T) {
	files, err := filepath.Glob("../../consul-templates/*/*.ctmpl")
	if err != nil || len(files) < 2 {
		t.Fatalf("templates: %v %v", files, err)
	}
	l := New("")
	fallback := strings.TrimSuffix(l.Fallback("%s"), "%s")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		for _, key := range []string{`"` + l.DenyMethods() + `"`, `"` + l.DefaultService() + `"`, `"` + fallback + `%s"`} {
			if !strings.Contains(src, key) {
				t.Errorf("%s does not read %s", f, key)
			}
		}
	}
}
