package heads

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// mapKV answers Get from a map, as Consul's KV endpoint does: a nil pair for a missing key.
type mapKV struct {
	pairs map[string][]byte
	err   error
}

func (m mapKV) Get(key string, _ *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error) {
	if m.err != nil {
		return nil, nil, m.err
	}
	v, ok := m.pairs[key]
	if !ok {
		return nil, &consulapi.QueryMeta{}, nil
	}
	return &consulapi.KVPair{Key: key, Value: v}, &consulapi.QueryMeta{}, nil
}

func TestRead(t *testing.T) {
	ctx := context.Background()
	layout := kvlayout.New("cw")
	observed := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err := json.Marshal(Head{Height: 19234567, Peers: 47, Observed: observed, Agent: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	kv := mapKV{pairs: map[string][]byte{
		"cw/heads/eth-mainnet/geth-a": b,
		"cw/heads/eth-mainnet/broken": []byte("{"),
	}}
	h, ok, err := Read(ctx, kv, layout, "eth-mainnet", "geth-a")
	if err != nil || !ok {
		t.Fatalf("read: %v %v", ok, err)
	}
	want := Head{Service: "eth-mainnet", Node: "geth-a", Height: 19234567, Peers: 47, Observed: observed, Agent: "host-a"}
	if h != want {
		t.Fatalf("head %+v, want %+v", h, want)
	}
	if _, ok, err := Read(ctx, kv, layout, "eth-mainnet", "geth-b"); ok || err != nil {
		t.Fatalf("missing head: %v %v", ok, err)
	}
	if _, _, err := Read(ctx, kv, layout, "eth-mainnet", "broken"); err == nil || !strings.Contains(err.Error(), "cw/heads/eth-mainnet/broken") {
		t.Fatalf("undecodable head: %v", err)
	}
	down := errors.New("connection refused")
	if _, _, err := Read(ctx, mapKV{err: down}, layout, "eth-mainnet", "geth-a"); !errors.Is(err, down) {
		t.Fatalf("consul down: %v", err)
	}
}

// What a Store publishes, Read finds: both use the same key layout.
func TestReadWhatStorePublishedAgainstRealConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	ctx := context.Background()
	s := New(c.Client.KV(), c.Client.Txn(), kvlayout.New(""), hclog.NewNullLogger(), nil)
	if _, err := s.Publish(ctx, []Head{{Service: "eth-devnet", Node: "geth-a", Height: 100, Observed: time.Now(), Agent: "a"}}, nil); err != nil {
		t.Fatal(err)
	}
	h, ok, err := Read(ctx, c.Client.KV(), kvlayout.New(""), "eth-devnet", "geth-a")
	if err != nil || !ok || h.Height != 100 || h.Agent != "a" {
		t.Fatalf("read %+v %v %v", h, ok, err)
	}
}
