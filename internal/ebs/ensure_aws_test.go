package ebs_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
)

func familyTags(name, family string) []ec2test.Tag {
	parts := strings.Split(family, "/")
	tag := func(k, v string) ec2test.Tag { return ec2test.Tag{Key: k, Value: v} }
	return []ec2test.Tag{tag(ebs.TagVolume, name), tag(ebs.TagFamily, family), tag(ebs.TagChain, parts[0]),
		tag(ebs.TagNetwork, parts[1]), tag(ebs.TagClient, parts[2])}
}

func snapTags(family string) []ec2test.Tag {
	return familyTags("whatever", family)[1:]
}

func TestEnsureCreatesBlankVolumeWithConfiguredParameters(t *testing.T) {
	e := newEnv(t)
	vol := e.volume("geth-data")
	res, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), vol)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused || res.RestoredFrom != "" {
		t.Fatalf("result %+v: want a new blank volume", res)
	}
	vols := e.ec2.Volumes()
	if len(vols) != 1 {
		t.Fatalf("volumes: %v", vols)
	}
	v := vols[0]
	if v.ID != res.VolumeID || v.AZ != testAZ || v.Size != 1 || v.Type != "gp3" || v.IOPS != 3000 ||
		v.Throughput != 125 || !v.Encrypted || v.SnapshotID != "" || v.ClientToken == "" {
		t.Fatalf("volume %+v does not match the config", v)
	}
	if v.Attachment == nil || v.Attachment.InstanceID != testInstance || v.Attachment.State != "attached" ||
		!strings.HasPrefix(v.Attachment.Device, "/dev/sd") {
		t.Fatalf("attachment %+v", v.Attachment)
	}
	tags := tagMap(v.Tags)
	if tags[ebs.TagVolume] != "geth-data" || tags[ebs.TagFamily] != "ethereum/mainnet/geth" || tags["Name"] != "chainwarden-geth-data" {
		t.Fatalf("tags %v", tags)
	}
	// Nothing secret went over the wire in a form field, and the client used IMDSv2 only.
	for _, r := range e.ec2.Requests() {
		if strings.Contains(r, "not-a-secret") {
			t.Fatalf("secret key sent in a request body: %s", r)
		}
	}
	if e.imds.Refused() != 0 {
		t.Fatalf("%d IMDSv1 requests", e.imds.Refused())
	}

	// Again: the attached volume is reused; nothing is created or attached.
	creates, attaches := e.ec2.Calls("CreateVolume"), e.ec2.Calls("AttachVolume")
	res2, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), vol)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Reused || res2.VolumeID != res.VolumeID {
		t.Fatalf("second ensure %+v, want reuse of %s", res2, res.VolumeID)
	}
	if e.ec2.Calls("CreateVolume") != creates || e.ec2.Calls("AttachVolume") != attaches {
		t.Fatal("second ensure called CreateVolume or AttachVolume")
	}
}

func TestEnsureRestoresNewestCompletedSnapshotOfFamily(t *testing.T) {
	e := newEnv(t)
	now := time.Now()
	fam := "ethereum/mainnet/geth"
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-72 * time.Hour), Tags: snapTags(fam)})
	want := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 5, Started: now.Add(-24 * time.Hour),
		Tags: append(snapTags(fam), ec2test.Tag{Key: ebs.TagHeight, Value: "19000000"})})
	// Newer, but not eligible: pending; another family (other client, other network); another region; another owner.
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-time.Hour), State: "pending", Tags: snapTags(fam)})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-2 * time.Hour), Tags: snapTags("ethereum/mainnet/erigon")})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-2 * time.Hour), Tags: snapTags("ethereum/sepolia/geth")})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: "us-east-1", VolumeSize: 1, Started: now.Add(-2 * time.Hour), Tags: snapTags(fam)})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: now.Add(-2 * time.Hour), Owner: "999999999999", Tags: snapTags(fam)})

	res, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), e.volume("geth-data"))
	if err != nil {
		t.Fatal(err)
	}
	if res.RestoredFrom != want {
		t.Fatalf("restored from %q, want the newest completed one of the family in the region %q", res.RestoredFrom, want)
	}
	vols := e.ec2.Volumes()
	if len(vols) != 1 || vols[0].SnapshotID != want || vols[0].Size != 5 || vols[0].AZ != testAZ {
		t.Fatalf("volumes %v: want one from %s, 5 GiB (the snapshot is bigger than size_gib 1) in %s", vols, want, testAZ)
	}
	if tagMap(vols[0].Tags)[ebs.TagRestoredFrom] != want {
		t.Fatalf("tags %v", vols[0].Tags)
	}
}

