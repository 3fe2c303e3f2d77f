package ebs_test

import (
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

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/discovery"
	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
	"github.com/chainwarden/chainwarden/internal/nodespec"
	"github.com/chainwarden/chainwarden/internal/nomadjob"
	"github.com/chainwarden/chainwarden/internal/testenv"
	"github.com/chainwarden/chainwarden/internal/upgrade"
	"github.com/chainwarden/chainwarden/internal/volops"
)

// upgradeRig is one chain host for real: its EBS volume ensured on a loop device (EC2 test server), Nomad with the
// docker driver offering it as a host volume, Consul, the agent judging the discovered geth node, and the agent's
// volume operations; plus `chainwarden job`'s side (the job client and the Upgrader).
type upgradeRig struct {
	e      *env
	vol    ebs.Volume
	consul *testenv.Consul
	docker *testenv.Docker
	nomad  *testenv.Nomad
	jobs   *nomadjob.Client
	up     *upgrade.Upgrader
	agent  *agent.Agent
	logs   *syncBuffer
	image  string
	// agentPort is where the agent listens: the job's deployment check asks it for the allocation's verdict.
	agentPort int
	// snapshotImage is the disk as it was while frozen for the last snapshot: what the EBS snapshot holds.
	snapshotImage string
}

func newUpgradeRig(t *testing.T) *upgradeRig {
	t.Helper()
	integration(t)
	r := &upgradeRig{e: newEnv(t), logs: &syncBuffer{}}
	e := r.e
	devA := loopDevice(t, 512)
	e.addDisk(devA)
	e.ec2.OnDetach = func(volumeID, _ string) { // udev: the device of a detached volume goes away
		_ = os.Remove(filepath.Join(e.byID, "nvme-Amazon_Elastic_Block_Store_"+ebs.Serial(volumeID)))
	}
	r.vol = e.volume("geth-up", func(v *ebs.Volume) { v.Node = "geth-geth-0" })
	cleanupMount(t, r.vol.MountPath)
	if _, err := e.m.Ensure(ctxT(t, time.Minute), r.vol); err != nil {
		t.Fatal(err)
	}
	r.consul = testenv.StartConsul(t)
	r.docker = testenv.StartDocker(t)
	r.nomad = testenv.StartNomad(t, testenv.NomadOptions{ConfigDir: e.m.Paths.NomadConfigDir, Docker: r.docker, ConsulAddr: r.consul.Addr})
	r.image = r.docker.GethImage(t)
	r.jobs = &nomadjob.Client{API: r.nomad.Client, Out: t.Output(), Poll: time.Second}
	layout := kvlayout.New("")
	r.up = &upgrade.Upgrader{Nomad: upgrade.NomadAPI(r.nomad.Client), Out: io.MultiWriter(t.Output(), r.logs),
		Ops: &volops.Client{KV: r.consul.Client.KV(), Txn: r.consul.Client.Txn(), Layout: layout, Who: "test", Accept: 30 * time.Second}}

	// The agent of this host: discovery from Nomad, verdicts to Consul, restore marks from the state dir.
	r.agentPort = testenv.FreePort(t)
	src := fmt.Sprintf("consul {\n  address = %q\n}\nlisten = \"127.0.0.1:%d\"\ninterval = \"500ms\"\nhead_max_age = \"20s\"\nstate_dir = %q\n",
		r.consul.Addr, r.agentPort, e.m.Paths.StateDir)
	cfg, err := config.Parse([]byte(src), "agent.hcl")
	if err != nil {
		t.Fatal(err)
	}
	alog := hclog.New(&hclog.LoggerOptions{Name: "agent", Level: hclog.Info, Output: io.MultiWriter(t.Output(), r.logs)})
	if r.agent, err = agent.New(cfg, alog, agent.Options{ID: "host-a", Consul: agent.ConsulAPI(r.consul.Client)}); err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "agent", r.agent.Run)
	w := discovery.New(discovery.Client(r.nomad.Client), "", alog.Named("discovery"), nil)
	testenv.Background(t, "discovery", func(ctx context.Context) error {
		w.Run(ctx, func(nodes []nodespec.Node) { r.agent.SetNodes(nodespec.SourceNomad, nodes) })
		return nil
	})

	// The agent's volume operations, on this host's Manager; the snapshot's data is the frozen disk's image.
	e.m.Consul, e.m.KV, e.m.Height = r.consul.Client.Agent(), r.consul.Client.KV(), r.agent.Height
	e.m.Freezer = func(v ebs.Volume) ebs.Freezer {
		return observingFreezer{inner: ebs.FSFreeze{Path: v.MountPath}, during: func() {
			img := filepath.Join(t.TempDir(), "snapshot.img")
			if err := copyDevice(devA, img); err != nil {
				t.Errorf("copy the frozen disk: %v", err)
			}
			r.snapshotImage = img
		}}
	}
	ops := &ebs.Ops{Manager: e.m, Volumes: []ebs.Volume{r.vol}}
	worker := &volops.Worker{KV: r.consul.Client.KV(), Txn: r.consul.Client.Txn(), Layout: layout, AgentID: "host-a",
		Holders: ops.Holders(), Handler: ops, Log: e.m.Log.Named("volume-ops")}
	testenv.Background(t, "volume operations", func(ctx context.Context) error { worker.Run(ctx); return nil })
	return r
}

