package ebs

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/clock"
	"github.com/chainwarden/chainwarden/internal/heads"
	"github.com/chainwarden/chainwarden/internal/registry"
)

// ConsulAgent is the part of the local Consul agent's API Snapshot uses; *consulapi.Agent satisfies it.
type ConsulAgent interface {
	ChecksWithFilterOpts(filter string, q *consulapi.QueryOptions) (map[string]*consulapi.AgentCheck, error)
	Service(serviceID string, q *consulapi.QueryOptions) (*consulapi.AgentService, *consulapi.QueryMeta, error)
	EnableServiceMaintenanceOpts(serviceID, reason string, q *consulapi.QueryOptions) error
	DisableServiceMaintenanceOpts(serviceID string, q *consulapi.QueryOptions) error
}

// ConsulKV is the Consul KV call Snapshot makes, to read the node's head; *consulapi.KV satisfies it.
type ConsulKV interface {
	Get(key string, q *consulapi.QueryOptions) (*consulapi.KVPair, *consulapi.QueryMeta, error)
}

// Freezer makes a volume's contents consistent for a snapshot; thaw undoes it and must be called.
type Freezer interface {
	Freeze(ctx context.Context) (thaw func(context.Context) error, err error)
	String() string
}

// FSFreeze freezes the filesystem mounted at Path (fsfreeze -f): writes block, the on-disk state is consistent,
// the writer keeps running. Path must be a mount point, or fsfreeze would freeze the filesystem holding it.
type FSFreeze struct{ Path string }

func (f FSFreeze) String() string { return "fsfreeze " + f.Path }

// Freeze implements Freezer.
func (f FSFreeze) Freeze(ctx context.Context) (func(context.Context) error, error) {
	ms, err := mounts()
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	mounted := false
	for _, e := range ms {
		if e.MountPoint == f.Path {
			mounted = true
		}
	}
	if !mounted {
		return nil, fmt.Errorf("fsfreeze: %s is not a mount point (refusing to freeze the filesystem holding it)", f.Path)
	}
	if out, err := run(ctx, time.Minute, "fsfreeze", "-f", f.Path); err != nil {
		return nil, fmt.Errorf("fsfreeze -f %s: %w: %s", f.Path, err, out)
	}
	return func(ctx context.Context) error {
		if out, err := run(ctx, time.Minute, "fsfreeze", "-u", f.Path); err != nil {
			return fmt.Errorf("fsfreeze -u %s: %w: %s (thaw it by hand: fsfreeze -u %s)", f.Path, err, out, f.Path)
		}
		return nil
	}, nil
}

// Commands stops the writer with Stop and starts it again with Start (e.g. `nomad alloc stop`/`systemctl`).
type Commands struct{ Stop, Start []string }

func (c Commands) String() string { return "stop/start commands" }

// Freeze implements Freezer.
func (c Commands) Freeze(ctx context.Context) (func(context.Context) error, error) {
	if out, err := runCommand(ctx, c.Stop); err != nil {
		return nil, fmt.Errorf("stop_command %q: %w: %s", c.Stop, err, out)
	}
	return func(ctx context.Context) error {
		if out, err := runCommand(ctx, c.Start); err != nil {
			return fmt.Errorf("start_command %q: %w: %s", c.Start, err, out)
		}
		return nil
	}, nil
}