func TestEnsureReusesAvailableVolumeOfThisAZ(t *testing.T) {
	e := newEnv(t)
	fam := "ethereum/mainnet/geth"
	old := time.Now().Add(-time.Hour)
	want := e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1, Created: old, Tags: familyTags("geth-data", fam)})
	// Not to be taken: newer but in another AZ; in use by another instance; another family; another volume name.
	e.ec2.PutVolume(ec2test.Volume{AZ: "eu-west-1a", Size: 1, Tags: familyTags("geth-data", fam)})
	e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1, State: "in-use", Tags: familyTags("geth-data", fam),
		Attachment: &ec2test.Attachment{InstanceID: "i-0other000000000000", Device: "/dev/sdf", State: "attached"}})
	e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1, Tags: familyTags("geth-data", "ethereum/mainnet/erigon")})
	e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1, Tags: familyTags("geth-other", fam)})
	e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Tags: snapTags(fam)})

	res, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), e.volume("geth-data"))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Reused || res.VolumeID != want {
		t.Fatalf("result %+v, want reuse of %s", res, want)
	}
	if n := e.ec2.Calls("CreateVolume"); n != 0 {
		t.Fatalf("CreateVolume called %d times", n)
	}
	for _, v := range e.ec2.Volumes() {
		if v.ID != want && v.Attachment != nil && v.Attachment.InstanceID == testInstance {
			t.Fatalf("attached %v too", v)
		}
	}
}

// barrier holds CreateVolume until n callers arrived, so concurrent ensures really race on it.
type barrier struct {
	ebs.EC2API
	wg *sync.WaitGroup
}

func (b barrier) CreateVolume(ctx context.Context, in *ec2.CreateVolumeInput, opts ...func(*ec2.Options)) (*ec2.CreateVolumeOutput, error) {
	b.wg.Done()
	b.wg.Wait()
	return b.EC2API.CreateVolume(ctx, in, opts...)
}

func TestConcurrentEnsuresCreateOneVolume(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	wg.Add(2)
	e.m.EC2 = barrier{EC2API: e.m.EC2, wg: &wg}
	vol := e.volume("geth-data")
	var mu sync.Mutex
	var ids []string
	var errs []error
	var done sync.WaitGroup
	for i := 0; i < 2; i++ {
		done.Add(1)
		go func() {
			defer done.Done()
			m := *e.m // separate managers, no shared lock: only the ClientToken keeps them to one volume
			res, err := m.EnsureAttached(ctxT(t, 30*time.Second), vol)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			ids = append(ids, res.VolumeID)
		}()
	}
	done.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if n := e.ec2.Calls("CreateVolume"); n != 2 {
		t.Fatalf("CreateVolume called %d times, want 2 (both raced)", n)
	}
	vols := e.ec2.Volumes()
	if len(vols) != 1 || ids[0] != ids[1] || ids[0] != vols[0].ID {
		t.Fatalf("volumes %v, results %v: want exactly one volume", vols, ids)
	}
	if vols[0].Attachment == nil || vols[0].Attachment.State != "attached" {
		t.Fatalf("volume %v not attached", vols[0])
	}

}

func TestEnsureRetriesThrottlingAndReportsErrors(t *testing.T) {
	e := newEnv(t)
	vol := e.volume("geth-data")

	// Throttled twice, then fine: the SDK retries and ensure succeeds.
	e.ec2.Fail("DescribeVolumes", "RequestLimitExceeded", 2)
	e.ec2.Fail("CreateVolume", "InternalError", 1)
	if _, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), vol); err != nil {
		t.Fatalf("throttling twice should be retried: %v", err)
	}
	if n := e.ec2.Calls("CreateVolume"); n != 2 {
		t.Fatalf("CreateVolume called %d times, want 2 (one InternalError retried)", n)
	}
	if len(e.ec2.Volumes()) != 1 {
		t.Fatalf("volumes after a retried CreateVolume: %v (the retry must reuse the token)", e.ec2.Volumes())
	}

	// Throttled for good: reported after the configured attempts, as ErrThrottled, naming the AWS code.
	other := e.volume("geth-b")
	before := e.ec2.Calls("DescribeSnapshots")
	e.ec2.Fail("DescribeSnapshots", "RequestLimitExceeded", 100)
	_, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), other)
	t.Logf("reported: %v", err)
	if !errors.Is(err, ebs.ErrThrottled) {
		t.Fatalf("error %v, want ErrThrottled", err)
	}
	for _, s := range []string{"DescribeSnapshots", "RequestLimitExceeded", "after 4 attempts"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if n := e.ec2.Calls("DescribeSnapshots") - before; n != 4 {
		t.Errorf("DescribeSnapshots tried %d times, want 4", n)
	}

	// Access denied is not retried and says so.
	e2 := newEnv(t)
	e2.ec2.Fail("DescribeVolumes", "UnauthorizedOperation", 1)
	_, err = e2.m.EnsureAttached(ctxT(t, 30*time.Second), e2.volume("geth-data"))
	t.Logf("reported: %v", err)
	if !errors.Is(err, ebs.ErrDenied) || !strings.Contains(err.Error(), "IAM") {
		t.Fatalf("error %v, want ErrDenied mentioning IAM", err)
	}
	if n := e2.ec2.Calls("DescribeVolumes"); n != 1 {
		t.Fatalf("UnauthorizedOperation retried: %d calls", n)
	}
}

