package fleet

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// What `chainwarden status` shows comes from the Consul catalog and KV of a real Consul; -watch wakes on a change.
func TestReadAndWaitAgainstRealConsul(t *testing.T) {
	c := testenv.StartConsul(t)
	ctx := context.Background()
	now := time.Now()
	reg := registry.New(c.Client.Agent(), registry.Options{AgentID: "host-a", TTL: time.Minute, DeregisterAfter: time.Minute,
		Catalog: registry.Catalog(c.Client)}, hclog.NewNullLogger())
	svc := func(id, status, out string) registry.Service {
		return registry.Service{ID: id, Name: "eth-devnet", Address: "127.0.0.1", Port: 8545, Status: status, Output: out,
			Meta: map[string]string{"client": "geth", "kind": "ethereum"}}
	}
	if err := reg.Sync(ctx, []registry.Service{svc("geth-a", "passing", "height 110"),
		svc("geth-b", "warning", "10 blocks behind, more than warn_lag 2 — height 100, 10 behind head 110 (geth-a)"),
		// Not a publisher (bounded publishers): no head in KV, its figures come from its output.
		svc("geth-c", "passing", "height 108, 2 behind head 110 (geth-a), 7 peers, last block 1s ago")}); err != nil {
		t.Fatal(err)
	}
	hs := heads.New(c.Client.KV(), c.Client.Txn(), kvlayout.New(""), hclog.NewNullLogger(), nil)
	if _, err := hs.Publish(ctx, []heads.Head{
		{Service: "eth-devnet", Node: "geth-a", Height: 110, Observed: now.Add(-8 * time.Second)},
		{Service: "eth-devnet", Node: "geth-b", Height: 100, Observed: now.Add(-20 * time.Second)},
		// Far ahead and not corroborated (an older agent that flags nothing): not the head.
		{Service: "eth-devnet", Node: "geth-old-liar", Height: 99999999, Observed: now.Add(-time.Second)},
		// Flagged by its agent (on a fork): not the head either.
		{Service: "eth-devnet", Node: "geth-fork", Height: 120, Observed: now.Add(-time.Second)},
	}, nil); err != nil {
		t.Fatal(err)
	}
	fork := heads.Flag{Service: "eth-devnet", Source: "geth-fork", Kind: "fork", Since: now.Add(-time.Minute),
		Reason: "on a fork: block 118 is 0x0102030405 here, 0x0a0b0c0d0e on geth-a"}
	infura := heads.Flag{Service: "eth-devnet", Source: "infura", Reference: true, Kind: "not_corroborated",
		Since: now.Add(-2 * time.Minute), Reason: "head 5000 not corroborated: the other sources put the chain at 113 at most"}
	if err := hs.PublishFlags(ctx, "host-a", []heads.Flag{fork, infura}); err != nil {
		t.Fatal(err)
	}
	var rows []Row
	testenv.Eventually(t, 10*time.Second, "both nodes in the catalog", func() error {
		var err error
		rows, err = Read(ctx, c.Client, "", time.Minute, now)
		if err == nil && (len(rows) != 3 || rows[2].Output == "") {
			err = errNotYet
		}
		return err
	})
	b := rows[1]
	// The reason is the catalog's output, shortened. (The local Consul agent defers output-only changes to the
	// servers by check_update_interval, so the catalog may still have none here: the open verdict issue's item.)
	if b.Node != "geth-b" || b.Status != "warning" || b.Lag != 10 || b.LagSec != 8 || b.Reason != Reason(b.Output, 60) || b.Client != "geth" {
		t.Fatalf("geth-b: %+v", b)
	}
	if a := rows[0]; a.Status != "passing" || a.Reason != "" || a.Lag != 0 || a.Head != 110 {
		t.Fatalf("geth-a: %+v", a)
	}
	if c := rows[2]; c.Node != "geth-c" || c.Height != 108 || c.Peers != 7 || c.Lag != 2 {
		t.Fatalf("geth-c (no head in KV): %+v", c)
	}
	flags, err := Flags(ctx, c.Client, "")
	if err != nil || len(flags) != 2 {
		t.Fatalf("flags %+v %v", flags, err)
	}
	var out strings.Builder
	if err := WriteFlags(&out, flags, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NOT COUNTED  SERVICE     SOURCE     BY      FOR   REASON",
		"node         eth-devnet  geth-fork  host-a  1m0s  on a fork: block 118",
		"reference    eth-devnet  infura     host-a  2m0s  head 5000 not corroborated"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("flags table lacks %q:\n%s", want, out.String())
		}
	}

	// -json: the same nodes and flags, the reference's flag included.
	js, err := json.Marshal(NewStatus(rows, flags))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Nodes []struct{ Node string }
		Flags []FlagRow
	}
	if err := json.Unmarshal(js, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 3 || len(st.Flags) != 2 {
		t.Fatalf("status -json: %s", js)
	}
	found := false
	for _, f := range st.Flags {
		if f.Source != "infura" {
			continue
		}
		found = true
		if d := f.Since.Sub(infura.Since); !f.Reference || f.Service != "eth-devnet" || f.Agent != "host-a" ||
			f.Kind != "not_corroborated" || !strings.HasPrefix(f.Reason, "head 5000 not corroborated") || d < -time.Second || d > time.Second {
			t.Fatalf("the reference's flag in status -json: %+v", f)
		}
	}
	if !found {
		t.Fatalf("status -json lacks the flagged reference: %s", js)
	}

	index, err := Wait(ctx, c.Client, 0, time.Second)
	if err != nil || index == 0 {
		t.Fatalf("first wait: %d %v", index, err)
	}
	done := make(chan uint64, 1)
	go func() {
		next, err := Wait(ctx, c.Client, index, time.Minute)
		if err != nil {
			t.Error(err)
		}
		done <- next
	}()
	if err := reg.Sync(ctx, []registry.Service{svc("geth-a", "passing", "height 110"), svc("geth-b", "critical", "probe failed"),
		svc("geth-c", "passing", "height 108")}); err != nil {
		t.Fatal(err)
	}
	if next := <-done; next <= index {
		t.Fatalf("wait returned index %d after %d", next, index)
	}
}

type notYet struct{}

func (notYet) Error() string { return "not yet" }

var errNotYet error = notYet{}