func (r *upgradeRig) vars(extraArgs string) map[string]string {
	return map[string]string{
		"image": r.image, "host_volume": "geth-up", "network": "dev", "chain_id": "1337", "service": "eth-up",
		"p2p_port": strconv.Itoa(testenv.FreePort(r.e.t)), "cpu": "500", "memory": "1024", "min_healthy_time": "2s",
		"kill_timeout": "20s", "extra_args": extraArgs, "min_peers": "0",
		// The deployment is judged by this host's agent (health_check = "checks"): it listens on its own port here.
		"agent_port": strconv.Itoa(r.agentPort),
	}
}

// run does what `chainwarden job run geth -var ...` does: parse, plan, the pre-upgrade snapshots, register, watch.
func (r *upgradeRig) run(t *testing.T, vars map[string]string, force bool) ([]volops.Op, error) {
	t.Helper()
	ctx := ctxT(t, 4*time.Minute)
	spec, err := nomadjob.Load("geth", vars)
	if err != nil {
		t.Fatal(err)
	}
	job, err := r.jobs.Parse(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := r.jobs.Plan(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	ops, err := r.up.BeforeUpgrade(ctx, job, plan, force)
	if err != nil {
		return ops, err
	}
	evalID, err := r.jobs.Register(ctx, spec, job)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.jobs.Watch(ctx, evalID); err != nil {
		t.Fatalf("deployment: %v", err)
	}
	return ops, nil
}

func (r *upgradeRig) passing(t *testing.T) {
	t.Helper()
	r.consul.WaitCheck(t, "geth-geth-0", 90*time.Second, "passing")
}

// height is the geth node's head, read at the address the agent registered it with.
func (r *upgradeRig) height(t *testing.T) (uint64, error) {
	t.Helper()
	svc, _, err := r.consul.Client.Agent().Service("geth-geth-0", nil)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return devnet.BlockNumber(ctx, fmt.Sprintf("http://%s:%d", svc.Address, svc.Port))
}

// container is the docker container of the geth allocation.
func (r *upgradeRig) container(t *testing.T) string {
	t.Helper()
	stubs, _, err := r.nomad.Client.Jobs().Allocations("geth", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stubs {
		if s.ClientStatus == "running" {
			if id := strings.TrimSpace(r.docker.Run(t, "ps", "-q", "--filter", "name="+s.ID)); id != "" {
				return id
			}
		}
	}
	t.Fatal("no running geth container")
	return ""
}

// The whole story on one real host: geth on Nomad writes its chain to an EBS volume (a loop device); an upgrade
// first has the agent snapshot it (passing, drained, frozen) tagged as job version 0's restore point; a second
// upgrade while the node is not passing is refused unless forced; then `job revert -restore-volumes` stops the job,
// has the agent swap the volume for one restored from that snapshot (the old one detached, tagged, kept), and
// starts version 0 again on the restored data: geth continues from the snapshot's height, files written after the
// snapshot are not there, and the agent follows the restored node until it has caught up.
func TestUpgradeSnapshotAndRevertRestore(t *testing.T) {
	r := newUpgradeRig(t)
	e := r.e
	started := time.Now()
	if ops, err := r.run(t, r.vars(`["--dev.period=1", "--datadir.minfreedisk=0", "--gcmode=archive", "--state.scheme=hash"]`), false); err != nil || ops != nil {
		t.Fatalf("first run (a new job: nothing to snapshot): %v %v", ops, err)
	}
	r.passing(t)
	if err := os.WriteFile(filepath.Join(r.vol.MountPath, "before-upgrade"), []byte("v0"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("geth v0 passing %s after the run", time.Since(started).Round(100*time.Millisecond))
	testenv.Eventually(t, 90*time.Second, "a chain of 30 blocks", func() error {
		if h, err := r.height(t); err != nil || h < 30 {
			return fmt.Errorf("at %d (%v)", h, err)
		}
		return nil
	})
	r.passing(t)

	// Upgrade: the pre-upgrade snapshot first.
	upgraded := time.Now()
	ops, err := r.run(t, r.vars(`["--dev.period=1", "--datadir.minfreedisk=0", "--gcmode=archive", "--state.scheme=hash", "--verbosity=3"]`), false)
	if err != nil || len(ops) != 1 || ops[0].State != volops.Done || ops[0].Snapshot == "" {
		t.Fatalf("upgrade: %v %+v", err, ops)
	}
	t.Logf("upgrade with its pre-upgrade snapshot: %s", time.Since(upgraded).Round(100*time.Millisecond))
	snaps := e.ec2.Snapshots()
	if len(snaps) != 1 {
		t.Fatalf("snapshots %v", snaps)
	}
	tags := tagMap(snaps[0].Tags)
	if tags[ebs.TagJob] != "geth" || tags[ebs.TagJobVersion] != "0" || tags[ebs.TagPurpose] != "pre-upgrade" ||
		tags[ebs.TagNode] != "geth-geth-0" || tags[ebs.TagVolume] != "geth-up" || tags[ebs.TagHeight] != ops[0].Height {
		t.Fatalf("snapshot tags %v", tags)
	}
	snapHeight, _ := strconv.ParseUint(ops[0].Height, 10, 64)
	if snapHeight == 0 {
		t.Fatalf("snapshot height %q", ops[0].Height)
	}
	r.passing(t)
	if err := os.WriteFile(filepath.Join(r.vol.MountPath, "after-upgrade"), []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Not passing (its container paused): the next upgrade is refused, and nothing changes.
	ctr := r.container(t)
	r.docker.Run(t, "pause", ctr)
	r.consul.WaitCheck(t, "geth-geth-0", 30*time.Second, "critical")
	_, err = r.run(t, r.vars(`["--dev.period=1", "--datadir.minfreedisk=0", "--gcmode=archive", "--state.scheme=hash", "--verbosity=2"]`), false)
	if !errors.Is(err, upgrade.ErrNoRestorePoint) || !strings.Contains(err.Error(), "node is not passing") {
		t.Fatalf("upgrade of a critical node: %v", err)
	}
	if job, _, _ := r.nomad.Client.Jobs().Info("geth", nil); *job.Version != 1 || len(e.ec2.Snapshots()) != 1 {
		t.Fatalf("a refused upgrade changed something: version %d, %d snapshots", *job.Version, len(e.ec2.Snapshots()))
	}
	r.docker.Run(t, "unpause", ctr)
	r.passing(t)

	// The chain moves on past the snapshot.
	var beforeRevert uint64
	testenv.Eventually(t, 90*time.Second, "the chain 20 blocks past the snapshot", func() error {
		h, err := r.height(t)
		if err != nil || h < snapHeight+20 {
			return fmt.Errorf("at %d, snapshot at %d (%v)", h, snapHeight, err)
		}
		beforeRevert = h
		return nil
	})

	// Revert to version 0 on the restored volume.
	devB := losetup(t, r.snapshotImage)
	e.addDisk(devB)
	oldID := e.ec2.Volumes()[0].ID
	reverted := time.Now()
	evalID, err := r.up.Revert(ctxT(t, 5*time.Minute), "geth", upgrade.RevertOptions{RestoreVolumes: true})
	if err != nil {
		t.Fatalf("revert: %v", err)
	}
	if err := r.jobs.Watch(ctxT(t, 4*time.Minute), evalID); err != nil {
		t.Fatalf("reverted deployment: %v", err)
	}
	t.Logf("revert with the volume restored: %s", time.Since(reverted).Round(100*time.Millisecond))
	var restored uint64
	testenv.Eventually(t, 60*time.Second, "the restored geth answering", func() error {
		h, err := r.height(t)
		restored = h
		return err
	})
	// The frozen image is crash-consistent: geth recovers a few blocks before it (archive mode, hash scheme: every
	// block's state is on disk), far from a fresh chain and from where the chain was before the revert.
	if restored >= beforeRevert || restored+15 < snapHeight {
		t.Fatalf("restored geth at %d: the chain was at %d before the revert, the snapshot at %d", restored, beforeRevert, snapHeight)
	}
	t.Logf("snapshot at %d, chain at %d before the revert, restored geth at %d", snapHeight, beforeRevert, restored)
	if _, err := os.Stat(filepath.Join(r.vol.MountPath, "before-upgrade")); err != nil {
		t.Fatalf("a file from before the snapshot is gone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.vol.MountPath, "after-upgrade")); !os.IsNotExist(err) {
		t.Fatalf("a file written after the snapshot is on the restored volume: %v", err)
	}
	job, _, err := r.nomad.Client.Jobs().Info("geth", nil)
	if err != nil {
		t.Fatal(err)
	}
	if args := fmt.Sprint(job.TaskGroups[0].Tasks[0].Config["args"]); strings.Contains(args, "--verbosity=3") || (job.Stop != nil && *job.Stop) {
		t.Fatalf("the job runs %v (stop %v), not version 0's", args, job.Stop)
	}
	// The old volume is detached, tagged as replaced, and kept; the new one is restored from the snapshot.
	var oldVol, newVol ec2test.Volume
	for _, v := range e.ec2.Volumes() {
		if v.ID == oldID {
			oldVol = v
		} else {
			newVol = v
		}
	}
	if oldVol.ID == "" || oldVol.Attachment != nil || tagMap(oldVol.Tags)[ebs.TagVolume] != "geth-up@replaced" ||
		tagMap(oldVol.Tags)[ebs.TagReplacedBy] != snaps[0].ID {
		t.Fatalf("old volume %v %v", oldVol, oldVol.Tags)
	}
	if newVol.SnapshotID != snaps[0].ID || newVol.Attachment == nil || tagMap(newVol.Tags)[ebs.TagRestoredFrom] != snaps[0].ID {
		t.Fatalf("new volume %v", newVol)
	}
	// The agent followed the restored node (the restore mark) and, caught up, passes it.
	r.passing(t)
	testenv.Eventually(t, 30*time.Second, "the restore mark consumed", func() error {
		if _, err := os.Stat(filepath.Join(e.m.Paths.StateDir, "restored", "geth-geth-0.json")); !os.IsNotExist(err) {
			return fmt.Errorf("mark still there (%v)", err)
		}
		return nil
	})
	if !strings.Contains(r.logs.String(), "node restored from a snapshot: following it until it has caught up") {
		t.Fatal("the agent never followed the restored node")
	}
}

func losetup(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}
