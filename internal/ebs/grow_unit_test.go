package ebs_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
)

// fakeHostFS is a mounted filesystem on a disk as GrowIfNeeded sees it: the disk follows the EBS volume's size
// when a modification takes effect (the EC2 test server's OnModify), the filesystem follows the disk on GrowFS.
type fakeHostFS struct {
	mu                sync.Mutex
	dev               uint64 // the device number of the mount
	fsType            string
	diskBytes, fsSize uint64
	used              uint64
	grows             int
	capErr            error
}

func (f *fakeHostFS) Mount(string) (ebs.Mounted, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return ebs.Mounted{Dev: f.dev, FSType: f.fsType}, nil
}

func (f *fakeHostFS) Usage(string) (ebs.Usage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return ebs.Usage{Total: f.fsSize, Used: f.used, Avail: f.fsSize - f.used}, nil
}

func (f *fakeHostFS) DeviceNumber(string) (uint64, error) { return 7<<32 | 1, nil }

func (f *fakeHostFS) DeviceSize(string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.diskBytes, nil
}

func (f *fakeHostFS) FSSize(context.Context, string, string, string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fsSize, nil
}

func (f *fakeHostFS) GrowFS(context.Context, string, string, string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fsSize = f.diskBytes
	f.grows++
	return nil
}

func (f *fakeHostFS) CanGrowOnline(string) error { return f.capErr }

func (f *fakeHostFS) setDisk(gib int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.diskBytes = uint64(gib) << 30
}

var staticCreds = credentials.NewStaticCredentialsProvider("AKIDTEST", "not-a-secret", "")

type oneDevice struct{}

func (oneDevice) Find(string) (ebs.Device, error) { return ebs.Device{Path: "/dev/nvme1n1"}, nil }

// growEnv is a 100 GiB volume attached here whose 100 GiB filesystem is usedGiB full, on a fake clock.
func growEnv(t *testing.T, usedGiB uint64, grow ebs.Grow) (*env, *fakeHostFS, ebs.Volume) {
	t.Helper()
	e := newEnv(t)
	e.withFakeClock()
	e.m.Poll, e.m.MaxPoll = time.Second, 30*time.Second
	fs := &fakeHostFS{dev: 7<<32 | 1, fsType: "xfs", diskBytes: 100 << 30, fsSize: 100 << 30, used: usedGiB << 30}
	e.m.HostFS, e.m.Devices = fs, oneDevice{}
	e.ec2.OnModify = func(_ string, size int32) { fs.setDisk(size) }
	vol := e.volume("geth-data", func(v *ebs.Volume) { v.SizeGiB = 100; v.Grow = &grow })
	if _, err := e.m.EnsureAttached(ctxT(t, 30*time.Second), vol); err != nil {
		t.Fatal(err)
	}
	return e, fs, vol
}

func TestGrowNextSize(t *testing.T) {
	for _, c := range []struct {
		g          ebs.Grow
		size, want int32
		ok         bool
	}{
		{ebs.Grow{Factor: 1.2, MaxSizeGiB: 1000}, 100, 120, true},
		{ebs.Grow{Factor: 1.2, MaxSizeGiB: 1000}, 101, 122, true}, // rounded up
		{ebs.Grow{StepGiB: 50, MaxSizeGiB: 1000}, 100, 150, true},
		{ebs.Grow{StepGiB: 50, Factor: 1.1, MaxSizeGiB: 1000}, 900, 990, true}, // the larger of the two
		{ebs.Grow{StepGiB: 500, MaxSizeGiB: 1000}, 900, 1000, true},            // capped at the max
		{ebs.Grow{Factor: 1.01, MaxSizeGiB: 1000}, 1, 2, true},                 // at least 1 GiB more
		{ebs.Grow{StepGiB: 10, MaxSizeGiB: 1000}, 1000, 1000, false},
		{ebs.Grow{StepGiB: 10, MaxSizeGiB: 1000}, 1200, 1200, false}, // bigger than max already: never shrunk
	} {
		got, ok := c.g.Next(c.size)
		if got != c.want || ok != c.ok {
			t.Errorf("%+v.Next(%d) = %d, %v; want %d, %v", c.g, c.size, got, ok, c.want, c.ok)
		}
	}
}

// Past the threshold, the volume grows by the policy, the modification is polled (backing off) until it is
// optimizing, and the filesystem grows once the disk is bigger.
func TestGrowWaitsForTheModificationBackingOff(t *testing.T) {
	e, fs, vol := growEnv(t, 90, ebs.Grow{Threshold: 85, Factor: 1.5, MaxSizeGiB: 400, Interval: time.Minute})
	e.ec2.SetDelays(ec2test.Delays{Modify: 10 * time.Minute, Optimize: time.Hour})
	e.drive(time.Second)
	res, err := e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Modified || res.FromGiB != 100 || res.ToGiB != 150 || !res.FSGrown || res.FSAfter != 150<<30 || fs.grows != 1 {
		t.Fatalf("result %+v, %d filesystem grows", res, fs.grows)
	}
	if res.Took < 10*time.Minute {
		t.Fatalf("took %s of the fake clock, the modification alone takes 10m", res.Took)
	}
	// Polling every second for ten minutes would be 600 calls; backing off to 30 s it is a few dozen.
	if n := e.ec2.Calls("DescribeVolumesModifications"); n < 5 || n > 60 {
		t.Fatalf("%d DescribeVolumesModifications calls in 10 minutes", n)
	}
	if !strings.Contains(e.logs.String(), `status="modifying 0%"`) {
		t.Fatalf("no progress line while waiting:\n%s", e.logs.String())
	}
}

