package ebs_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/ebs"
	"github.com/chainwarden/chainwarden/internal/ec2test"
	"github.com/chainwarden/chainwarden/internal/fakes"
	"github.com/chainwarden/chainwarden/internal/imdstest"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

const (
	testInstance = "i-0abc1234567890def"
	testAZ       = "eu-west-1b"
	testRegion   = "eu-west-1"
)

// env is one fake instance: the EC2 and IMDS test servers, a Manager connected to them through the real SDK
// clients, and (for root tests) loop devices standing in for the EBS disks, handed out at attach time through
// by-id links in a temp dir, as udev would on Nitro.
type env struct {
	t    *testing.T
	ec2  *ec2test.Server
	imds *imdstest.Server
	m    *ebs.Manager
	dir  string
	byID string
	logs *syncBuffer
	clk  *fakes.Clock // nil: the wall clock

	mu    sync.Mutex
	disks []string          // loop devices for the next attached volumes, in order
	disk  map[string]string // volume id -> loop device
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newEnv(t *testing.T, opts ...func(*ebs.AWSOptions)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), disk: map[string]string{}, logs: &syncBuffer{}}
	// No delays: a created volume is available, an attachment attached, a snapshot completed at the next request.
	// Tests that need something to take time use a fake clock (withFakeClock) and move it themselves.
	e.ec2 = ec2test.New(ec2test.Delays{})
	t.Cleanup(e.ec2.Close)
	e.ec2.AddInstance(testInstance, testAZ)
	e.ec2.AddInstance("i-0other000000000000", testAZ)
	e.imds = imdstest.New(imdstest.Identity{InstanceID: testInstance, AvailabilityZone: testAZ})
	t.Cleanup(e.imds.Close)
	e.byID = filepath.Join(e.dir, "by-id")
	if err := os.MkdirAll(e.byID, 0o755); err != nil {
		t.Fatal(err)
	}
	e.ec2.OnAttach = e.onAttach
	o := ebs.AWSOptions{
		EC2Endpoint: e.ec2.URL, IMDSEndpoint: e.imds.URL, MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTEST", "not-a-secret", ""),
	}
	for _, f := range opts {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, host, err := ebs.Connect(ctx, o)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if host != (ebs.Host{InstanceID: testInstance, AZ: testAZ, Region: testRegion}) {
		t.Fatalf("host from IMDS = %+v", host)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "ebs", Level: hclog.Debug,
		Output: io.MultiWriter(t.Output(), e.logs)})
	e.m = &ebs.Manager{
		EC2: client, Host: host, Log: log,
		Devices: ebs.NVMe{ByIDDir: e.byID, SysBlockDir: filepath.Join(e.dir, "sys-block")},
		Paths: ebs.Paths{Fstab: filepath.Join(e.dir, "fstab"), NomadConfigDir: filepath.Join(e.dir, "nomad.d"),
			LockDir: filepath.Join(e.dir, "lock"), StateDir: filepath.Join(e.dir, "state")},
		Timeouts:      ebs.Timeouts{Lock: 30 * time.Second, Create: 10 * time.Second, Attach: 10 * time.Second, Device: 5 * time.Second, Snapshot: 20 * time.Second, Call: 10 * time.Second},
		Poll:          5 * time.Millisecond,
		ProgressEvery: 10 * time.Second,
		BootID:        "boot-1",
	}
	if err := os.MkdirAll(filepath.Join(e.dir, "sys-block"), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// withFakeClock puts the Manager's waits and the EC2 server's transitions on a fake clock the test moves.
func (e *env) withFakeClock() *fakes.Clock {
	e.clk = fakes.NewClock(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	e.ec2.Clock = e.clk
	e.m.Clock = e.clk
	return e.clk
}

// drive advances the fake clock by step whenever something waits on it, until the test ends: the Manager's
// polls then run one after the other in no real time, while fake time passes as it would.
func (e *env) drive(step time.Duration) {
	stop := make(chan struct{})
	done := make(chan struct{})
	e.t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if e.clk.Waiters() > 0 {
				e.clk.Advance(step)
			} else {
				time.Sleep(100 * time.Microsecond) // poll for a waiter
			}
		}
	}()
}

// eventually polls cond until it holds, failing the test after a generous deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // a poll interval
	}
}

// integration skips tests that start real components or need root under -short.
func integration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test (real components or root); skipped with -short")
	}
}

// onAttach plays udev: the volume's by-id link appears, pointing at the next loop device (or the one it had).
func (e *env) onAttach(volumeID, _, _ string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	dev, ok := e.disk[volumeID]
	if !ok {
		if len(e.disks) == 0 {
			return // no disk for it: the device never appears
		}
		dev, e.disks = e.disks[0], e.disks[1:]
		e.disk[volumeID] = dev
	}
	link := filepath.Join(e.byID, "nvme-Amazon_Elastic_Block_Store_"+ebs.Serial(volumeID))
	_ = os.Remove(link)
	if err := os.Symlink(dev, link); err != nil {
		e.t.Errorf("by-id link: %v", err)
	}
}

// addDisk queues a loop device for the next attached volume.
func (e *env) addDisk(dev string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.disks = append(e.disks, dev)
}

func (e *env) volume(name string, mod ...func(*ebs.Volume)) ebs.Volume {
	e.t.Helper()
	iops, throughput, encrypted := int32(3000), int32(125), true
	v := ebs.Volume{Name: name, Chain: "ethereum", Network: "mainnet", Client: "geth", Node: "geth-a", SizeGiB: 1,
		Type: "gp3", IOPS: &iops, Throughput: &throughput, Encrypted: &encrypted,
		MountPath: filepath.Join(e.dir, "mnt", name), DrainWait: 100 * time.Millisecond}
	for _, f := range mod {
		f(&v)
	}
	if err := v.Validate().Err(); err != nil {
		e.t.Fatalf("volume: %v", err)
	}
	return v
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// loopDevice makes a sparse file of sizeMiB and a loop device over it, removed when the test ends.
func loopDevice(t *testing.T, sizeMiB int) string {
	t.Helper()
	dev, _ := loopDeviceFile(t, sizeMiB)
	return dev
}

// loopDeviceFile is loopDevice that also returns the backing file (to grow it in place).
func loopDeviceFile(t *testing.T, sizeMiB int) (dev, img string) {
	t.Helper()
	integration(t)
	testenv.RequireRoot(t)
	for _, tool := range []string{"losetup", "blkid", "mkfs.xfs", "mkfs.ext4", "mount", "umount", "fsfreeze"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s not installed", tool)
		}
	}
	img = filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev, img
}

// cleanupMount unmounts path at the end of the test (registered after the loop device, so it runs before).
func cleanupMount(t *testing.T, path string) {
	t.Cleanup(func() {
		_ = exec.Command("fsfreeze", "-u", path).Run()
		for i := 0; i < 20; i++ {
			if !isMounted(path) {
				return
			}
			if out, err := exec.Command("umount", path).CombinedOutput(); err != nil {
				t.Logf("umount %s: %v: %s", path, err, out)
				time.Sleep(100 * time.Millisecond) // busy: retry a little later
			}
		}
	})
}

func isMounted(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

func mountFSType(path string) string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == path {
			for i := range f {
				if f[i] == "-" && i+1 < len(f) {
					return f[i+1]
				}
			}
		}
	}
	return ""
}

func tagMap(tags []ec2test.Tag) map[string]string {
	m := map[string]string{}
	for _, t := range tags {
		m[t.Key] = t.Value
	}
	return m
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
