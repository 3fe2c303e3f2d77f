package ebs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/rpc"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// follower is a geth-clique node following the test network's sealer from a data dir we choose.
type follower struct {
	rpc  string
	proc *testenv.Process
}

func (f *follower) call(result any, method string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := rpc.DialContext(ctx, f.rpc)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.CallContext(ctx, result, method, args...)
}

func (f *follower) height() (uint64, error) {
	var n hexutil.Uint64
	err := f.call(&n, "eth_blockNumber")
	return uint64(n), err
}

func startFollower(t *testing.T, name, datadir string) *follower {
	t.Helper()
	bin := testenv.Bin(t, "geth-clique")
	port := testenv.FreePort(t)
	f := &follower{rpc: fmt.Sprintf("http://127.0.0.1:%d", port)}
	// archive: every block's state is written, so a crash-consistent image restarts at its own height.
	f.proc = testenv.Start(t, name, bin, "--datadir", datadir, "--networkid", strconv.Itoa(testenv.CliqueChainID),
		"--nodiscover", "--port", strconv.Itoa(testenv.FreePort(t)), "--authrpc.port", strconv.Itoa(testenv.FreePort(t)),
		"--ipcdisable", "--syncmode", "full", "--gcmode", "archive", "--http", "--http.addr", "127.0.0.1",
		"--http.port", strconv.Itoa(port), "--http.api", "eth,net,web3,admin", "--verbosity", "2",
		"--datadir.minfreedisk", "0") // the test disks are small
	testenv.Eventually(t, 60*time.Second, name+" rpc", func() error {
		if f.proc.Exited() {
			t.Fatalf("%s exited: %s", name, f.proc.Tail(30))
		}
		_, err := f.height()
		return err
	})
	return f
}

// copyDevice copies a block device into a sparse image file: what an EBS snapshot holds.
func copyDevice(dev, img string) error {
	in, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(img)
	if err != nil {
		return err
	}
	defer out.Close()
	buf := make([]byte, 1<<16)
	zero := make([]byte, 1<<16)
	var off int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, err := out.WriteAt(buf[:n], off); err != nil {
					return err
				}
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return out.Truncate(off)
		}
		if err != nil {
			return err
		}
	}
}

func agentConfig(t *testing.T, consulAddr, stateDir string, nodes map[string]string) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "consul {\n  address = %q\n}\nlisten = \"127.0.0.1:%d\"\ninterval = \"500ms\"\nstate_dir = %q\n",
		consulAddr, testenv.FreePort(t), stateDir)
	for name, url := range nodes {
		fmt.Fprintf(&b, "node %q {\n  kind = \"ethereum\"\n  rpc = %q\n  service = \"eth-test\"\n  chain_id = %d\n  min_peers = 0\n}\n",
			name, url, testenv.CliqueChainID)
	}
	cfg, err := config.Parse([]byte(b.String()), "agent.hcl")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func nodeStatus(a *agent.Agent, node string) (agent.NodeHealth, bool) {
	for _, h := range a.Health() {
		if h.Node == node {
			return h, true
		}
	}
	return agent.NodeHealth{}, false
}

