package agent

import (
	"slices"
	"testing"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/restart"
)

func TestConsulNeeds(t *testing.T) {
	cfg := &config.Config{
		Nodes:   []nodespec.Node{{Name: "geth-a", Service: "eth"}, {Name: "geth-b", Service: "eth"}},
		Volumes: []ebs.Volume{{Node: "geth-a"}, {}},
	}
	cfg.Consul.KVPrefix = "cw"
	var got []string
	for _, n := range ConsulNeeds(cfg, "ip-1", "host-a") {
		got = append(got, n.String())
	}
	want := []string{`key:read on "cw/heads/"`, `agent:read on "ip-1"`, `node:read on "ip-1"`, `session:write on "ip-1"`,
		`service:write on "eth"`, `key:write on "cw/flags/eth/host-a/"`, `key:write on "cw/heads/eth/geth-a"`,
		`key:write on "cw/heads/eth/geth-b"`, `key:write on "cw/volumes/geth-a"`, `key:write on "cw/volume-ops/geth-a"`}
	if !slices.Equal(got, want) {
		t.Fatalf("needs\n got %q\nwant %q", got, want)
	}

	// With restarts: every node's checks and the lock per service. Without the node name: nothing bound to it.
	cfg.Restart = &restart.Policy{}
	got = got[:0]
	for _, n := range ConsulNeeds(cfg, "", "host-a") {
		got = append(got, n.String())
	}
	for _, s := range []string{`node:read on ""`, `key:write on "cw/restart/eth"`} {
		if !slices.Contains(got, s) {
			t.Errorf("no %s in %q", s, got)
		}
	}
	for _, s := range got {
		if slices.Contains([]string{`agent:read on ""`, `session:write on ""`}, s) {
			t.Errorf("%s without a node name", s)
		}
	}
}