// Below the threshold nothing is asked of AWS; a modification someone else started is waited for, and if the
// grown disk brings the filesystem below the threshold, the volume is not modified again.
func TestGrowBelowThresholdAndAfterAnotherModification(t *testing.T) {
	e, fs, vol := growEnv(t, 50, ebs.Grow{Threshold: 85, StepGiB: 100, MaxSizeGiB: 400, Interval: time.Minute})
	before := e.ec2.Calls("DescribeVolumes")
	res, err := e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol)
	if err != nil || res.Modified || res.FSGrown || e.ec2.Calls("DescribeVolumes") != before {
		t.Fatalf("below the threshold: %+v %v (%d DescribeVolumes calls)", res, err, e.ec2.Calls("DescribeVolumes")-before)
	}

	fs.mu.Lock()
	fs.used = 95 << 30
	fs.mu.Unlock()
	id := e.ec2.Volumes()[0].ID
	e.ec2.SetDelays(ec2test.Delays{Modify: 5 * time.Minute})
	c := ec2.New(ec2.Options{Region: testRegion, BaseEndpoint: aws.String(e.ec2.URL), Credentials: staticCreds})
	if _, err := c.ModifyVolume(ctxT(t, 10*time.Second), &ec2.ModifyVolumeInput{VolumeId: aws.String(id), Size: aws.Int32(200)}); err != nil {
		t.Fatal(err)
	}
	e.drive(time.Second)
	res, err = e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol)
	if err != nil {
		t.Fatal(err)
	}
	if res.Modified || !res.FSGrown || res.FSAfter != 200<<30 || res.FromGiB != 200 || e.ec2.Calls("ModifyVolume") != 1 {
		t.Fatalf("after another modification: %+v, %d ModifyVolume calls", res, e.ec2.Calls("ModifyVolume"))
	}
}

// What stops a grow, each said clearly, with nothing modified that should not be: at max size; a mount that is not
// the volume's disk; the capability missing; the modification quota; a modification AWS fails.
func TestGrowRefusals(t *testing.T) {
	t.Run("at max size", func(t *testing.T) {
		e, _, vol := growEnv(t, 90, ebs.Grow{Threshold: 85, StepGiB: 10, MaxSizeGiB: 100, Interval: time.Minute})
		_, err := e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol)
		if !errors.Is(err, ebs.ErrAtMaxSize) || !strings.Contains(err.Error(), "90.0% full, past the grow threshold of 85%, and at 100 GiB it is at its max_size_gib 100") {
			t.Fatalf("at max: %v", err)
		}
		if e.ec2.Calls("ModifyVolume") != 0 {
			t.Fatal("modified past max_size_gib")
		}
	})
	t.Run("another device mounted there", func(t *testing.T) {
		e, fs, vol := growEnv(t, 90, ebs.Grow{Threshold: 85, StepGiB: 10, MaxSizeGiB: 200, Interval: time.Minute})
		fs.dev = 8<<32 | 3
		_, err := e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol)
		if err == nil || !strings.Contains(err.Error(), "mounted from another device") || e.ec2.Calls("ModifyVolume") != 0 {
			t.Fatalf("foreign mount: %v", err)
		}
	})
	t.Run("no capability", func(t *testing.T) {
		e, fs, vol := growEnv(t, 90, ebs.Grow{Threshold: 85, StepGiB: 10, MaxSizeGiB: 200, Interval: time.Minute})
		fs.capErr = errors.New("needs CAP_SYS_RESOURCE")
		_, err := e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol)
		if err == nil || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") || e.ec2.Calls("ModifyVolume") != 0 {
			t.Fatalf("no capability: %v", err)
		}
	})
	t.Run("modification quota", func(t *testing.T) {
		e, fs, vol := growEnv(t, 90, ebs.Grow{Threshold: 85, StepGiB: 10, MaxSizeGiB: 200, Interval: time.Minute})
		e.ec2.Fail("ModifyVolume", "VolumeModificationRateExceeded", 1)
		_, err := e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol)
		if !errors.Is(err, ebs.ErrLimit) || !strings.Contains(err.Error(), "grow from 100 to 110 GiB") || fs.grows != 0 {
			t.Fatalf("quota: %v", err)
		}
	})
	t.Run("modification failed", func(t *testing.T) {
		e, fs, vol := growEnv(t, 90, ebs.Grow{Threshold: 85, StepGiB: 10, MaxSizeGiB: 200, Interval: time.Minute})
		e.ec2.SetDelays(ec2test.Delays{Modify: time.Hour})
		done := make(chan error, 1)
		go func() { _, err := e.m.GrowIfNeeded(ctxT(t, 30*time.Second), vol); done <- err }()
		eventually(t, "the modification", func() bool { return e.ec2.Volumes()[0].Modification != nil })
		e.ec2.FailModification(e.ec2.Volumes()[0].ID, "internal failure, try again")
		e.drive(time.Second)
		if err := <-done; err == nil || !strings.Contains(err.Error(), "to 110 GiB failed: internal failure, try again") || fs.grows != 0 {
			t.Fatalf("failed modification: %v", err)
		}
	})
}
