package probe

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/ethereum/go-ethereum/rpc"
)

// BlockHashes asks a node for the hashes of its blocks at heights, in one round trip where the kind allows (fork
// detection needs a node's block at a height another source reported). A height the node does not have is the zero
// Hash, not an error.
func BlockHashes(ctx context.Context, client *http.Client, t Target, heights []uint64) ([]Hash, error) {
	switch t.Kind {
	case Ethereum:
		return ethBlockHashes(ctx, client, t, heights)
	case CometBFT:
		return cometBlockHashes(ctx, client, t, heights)
	}
	return nil, errUnknownKind(t.Kind)
}

// ethBlockHashes sends one batch of eth_getBlockByNumber(height, false).
func ethBlockHashes(ctx context.Context, hc *http.Client, t Target, heights []uint64) ([]Hash, error) {
	client, err := ethClient(ctx, hc, t.URL)
	if err != nil {
		return nil, err
	}
	blocks := make([]ethBlock, len(heights))
	batch := make([]rpc.BatchElem, len(heights))
	for i, h := range heights {
		batch[i] = rpc.BatchElem{Method: "eth_getBlockByNumber", Args: []any{fmt.Sprintf("0x%x", h), false},
			Result: &blocks[i]}
	}
	if err := client.BatchCallContext(ctx, batch); err != nil {
		return nil, fmt.Errorf("json-rpc batch: %w", batchError(err))
	}
	out := make([]Hash, len(heights))
	var errs []error
	for i, e := range batch {
		switch {
		case e.Error != nil:
			errs = append(errs, callError(fmt.Sprintf("eth_getBlockByNumber(%d)", heights[i]), e.Error))
		case blocks[i].Number != nil && uint64(*blocks[i].Number) == heights[i]:
			out[i] = blocks[i].Hash
		}
	}
	return out, errors.Join(errs...)
}