func runCommand(ctx context.Context, argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty command")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// NoFreeze takes a crash-consistent snapshot of a running writer.
type NoFreeze struct{}

func (NoFreeze) String() string { return "no freeze" }

// Freeze implements Freezer.
func (NoFreeze) Freeze(context.Context) (func(context.Context) error, error) {
	return func(context.Context) error { return nil }, nil
}

func (m *Manager) freezer(vol Volume) Freezer {
	if m.Freezer != nil {
		return m.Freezer(vol)
	}
	switch vol.Freeze {
	case "none":
		return NoFreeze{}
	case "command":
		return Commands{Stop: vol.StopCommand, Start: vol.StartCommand}
	default:
		return FSFreeze{Path: vol.MountPath}
	}
}

// SnapshotResult says what Snapshot did.
type SnapshotResult struct {
	SnapshotID    string
	VolumeID      string
	Height        string
	ClientVersion string
	State         string
	Progress      string
}

// Snapshot snapshots the volume of a passing node: Consul maintenance on the node's service (so proxies drop it),
// DrainWait, freeze the writer, CreateSnapshot tagged with the family, client version and height, then thaw and
// leave maintenance at once (always, also on failure) and, with wait, report progress until the snapshot is
// completed. A node whose check is not passing is refused with ErrNotPassing.
func (m *Manager) Snapshot(ctx context.Context, vol Volume, wait bool) (res *SnapshotResult, err error) {
	return m.SnapshotWith(ctx, vol, SnapshotOptions{Wait: wait})
}

// SnapshotOptions are Snapshot's choices.
type SnapshotOptions struct {
	Wait bool              // until the snapshot is completed
	Tags map[string]string // more tags (the pre-upgrade point's job and version); a Name here replaces the default
}

// SnapshotWith is Snapshot with more tags.
func (m *Manager) SnapshotWith(ctx context.Context, vol Volume, o SnapshotOptions) (res *SnapshotResult, err error) {
	m.defaults()
	wait := o.Wait
	if vol.Node == "" {
		return nil, fmt.Errorf("volume %s: node is not set: no Consul check to tell whether the node is synced", vol.Name)
	}
	if m.Consul == nil || m.KV == nil {
		return nil, errors.New("snapshot needs the local Consul agent and its KV store")
	}
	log := m.Log.With("volume", vol.Name, "node", vol.Node)
	q := (&consulapi.QueryOptions{}).WithContext(ctx)
	checks, err := m.Consul.ChecksWithFilterOpts("", q)
	if err != nil {
		return nil, fmt.Errorf("read checks from the local Consul agent: %w", err)
	}
	check := checks[registry.CheckID(vol.Node)]
	if check == nil {
		return nil, fmt.Errorf("node %s: no check %q on the local Consul agent: %w", vol.Node, registry.CheckID(vol.Node), ErrNotPassing)
	}
	if check.Status != consulapi.HealthPassing {
		return nil, fmt.Errorf("node %s is %s (%s): %w", vol.Node, check.Status, check.Output, ErrNotPassing)
	}
	res = &SnapshotResult{Height: "unknown", ClientVersion: "unknown"}
	svc, _, err := m.Consul.Service(vol.Node, q)
	if err != nil {
		return nil, fmt.Errorf("read service %s from the local Consul agent: %w", vol.Node, err)
	}
	if v := svc.Meta["client_version"]; v != "" {
		res.ClientVersion = v
	}
	service := vol.Service
	if service == "" {
		service = svc.Service
	}
	// The height is read as data, not from the check's text: the agent's own (when the agent runs this), else the
	// head it published for the node (a head publisher's).
	var own bool
	if m.Height != nil {
		var h uint64
		if h, own = m.Height(vol.Node); own {
			res.Height = strconv.FormatUint(h, 10)
		}
	}
	if !own {
		head, ok, err := heads.Read(ctx, m.KV, m.KVLayout, service, vol.Node)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", vol.Node, err)
		}
		if ok {
			res.Height = strconv.FormatUint(head.Height, 10)
		} else {
			log.Warn("no height of the node from its agent nor in Consul KV: the snapshot's height is unknown", "key", m.KVLayout.Head(service, vol.Node))
		}
	}
	v, err := m.attachedVolume(ctx, vol)
	if err != nil {
		return nil, err
	}
	res.VolumeID = aws.ToString(v.VolumeId)

	// Drain. Everything from here on is undone by resume, which runs exactly once, also on failure or panic.
	reason := fmt.Sprintf("chainwarden: snapshot of volume %s (%s)", vol.Name, res.VolumeID)
	if err := m.Consul.EnableServiceMaintenanceOpts(vol.Node, reason, q); err != nil {
		return nil, fmt.Errorf("enable Consul maintenance on %s: %w", vol.Node, err)
	}
	log.Info("drained: Consul maintenance on", "service_id", vol.Node)
	var thaw func(context.Context) error
	resumed := false
	resume := func() error {
		if resumed {
			return nil
		}
		resumed = true
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		var errs []error
		if thaw != nil {
			if err := thaw(rctx); err != nil {
				log.Error("could not resume the writer", "error", err)
				errs = append(errs, err)
			} else {
				log.Info("writer resumed")
			}
		}
		if err := m.Consul.DisableServiceMaintenanceOpts(vol.Node, (&consulapi.QueryOptions{}).WithContext(rctx)); err != nil {
			log.Error("could not leave Consul maintenance", "service_id", vol.Node, "error", err)
			errs = append(errs, fmt.Errorf("disable Consul maintenance on %s: %w", vol.Node, err))
		} else {
			log.Info("Consul maintenance off", "service_id", vol.Node)
		}
		return errors.Join(errs...)
	}
	defer func() {
		if rerr := resume(); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	if vol.DrainWait > 0 {
		log.Info("waiting for proxies to drop the node", "drain_wait", vol.DrainWait)
		if err := clock.Sleep(ctx, m.Clock, vol.DrainWait); err != nil {
			return nil, fmt.Errorf("drain wait: %w", err)
		}
	}
	fr := m.freezer(vol)
	thaw, err = fr.Freeze(ctx)
	if err != nil {
		return nil, fmt.Errorf("freeze the writer (%s): %w", fr, err)
	}
	log.Info("writer frozen", "how", fr.String())
	tags := familyTags(vol)
	tags[TagName] = fmt.Sprintf("chainwarden-%s-%s", vol.Name, res.Height)
	tags[TagClientVersion] = res.ClientVersion
	tags[TagHeight] = res.Height
	tags[TagNode] = vol.Node
	for k, v := range o.Tags {
		tags[k] = v
	}
	out, err := call(ctx, m, "CreateSnapshot", func(ctx context.Context) (*ec2.CreateSnapshotOutput, error) {
		return m.EC2.CreateSnapshot(ctx, &ec2.CreateSnapshotInput{
			VolumeId:    aws.String(res.VolumeID),
			Description: aws.String(fmt.Sprintf("chainwarden %s %s at height %s", Family(vol), res.ClientVersion, res.Height)),
			TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeSnapshot,
				Tags: ec2Tags(tags)}},
		})
	})
	if err != nil {
		return nil, err
	}
	res.SnapshotID, res.State, res.Progress = aws.ToString(out.SnapshotId), string(out.State), aws.ToString(out.Progress)
	// The snapshot is point-in-time from here: resume at once, the copy to S3 goes on in the background.
	if err := resume(); err != nil {
		return res, fmt.Errorf("snapshot %s started, but resuming failed: %w", res.SnapshotID, err)
	}
	log.Info("snapshot started", "snapshot", res.SnapshotID, "volume_id", res.VolumeID, "height", res.Height,
		"client_version", res.ClientVersion)
	if !wait {
		return res, nil
	}
	return res, m.WaitSnapshot(ctx, res)
}