// While AWS takes its time, ensure says what it waits for, on the Manager's clock.
func TestEnsureLogsProgressWhileWaiting(t *testing.T) {
	e := newEnv(t)
	clk := e.withFakeClock()
	e.ec2.SetDelays(ec2test.Delays{Create: 10 * time.Minute, Attach: time.Minute})
	type result struct {
		res *ebs.EnsureResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), e.volume("geth-data"))
		done <- result{res, err}
	}()
	// The SDK's waiter polls the volume, still creating; ten seconds on, ensure says so.
	eventually(t, "the waiter polling the new volume", func() bool {
		return e.ec2.Calls("CreateVolume") == 1 && e.ec2.Calls("DescribeVolumes") >= 3
	})
	if strings.Contains(e.logs.String(), "waiting:") {
		t.Fatalf("a progress line before ProgressEvery passed:\n%s", e.logs.String())
	}
	clk.Advance(e.m.ProgressEvery)
	eventually(t, "a progress line", func() bool {
		return strings.Contains(e.logs.String(), `to be available or in-use" status=creating elapsed=10s timeout=10s`)
	})
	clk.Advance(10 * time.Minute) // available: ensure attaches it, then polls the attachment on the fake clock
	clk.BlockUntil(1)
	clk.Advance(time.Minute)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !strings.Contains(e.logs.String(), `done waiting: for="volume `+r.res.VolumeID+` to be attached" elapsed=1m0s`) {
		t.Fatalf("no line when the attachment was done:\n%s", e.logs.String())
	}
}

// Every wait is bounded: a device that never appears ends ensure with ErrTimeout after Timeouts.Device (of fake
// time).
func TestEnsureBoundsEveryWait(t *testing.T) {
	e := newEnv(t)
	clk := e.withFakeClock()
	e.m.Poll = time.Second
	e.m.Timeouts.Device = 2 * time.Minute
	e.drive(e.m.Poll)
	start := clk.Now()
	// No disk queued: the volume attaches but its device never appears.
	_, err := e.m.Ensure(ctxT(t, 30*time.Second), e.volume("geth-data"))
	if !errors.Is(err, ebs.ErrTimeout) || !strings.Contains(err.Error(), "block device of vol-") {
		t.Fatalf("error %v, want a device timeout", err)
	}
	if waited := clk.Now().Sub(start); waited < 2*time.Minute || waited > 2*time.Minute+2*time.Second {
		t.Fatalf("gave up after %s of the Manager's time, want 2m", waited)
	}
}

func TestEnsureWaitsForVolumeBeingCreated(t *testing.T) {
	e := newEnv(t)
	// A volume being created (by another process) is found and waited for.
	id := e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1, State: "creating", Tags: familyTags("geth-data", "ethereum/mainnet/geth")})
	type result struct {
		res *ebs.EnsureResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), e.volume("geth-data"))
		done <- result{res, err}
	}()
	eventually(t, "ensure polling the creating volume", func() bool { return e.ec2.Calls("DescribeVolumes") >= 4 })
	select {
	case r := <-done:
		t.Fatalf("ensure returned while the volume was creating: %+v %v", r.res, r.err)
	default:
	}
	v := e.ec2.Volumes()[0]
	v.State = "available"
	e.ec2.PutVolume(v)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.res.VolumeID != id || e.ec2.Calls("CreateVolume") != 0 {
		t.Fatalf("res %+v, creates %d: want the creating volume %s waited for", r.res, e.ec2.Calls("CreateVolume"), id)
	}
}

// Paginated answers are read to the end: a volume and snapshots beyond the first page are found.
func TestEnsureReadsEveryPage(t *testing.T) {
	e := newEnv(t)
	e.m.PageSize = 5
	fam := "ethereum/mainnet/geth"
	start := time.Now().Add(-100 * time.Hour)
	for i := 0; i < 12; i++ { // other volumes and snapshots fill the first pages
		e.ec2.PutVolume(ec2test.Volume{AZ: testAZ, Size: 1, Created: start.Add(time.Duration(i) * time.Minute),
			Tags: familyTags("other", fam)})
		e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: start.Add(time.Duration(i) * time.Minute),
			Tags: snapTags("ethereum/mainnet/erigon")})
	}
	want := e.ec2.PutSnapshot(ec2test.Snapshot{Region: testRegion, VolumeSize: 1, Started: start.Add(time.Hour), Tags: snapTags(fam)})
	res, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), e.volume("geth-data"))
	if err != nil {
		t.Fatal(err)
	}
	if res.RestoredFrom != want {
		t.Fatalf("restored from %q, want %s (on the last page)", res.RestoredFrom, want)
	}
	l, err := e.m.List(ctxT(t, 10*time.Second))
	if err != nil || len(l.Volumes) != 13 || len(l.Snapshots) != 13 {
		t.Fatalf("list: %d volumes, %d snapshots (%v), want 13 and 13", len(l.Volumes), len(l.Snapshots), err)
	}
}

func TestIMDSv2Only(t *testing.T) {
	e := newEnv(t)
	resp, err := http.Get(e.imds.URL + "/latest/dynamic/instance-identity/document")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token-less GET answered %d", resp.StatusCode)
	}
	if e.imds.Gets() == 0 {
		t.Fatal("Connect did not read the identity document")
	}
}
