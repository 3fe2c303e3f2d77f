package heads

import (
	"context"
	"encoding/json"
	"fmt"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

// KVGetter is the one Consul KV call Read makes; *consulapi.KV satisfies it.
type KVGetter interface {
	Get(key string, q *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error)
}

// Read returns the head an agent published for one node, and false when there is none.
func Read(ctx context.Context, kv KVGetter, layout kvlayout.Layout, service, node string) (Head, bool, error) {
	key := layout.Head(service, node)
	pair, _, err := kv.Get(key, (&consulapi.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return Head{}, false, fmt.Errorf("read head %s from consul kv: %w", key, err)
	}
	if pair == nil {
		return Head{}, false, nil
	}
	var h Head
	if err := json.Unmarshal(pair.Value, &h); err != nil {
		return Head{}, false, fmt.Errorf("decode head %s: %w", key, err)
	}
	h.Service, h.Node = service, node
	return h, true, nil
}
