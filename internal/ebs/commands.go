package ebs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// What `chainwarden volume` does for several volumes at once, and the lines and tables it prints.

// EnsureAll ensures every volume in turn, printing one line per ensured volume to w. A volume that fails is
// logged and the others are still ensured; the failures come back joined.
func (m *Manager) EnsureAll(ctx context.Context, vols []Volume, w io.Writer) error {
	m.defaults()
	var errs []error
	for _, v := range vols {
		res, err := m.Ensure(ctx, v)
		if err != nil {
			m.Log.Error("ensure failed", "volume", v.Name, "error", err)
			errs = append(errs, fmt.Errorf("ensure %s: %w", v.Name, err))
			continue
		}
		how := "reused"
		switch {
		case res.RestoredFrom != "":
			how = "restored from " + res.RestoredFrom
		case !res.Reused:
			how = "created blank"
		}
		fmt.Fprintf(w, "%s: %s (%s) %s on %s, mounted at %s, formatted=%v\n",
			v.Name, res.VolumeID, how, res.Filesystem, res.Device, res.MountPath, res.Formatted)
	}
	return errors.Join(errs...)
}

// WriteSnapshot prints what Snapshot did, in one line.
func WriteSnapshot(w io.Writer, vol Volume, res *SnapshotResult) {
	fmt.Fprintf(w, "%s: snapshot %s of %s at height %s (%s), %s %s\n", vol.Name, res.SnapshotID,
		res.VolumeID, res.Height, res.ClientVersion, res.State, res.Progress)
}

// PruneAll prunes the family of every volume once, keeping keep completed snapshots (keep <= 0: the volume's
// Keep), printing one line per family to w. A family that fails is logged and the others are still pruned.
func (m *Manager) PruneAll(ctx context.Context, vols []Volume, keep int, dryRun bool, w io.Writer) error {
	m.defaults()
	var errs []error
	done := map[string]bool{}
	for _, v := range vols {
		family := Family(v)
		if done[family] {
			continue
		}
		done[family] = true
		k := v.Keep
		if keep > 0 {
			k = keep
		}
		res, err := m.Prune(ctx, v, k, dryRun)
		if err != nil {
			m.Log.Error("prune failed", "family", family, "error", err)
			errs = append(errs, fmt.Errorf("prune %s: %w", family, err))
			continue
		}
		verb := "deleted"
		if dryRun {
			verb = "would delete"
		}
		fmt.Fprintf(w, "%s: kept %d, %s %d %s\n", res.Family, len(res.Kept), verb, len(res.Deleted), strings.Join(res.Deleted, " "))
	}
	return errors.Join(errs...)
}

// WriteListing prints the volumes and snapshots as two tables; "(here)" marks attachments to host.
func WriteListing(w io.Writer, l *Listing, host Host) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tNAME\tFAMILY\tAZ\tSIZE\tSTATE\tATTACHED\tFROM SNAPSHOT")
	for _, v := range l.Volumes {
		tags := tagsOf(v.Tags)
		att := "-"
		for _, a := range v.Attachments {
			att = aws.ToString(a.InstanceId) + " " + string(a.State)
			if aws.ToString(a.InstanceId) == host.InstanceID {
				att += " (here)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dGiB\t%s\t%s\t%s\n", aws.ToString(v.VolumeId), tags[TagVolume],
			tags[TagFamily], aws.ToString(v.AvailabilityZone), aws.ToInt32(v.Size), v.State, att,
			orDash(aws.ToString(v.SnapshotId)))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "SNAPSHOT\tFAMILY\tSTARTED\tSTATE\tPROGRESS\tHEIGHT\tCLIENT VERSION\tVOLUME")
	for _, s := range l.Snapshots {
		tags := tagsOf(s.Tags)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", aws.ToString(s.SnapshotId), tags[TagFamily],
			aws.ToTime(s.StartTime).UTC().Format(time.RFC3339), s.State, aws.ToString(s.Progress),
			orDash(tags[TagHeight]), orDash(tags[TagClientVersion]), aws.ToString(s.VolumeId))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
