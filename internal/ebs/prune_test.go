package ebs_test

import (
	"sort"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/fakes"
)

func ids(snaps []ec2test.Snapshot) []string {
	var out []string
	for _, s := range snaps {
		out = append(out, s.ID)
	}
	sort.Strings(out)
	return out
}

func equalSets(a, b []string) bool {
	a, b = append([]string(nil), a...), append([]string(nil), b...)
	sort.Strings(a)
	sort.Strings(b)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPruneKeepsNewestPerFamily(t *testing.T) {
	e := newEnv(t)
	fam, other := "ethereum/mainnet/geth", "cometbft/irishub-1/irita"
	now := time.Now()
	var geth []string
	for i := 0; i < 5; i++ { // geth[0] newest
		geth = append(geth, e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1,
			Started: now.Add(-time.Duration(i+1) * time.Hour), Tags: snapTags(fam)}))
	}
	pending := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, State: "pending", Started: now, Tags: snapTags(fam)})
	old := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-1000 * time.Hour), Tags: snapTags(other)})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-2000 * time.Hour), Tags: snapTags(other)})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-3000 * time.Hour)}) // not ours
	all := ids(e.ec2.Snapshots())
	vol := e.volume("geth-data")

	dry, err := e.m.Prune(ctxT(t, 10*time.Second), vol, 2, true)
	if err != nil {
		t.Fatal(err)
	}
	if !equalSets(dry.Deleted, geth[2:]) || !equalSets(dry.Kept, geth[:2]) {
		t.Fatalf("dry run %+v, want to delete %v", dry, geth[2:])
	}
	if got := ids(e.ec2.Snapshots()); !equalSets(got, all) || e.ec2.Calls("DeleteSnapshot") != 0 {
		t.Fatal("dry run deleted something")
	}

	res, err := e.m.Prune(ctxT(t, 10*time.Second), vol, 2, false)
	if err != nil {
		t.Fatal(err)
	}
	if !equalSets(res.Deleted, geth[2:]) {
		t.Fatalf("deleted %v, want %v", res.Deleted, geth[2:])
	}
	left := ids(e.ec2.Snapshots())
	for _, id := range append([]string{pending, old}, geth[:2]...) {
		found := false
		for _, l := range left {
			found = found || l == id
		}
		if !found {
			t.Fatalf("%s was deleted; left %v", id, left)
		}
	}
	if len(left) != len(all)-3 {
		t.Fatalf("left %d of %d", len(left), len(all))
	}

	// keep 0 still keeps the newest completed one: the only restore point is never deleted.
	res, err = e.m.Prune(ctxT(t, 10*time.Second), vol, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if !equalSets(res.Kept, []string{geth[0]}) || !equalSets(res.Deleted, []string{geth[1]}) {
		t.Fatalf("keep 0: %+v", res)
	}
	res, err = e.m.Prune(ctxT(t, 10*time.Second), vol, 1, false)
	if err != nil || len(res.Deleted) != 0 {
		t.Fatalf("the only completed snapshot: %+v %v", res, err)
	}
}

func TestListAndSchedulerDue(t *testing.T) {
	e := newEnv(t)
	vol := e.volume("geth-data")
	vol.SnapshotInterval = 6 * time.Hour
	now := time.Now().Truncate(time.Second) // as precise as EC2's times
	s := &ebs.Scheduler{Manager: e.m, Volumes: nil, Clock: fakes.NewClock(now)}
	due, err := s.Due(ctxT(t, 10*time.Second), vol)
	if err != nil || due > 0 {
		t.Fatalf("no snapshot yet: due in %v, %v; want now", due, err)
	}
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-2 * time.Hour), Tags: snapTags(ebs.Family(vol))})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-time.Hour), State: "error", Tags: snapTags(ebs.Family(vol))})
	due, err = s.Due(ctxT(t, 10*time.Second), vol)
	if err != nil || due != 4*time.Hour {
		t.Fatalf("due in %v, %v; want 4h (6h after the newest good one, 2h old)", due, err)
	}
	e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1, Tags: familyTags("geth-data", ebs.Family(vol))})
	e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1}) // not ours
	l, err := e.m.List(ctxT(t, 10*time.Second))
	if err != nil || len(l.Volumes) != 1 || len(l.Snapshots) != 2 || !l.Snapshots[0].StartTime.After(*l.Snapshots[1].StartTime) {
		t.Fatalf("list %+v %v", l, err)
	}
}
