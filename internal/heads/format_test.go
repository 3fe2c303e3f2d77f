package heads

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/probe"
)

// The value format only ever grew: a value an older agent wrote reads (new fields zero), and a value written now
// reads with the fields an older agent knows (it ignores the rest).
func TestHeadValueCompatible(t *testing.T) {
	old := []byte(`{"height":100,"peers":3,"block_time":"2026-11-21T11:59:59Z","observed":"2026-11-21T12:00:00Z","agent":"host-old"}`)
	all := Decode("cw/heads/", consulapi.KVPairs{{Key: "cw/heads/eth/geth-old", Value: old}}, nil)
	h := all["eth"]["geth-old"]
	if h.Height != 100 || h.Agent != "host-old" || !h.Hash.IsZero() || h.Finalized != 0 || h.BlockTime.IsZero() {
		t.Fatalf("old value: %+v", h)
	}

	hash := probe.ParseHash("0x4cbaa9d3b12ea9a2b8f1c7e5c5d1e6a1f0a3d2c9b8e7f6a5d4c3b2a1f0e9d8c7")
	b, err := json.Marshal(Head{Height: 101, Peers: 3, Observed: time.Date(2026, 11, 21, 12, 0, 1, 0, time.UTC),
		Agent: "host-new", Hash: hash, ParentHash: hash, Finalized: 64})
	if err != nil {
		t.Fatal(err)
	}
	var older struct { // the Head of an agent before hashes
		Height    uint64    `json:"height"`
		Peers     uint64    `json:"peers"`
		BlockTime time.Time `json:"block_time,omitzero"`
		Observed  time.Time `json:"observed"`
		Agent     string    `json:"agent"`
	}
	if err := json.Unmarshal(b, &older); err != nil || older.Height != 101 || older.Agent != "host-new" {
		t.Fatalf("an older agent reads %s as %+v (%v)", b, older, err)
	}
	var back Head
	if err := json.Unmarshal(b, &back); err != nil || back.Hash != hash || back.ParentHash != hash || back.Finalized != 64 {
		t.Fatalf("round trip of %s: %+v (%v)", b, back, err)
	}
	if want := `{"height":101,"peers":3,"observed":"2026-11-21T12:00:01Z","agent":"host-new","hash":"` + hash.String() +
		`","parent_hash":"` + hash.String() + `","finalized":64}`; string(b) != want {
		t.Fatalf("value\n got %s\nwant %s", b, want)
	}
}

// A head is written again when its hash changes at the same height (a reorganisation), not only its height.
func TestPublishOnNewHash(t *testing.T) {
	c := fakes.NewConsul()
	s := New(c, c, kvlayout.New(""), hclog.NewNullLogger(), nil)
	ctx := context.Background()
	h := Head{Service: "eth", Node: "geth-a", Height: 100, Hash: probe.Hash{1}, Agent: "a"}
	for i, tc := range []struct {
		edit func(*Head)
		want int
	}{{func(*Head) {}, 1}, {func(*Head) {}, 0}, {func(h *Head) { h.Hash = probe.Hash{2} }, 1},
		{func(h *Head) { h.Finalized = 64 }, 1}, {func(h *Head) { h.Peers = 9 }, 0}} {
		tc.edit(&h)
		if n, err := s.Publish(ctx, []Head{h}, nil); err != nil || n != tc.want {
			t.Fatalf("step %d: wrote %d (%v), want %d", i, n, err, tc.want)
		}
	}
}

// Flags: written when new or changed (not when only ticking figures change), deleted when cleared; a restarted
// agent clears what its earlier run left, and leaves other agents' flags alone.
func TestPublishFlags(t *testing.T) {
	c := fakes.NewConsul()
	layout := kvlayout.New("")
	ctx := context.Background()
	s := New(c, c, layout, hclog.NewNullLogger(), nil)
	other := New(c, c, layout, hclog.NewNullLogger(), nil)
	since := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	infura := Flag{Service: "eth", Source: "infura", Reference: true, Kind: "not_corroborated", Since: since,
		Reason: "head 5000 not corroborated: ... made 1s ago", Key: "head 5000 not corroborated"}
	fork := Flag{Service: "eth", Source: "geth-b", Kind: "fork", Since: since, Reason: "on a fork: block 98 is 0x01 here, 0x02 on geth-a"}
	if err := other.PublishFlags(ctx, "host-b", []Flag{fork}); err != nil {
		t.Fatal(err)
	}
	if err := s.PublishFlags(ctx, "host-a", []Flag{infura, fork}); err != nil {
		t.Fatal(err)
	}
	writes := c.Calls("Txn")
	infura.Reason = "head 5000 not corroborated: ... made 2s ago"
	if err := s.PublishFlags(ctx, "host-a", []Flag{infura, fork}); err != nil || c.Calls("Txn") != writes {
		t.Fatalf("a ticking reason was written again (%v)", err)
	}
	got := DecodeFlags(layout.Flags(), kvPairs(t, c, layout.Flags()), nil)
	if len(got) != 3 {
		t.Fatalf("flags %+v", got)
	}
	if f := got[1]; f.Agent != "host-a" || f.Source != "infura" || !f.Reference || f.Reason != "head 5000 not corroborated: ... made 1s ago" {
		t.Fatalf("flag %+v", f)
	}
	if err := s.PublishFlags(ctx, "host-a", []Flag{infura}); err != nil {
		t.Fatal(err)
	}
	if c.Key(layout.Flag("eth", "host-a", "geth-b")) != nil {
		t.Fatal("a cleared flag is still in KV")
	}
	// A new run of host-a that flags nothing clears what the last run left; host-b's flag stays.
	s2 := New(c, c, layout, hclog.NewNullLogger(), nil)
	if err := s2.PublishFlags(ctx, "host-a", nil); err != nil {
		t.Fatal(err)
	}
	if keys := c.Keys(layout.Flags()); len(keys) != 1 || keys[0] != layout.Flag("eth", "host-b", "geth-b") {
		t.Fatalf("keys after the restart: %v", keys)
	}
	// host-b upgraded: its id is now its Consul node name, chain-b; what it left under host-b is its own and goes.
	s3 := New(c, c, layout, hclog.NewNullLogger(), nil)
	s3.SetPublishers(Publishers{Max: 2, Sessions: c, Agent: "chain-b", FormerAgents: []string{"host-b"}, MaxAge: time.Minute})
	if err := s3.PublishFlags(ctx, "chain-b", []Flag{infura}); err != nil {
		t.Fatal(err)
	}
	if keys := c.Keys(layout.Flags()); len(keys) != 1 || keys[0] != layout.Flag("eth", "chain-b", "infura") {
		t.Fatalf("keys after the upgrade: %v", keys)
	}
}

func kvPairs(t *testing.T, c *fakes.Consul, prefix string) consulapi.KVPairs {
	t.Helper()
	pairs, _, err := c.List(prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	return pairs
}
