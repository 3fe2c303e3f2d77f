package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/chainwarden/chainwarden/internal/consulstate"
	"github.com/chainwarden/chainwarden/internal/registry"
)

func init() {
	register("consul-forget", "before consul starts: forget the agent's registrations in its data dir (no restored passing)", runConsulForget)
}

// runConsulForget runs as consul.service's ExecStartPre: Consul must not restore the last "passing" of the agent's
// checks after a host restart (docs/PRODUCTION.md); the agent registers them again, critical until judged.
func runConsulForget(args []string) int {
	fs := flag.NewFlagSet("consul-forget", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "/opt/consul", "the stopped consul agent's data_dir")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	got, err := consulstate.Forget(*dataDir, registry.Tag)
	if len(got.Services) > 0 {
		fmt.Printf("consul-forget: forgot services %v, checks %v in %s\n", got.Services, got.Checks, *dataDir)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "consul-forget: %v\n", err)
		return 1
	}
	return 0
}
