package ebs

import (
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsimple"
)

// The host_volume file is HCL that Nomad reads back to the same name and path, whatever the characters: a path with
// a quote, a backslash or a "${" that HCL would otherwise take for a template.
func TestNomadHostVolumeRoundTrips(t *testing.T) {
	for _, path := range []string{"/data/geth-data", `/data/we"ird\path`, "/data/${not_a_var}/%{x}"} {
		src := NomadHostVolume(Volume{Name: "geth-data", MountPath: path})
		var cfg struct {
			Client struct {
				HostVolumes []struct {
					Name     string `hcl:"name,label"`
					Path     string `hcl:"path"`
					ReadOnly bool   `hcl:"read_only"`
				} `hcl:"host_volume,block"`
			} `hcl:"client,block"`
		}
		if err := hclsimple.Decode("host_volume.hcl", []byte(src), &hcl.EvalContext{}, &cfg); err != nil {
			t.Fatalf("%s:\n%s", err, src)
		}
		hv := cfg.Client.HostVolumes
		if len(hv) != 1 || hv[0].Name != "geth-data" || hv[0].Path != path || hv[0].ReadOnly {
			t.Fatalf("decoded %+v from:\n%s", hv, src)
		}
		if !strings.HasPrefix(src, "# Written by chainwarden volume ensure") {
			t.Fatalf("no header comment:\n%s", src)
		}
	}
}
