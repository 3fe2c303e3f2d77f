package testenv

import (
	"context"
	"testing"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// CometNode is one validator of a real CometBFT network (devnet.CometNode).
type CometNode struct {
	*devnet.CometNode
	t testing.TB
}

// Start runs the node again on its home.
func (c *CometNode) Start() {
	c.t.Helper()
	if err := c.CometNode.Start(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	track(c.t, c.Proc)
}

// CometNet is a real CometBFT network made by `cometbft testnet`, stopped when the test ends.
type CometNet struct {
	ChainID string
	Nodes   []*CometNode
}

// StartCometNetwork starts a network of n validators (as IRITA's `irita testnet --v 4` does) and waits for blocks.
func StartCometNetwork(t testing.TB, n int) *CometNet {
	t.Helper()
	return StartCometChain(t, n, "")
}

// StartCometChain starts a network of n validators on the given chain id ("": a random one).
func StartCometChain(t testing.TB, n int, chainID string) *CometNet {
	t.Helper()
	Bin(t, "cometbft")
	net, err := devnet.StartCometChain(context.Background(), t.TempDir(), n, chainID)
	out := &CometNet{}
	if net != nil {
		out.ChainID = net.ChainID
		for _, c := range net.Nodes {
			if c.Proc != nil {
				track(t, c.Proc)
			}
			out.Nodes = append(out.Nodes, &CometNode{CometNode: c, t: t})
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}