// The whole promise: a synced node's volume is snapshotted (gated on its check, frozen), its host dies, a new host
// restores the newest snapshot of the family (no mkfs, the chain data is there), and the restored node is critical
// — out of the proxy's passing set — until it has caught up with the network, then passing.
func TestRestoredNodeStaysCriticalUntilCaughtUp(t *testing.T) {
	integration(t)
	e := newEnv(t)
	devA := loopDevice(t, 512)
	c := testenv.StartConsul(t)
	e.m.Consul, e.m.KV = c.Client.Agent(), c.Client.KV()
	network := testenv.StartCliqueNetwork(t, 1)
	sealer := network.Nodes[0]
	genesis := filepath.Join(filepath.Dir(sealer.DataDir), "genesis.json")

	// Host A: geth-a on an ensured (blank, formatted) EBS volume, following the sealer.
	e.addDisk(devA)
	vol := e.volume("geth-data", func(v *ebs.Volume) { v.Node = "geth-a" })
	cleanupMount(t, vol.MountPath)
	if _, err := e.m.Ensure(ctxT(t, 60*time.Second), vol); err != nil {
		t.Fatal(err)
	}
	dataA := filepath.Join(vol.MountPath, "geth")
	run(t, testenv.Bin(t, "geth-clique"), "init", "--datadir", dataA, genesis)
	geth := startFollower(t, "geth-a", dataA)
	var ok bool
	if err := geth.call(&ok, "admin_addPeer", sealer.Enode); err != nil {
		t.Fatal(err)
	}

	cfg := agentConfig(t, c.Addr, e.m.Paths.StateDir, map[string]string{"sealer": sealer.RPC, "geth-a": geth.rpc})
	a, err := agent.New(cfg, e.m.Log.Named("agent"), agent.Options{ID: "test-host", Consul: agent.ConsulAPI(c.Client)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agentDone := make(chan struct{})
	go func() { _ = a.Run(ctx); close(agentDone) }()
	t.Cleanup(func() { cancel(); <-agentDone })
	e.m.Height = a.Height // the agent of this host gives the snapshot its height, as `chainwarden agent` does
	testenv.Eventually(t, 60*time.Second, "geth-a passing", func() error {
		if h, _ := nodeStatus(a, "geth-a"); h.Status != "passing" || h.Height < 5 {
			return fmt.Errorf("geth-a %+v", h)
		}
		return nil
	})

	// Snapshot it; the EBS snapshot's data is the frozen disk's image.
	img := filepath.Join(t.TempDir(), "snapshot.img")
	e.m.Freezer = func(v ebs.Volume) ebs.Freezer {
		return observingFreezer{inner: ebs.FSFreeze{Path: v.MountPath}, during: func() {
			if err := copyDevice(devA, img); err != nil {
				t.Errorf("copy the frozen disk: %v", err)
			}
		}}
	}
	// A follower on a loaded machine can drop out of passing for a pass (a late block): the snapshot gate refuses
	// then, and an operator would try again.
	var snap *ebs.SnapshotResult
	testenv.Eventually(t, 60*time.Second, "a snapshot of the passing node", func() error {
		var err error
		snap, err = e.m.Snapshot(ctxT(t, 60*time.Second), vol, true)
		if err != nil && !errors.Is(err, ebs.ErrNotPassing) {
			t.Fatal(err)
		}
		return err
	})
	snapHeight, _ := strconv.ParseUint(snap.Height, 10, 64)
	if snapHeight == 0 {
		t.Fatalf("snapshot height %q", snap.Height)
	}

	// Host A dies. The chain moves on.
	geth.proc.Kill()
	testenv.Eventually(t, 90*time.Second, "the sealer 25 blocks past the snapshot", func() error {
		h, err := sealer.BlockNumber()
		if err != nil || h < snapHeight+25 {
			return fmt.Errorf("sealer at %d, snapshot at %d (%v)", h, snapHeight, err)
		}
		return nil
	})

	// Host B, same AZ: ensure restores the snapshot (volume A is still attached to host A) and mounts it as it is.
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	devB := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", devB).Run() })
	e.addDisk(devB)
	e.ec2.AddInstance("i-0b0b0b0b0b0b0b0b0", testAZ)
	mB := *e.m
	mB.Host.InstanceID = "i-0b0b0b0b0b0b0b0b0"
	mB.Paths.Fstab = filepath.Join(t.TempDir(), "fstab")
	mB.Paths.NomadConfigDir = t.TempDir()
	volB := vol
	volB.Node = "geth-b" // the node that runs on the restored volume: ensure marks it restored for the agent
	volB.MountPath = filepath.Join(t.TempDir(), "geth-data")
	cleanupMount(t, volB.MountPath)
	res, err := mB.Ensure(ctxT(t, 60*time.Second), volB)
	if err != nil {
		t.Fatal(err)
	}
	if res.RestoredFrom != snap.SnapshotID || res.Formatted || res.Device != devB {
		t.Fatalf("host B ensure %+v, want a restore of %s onto %s, unformatted", res, snap.SnapshotID, devB)
	}

	// geth-b starts from the restored chain data, isolated at first: it is behind, so critical.
	gethB := startFollower(t, "geth-b", filepath.Join(volB.MountPath, "geth"))
	start, err := gethB.height()
	if err != nil || start+10 < snapHeight {
		t.Fatalf("restored node starts at %d (snapshot at %d): the data did not come with the snapshot (%v)", start, snapHeight, err)
	}
	t.Logf("snapshot %s at height %s; restored node starts at %d", snap.SnapshotID, snap.Height, start)
	cfg2 := agentConfig(t, c.Addr, e.m.Paths.StateDir, map[string]string{"sealer": sealer.RPC, "geth-b": gethB.rpc})
	a.SetNodes("config", cfg2.Nodes)
	testenv.Eventually(t, 30*time.Second, "geth-b judged", func() error {
		if h, _ := nodeStatus(a, "geth-b"); h.Status != "critical" || h.Lag <= 10 ||
			!strings.HasPrefix(h.Output, fmt.Sprintf("catching up from snapshot: height %d → head ", start)) {
			return fmt.Errorf("geth-b %+v", h)
		}
		return nil
	})
	// It stays out while it has not caught up: six verdicts in a row (each a new probe pass) are critical.
	h, _ := nodeStatus(a, "geth-b")
	for i := 0; i < 6; i++ {
		last := h.Updated
		testenv.Eventually(t, 10*time.Second, "the next verdict on geth-b", func() error {
			if h, _ = nodeStatus(a, "geth-b"); !h.Updated.After(last) {
				return fmt.Errorf("no verdict since %s", last)
			}
			return nil
		})
		if h.Status != "critical" {
			t.Fatalf("restored, lagging node is %s: %+v", h.Status, h)
		}
		entries, _, err := c.Client.Health().Service("eth-test", "", true, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range entries {
			if en.Service.ID == "geth-b" {
				t.Fatal("geth-b is in the passing set while behind")
			}
		}
	}
	st, output, _ := c.CheckStatus("geth-b")
	if st != consulapi.HealthCritical || !strings.HasPrefix(output, "catching up from snapshot: height") ||
		!strings.Contains(output, "not moving") { // isolated, it imports nothing
		t.Fatalf("geth-b check %s: %s", st, output)
	}
	t.Logf("restored node in Consul while behind: %s: %s", st, output)
	caughtUp := time.Now()

	// Peered again, it catches up and becomes passing.
	if err := gethB.call(&ok, "admin_addPeer", sealer.Enode); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 90*time.Second, "geth-b passing after catching up", func() error {
		h, _ := nodeStatus(a, "geth-b")
		if h.Status != "passing" {
			return fmt.Errorf("geth-b %+v", h)
		}
		return nil
	})
	testenv.Eventually(t, 10*time.Second, "geth-b passing in Consul", func() error {
		if st, output, _ = c.CheckStatus("geth-b"); st != consulapi.HealthPassing {
			return fmt.Errorf("%s: %s", st, output)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(e.m.Paths.StateDir, "restored", "geth-b.json")); !os.IsNotExist(err) {
		t.Fatalf("the restore mark outlived the catch-up: %v", err)
	}
	t.Logf("passing %s after peering: %s", time.Since(caughtUp).Round(100*time.Millisecond), output)
}
