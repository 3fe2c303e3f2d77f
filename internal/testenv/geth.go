package testenv

import (
	"context"
	"testing"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// Chain ids of the test networks.
const (
	CliqueChainID = devnet.CliqueChainID
	DevChainID    = devnet.DevChainID
)

// Geth is one real geth node (devnet.Geth), stopped when the test ends.
type Geth struct {
	*devnet.Geth
	t testing.TB
}

// StartGethDev starts `geth --dev --dev.period 1` (geth v1.16), a single node that is its own chain (chain id 1337).
func StartGethDev(t testing.TB, name string) *Geth {
	t.Helper()
	Bin(t, "geth")
	g, err := devnet.StartGethDev(context.Background(), t.TempDir(), name)
	if g != nil && g.Proc != nil {
		track(t, g.Proc)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &Geth{Geth: g, t: t}
}

// Restart starts the node again on its data dir and ports.
func (g *Geth) Restart() {
	g.t.Helper()
	if err := g.Geth.Restart(context.Background()); err != nil {
		g.t.Fatal(err)
	}
	track(g.t, g.Proc)
}

// Clique is a real multi-node geth v1.13 Clique network: node 0 seals a block every second, the others sync from it.
type Clique struct {
	net   *devnet.Clique
	Nodes []*Geth
}

// StartCliqueNetwork starts n nodes (n >= 1) of one Clique network (chain id 4242) and waits until they all follow
// the sealer.
func StartCliqueNetwork(t testing.TB, n int) *Clique {
	t.Helper()
	Bin(t, "geth-clique")
	net, err := devnet.StartClique(context.Background(), t.TempDir(), n)
	c := &Clique{net: net}
	if net != nil {
		for _, g := range net.Nodes {
			if g.Proc != nil {
				track(t, g.Proc)
			}
			c.Nodes = append(c.Nodes, &Geth{Geth: g, t: t})
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Connect makes node g peer with the sealer again.
func (c *Clique) Connect(g *Geth) error { return c.net.Connect(g.Geth) }

// Isolate removes g's peers, so it stops getting blocks while its RPC keeps answering (a node that lost its peers).
func (c *Clique) Isolate(g *Geth) error { return c.net.Isolate(g.Geth) }

// InSync returns nil when every node is within tolerance blocks of the sealer.
func (c *Clique) InSync(tolerance uint64) error { return c.net.InSync(tolerance) }
