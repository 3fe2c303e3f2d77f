// Package jobs holds the Nomad job specs chainwarden ships (geth, openethereum, chainlink, irita, cometbft, ...),
// embedded so `chainwarden job` can list, render, plan and run them without the source tree.
package jobs

import (
	"embed"
	"io/fs"
	"sort"
	"strings"
)

//go:embed *.nomad.hcl
var files embed.FS

// Suffix is the file name suffix of a job spec.
const Suffix = ".nomad.hcl"

// Names lists the embedded specs by name (the file name without .nomad.hcl), sorted.
func Names() []string {
	entries, _ := fs.ReadDir(files, ".")
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), Suffix) {
			names = append(names, strings.TrimSuffix(e.Name(), Suffix))
		}
	}
	sort.Strings(names)
	return names
}

// Source returns the HCL of the named spec, and false when there is none by that name.
func Source(name string) (string, bool) {
	b, err := files.ReadFile(name + Suffix)
	if err != nil {
		return "", false
	}
	return string(b), true
}
