package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/consulacl"
	"github.com/chainwarden/chainwarden/internal/consulclient"
	"github.com/chainwarden/chainwarden/internal/fleet"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

func init() {
	register("status", "show the fleet's chain nodes and their health from Consul", runStatus)
}

type statusFlags struct {
	asJSON, watch bool
	prefix        string
	maxAge        time.Duration
}

func runStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var f statusFlags
	fs.BoolVar(&f.asJSON, "json", false, "print JSON instead of a table")
	fs.BoolVar(&f.watch, "watch", false, "redraw whenever Consul's health changes (blocking queries), until Ctrl-C")
	addr := fs.String("consul", "", "Consul HTTP address (default: CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&f.prefix, "kv-prefix", kvlayout.DefaultPrefix, "KV prefix the agents use")
	fs.DurationVar(&f.maxAge, "head-max-age", config.DefaultHeadMaxAge, "ignore heads older than this")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	conn, err := consulclient.Open(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chainwarden status:", err)
		return 1
	}
	c := conn.Client
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A token that cannot read would show an empty or partial fleet (Consul hides what a token may not read): say so.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = consulacl.Check(cctx, c.ACL(), conn, conn.HasToken(), statusNeeds(f.prefix))
	cancel()
	if consulacl.Decided(err) {
		fmt.Fprintln(os.Stderr, "chainwarden status:", err)
		return 1
	}
	style := fleet.Style{Color: isTerminal(os.Stdout)}
	if !f.watch {
		if err := printStatus(ctx, c, f, style, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "chainwarden status:", consulacl.Explain(err))
			return 1
		}
		return 0
	}
	var index uint64
	for ctx.Err() == nil {
		if style.Color {
			fmt.Print("\x1b[H\x1b[2J") // home, clear
		}
		if err := printStatus(ctx, c, f, style, os.Stdout); err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "chainwarden status:", consulacl.Explain(err))
		}
		// Redraw on every change of health, and every 5 s at the least so heights and ages stay current.
		next, err := fleet.Wait(ctx, c, index, 5*time.Second)
		if err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "chainwarden status:", consulacl.Explain(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		index = next
	}
	return 0
}

func printStatus(ctx context.Context, c *consulapi.Client, f statusFlags, style fleet.Style, w io.Writer) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := fleet.Read(rctx, c, f.prefix, f.maxAge, time.Now())
	if err != nil {
		return err
	}
	flags, err := fleet.Flags(rctx, c, f.prefix)
	if err != nil {
		return err
	}
	if f.asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(fleet.NewStatus(rows, flags))
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "no chainwarden nodes registered in Consul")
		return err
	}
	if err := style.WriteTable(w, rows); err != nil {
		return err
	}
	return fleet.WriteFlags(w, flags, time.Now())
}

// statusNeeds is what `chainwarden status` reads: every chainwarden service and its nodes' health, the heads and
// flags in KV (packer/files/consul-acl/chainwarden-proxy.hcl grants them). It asks "read", not "list", for the KV
// folders: only a Consul with acl.enable_key_list_policy needs "list", and its 403 then names it.
func statusNeeds(prefix string) []consulacl.Need {
	l := kvlayout.New(prefix)
	return []consulacl.Need{
		{Resource: "service", Segment: "", Access: "read", Why: "list every service"},
		{Resource: "node", Segment: "", Access: "read", Why: "read the health of every node"},
		{Resource: "key", Segment: l.Heads(), Access: "read", Why: "read the heads"},
		{Resource: "key", Segment: l.Flags(), Access: "read", Why: "read the flags"},
	}
}

// isTerminal reports whether f is a terminal (colours only there).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