// WaitSnapshot waits with the SDK's SnapshotCompleted waiter until the snapshot is completed, logging its
// progress; res.State and res.Progress follow it.
func (m *Manager) WaitSnapshot(ctx context.Context, res *SnapshotResult) error {
	m.defaults()
	what := "snapshot " + res.SnapshotID + " to complete"
	p := m.progress(what, m.Timeouts.Snapshot)
	var status string
	var stop error
	w := ec2.NewSnapshotCompletedWaiter(m.EC2, func(o *ec2.SnapshotCompletedWaiterOptions) {
		o.MinDelay, o.MaxDelay = m.Poll, m.MaxPoll
		completed := o.Retryable
		o.Retryable = func(wctx context.Context, in *ec2.DescribeSnapshotsInput, out *ec2.DescribeSnapshotsOutput, err error) (bool, error) {
			if err != nil {
				if wctx.Err() == nil { // else: the waiter's own deadline, reported as ErrTimeout
					stop = awsErr("DescribeSnapshots", err)
				}
				return false, err
			}
			if len(out.Snapshots) != 1 {
				stop = fmt.Errorf("snapshot %s: %d snapshots in the answer: %w", res.SnapshotID, len(out.Snapshots), ErrNotFound)
				return false, stop
			}
			s := out.Snapshots[0]
			res.State, res.Progress = string(s.State), aws.ToString(s.Progress)
			status = res.State + " " + res.Progress
			if s.State == types.SnapshotStateError {
				stop = fmt.Errorf("snapshot %s failed: %s", res.SnapshotID, aws.ToString(s.StateMessage))
				return false, stop
			}
			retry, err := completed(wctx, in, out, nil)
			if retry {
				p.waiting(status)
			}
			return retry, err
		}
	})
	err := w.Wait(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{res.SnapshotID}}, m.Timeouts.Snapshot)
	if err == nil {
		p.done()
		m.Log.Info("snapshot completed", "snapshot", res.SnapshotID)
	}
	return waiterErr(ctx, what, m.Timeouts.Snapshot, status, stop, err)
}
