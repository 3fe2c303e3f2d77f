package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/consulclient"
	"github.com/chainwarden/chainwarden/internal/fleet"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

func init() {
	register("status", "show the fleet's chain nodes and their health from Consul", runStatus)
}

func runStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	addr := fs.String("consul", "", "Consul HTTP address (default: CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	prefix := fs.String("kv-prefix", kvlayout.DefaultPrefix, "KV prefix the agents use")
	maxAge := fs.Duration("head-max-age", config.DefaultHeadMaxAge, "ignore heads older than this")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c, err := consulclient.New(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chainwarden status:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := fleet.Read(ctx, c, *prefix, *maxAge, time.Now())
	if err != nil {
		fmt.Fprintln(os.Stderr, "chainwarden status:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []fleet.Row{}
		}
		_ = enc.Encode(rows)
		return 0
	}
	if len(rows) == 0 {
		fmt.Println("no chainwarden nodes registered in Consul")
		return 0
	}
	_ = fleet.WriteTable(os.Stdout, rows)
	return 0
}
