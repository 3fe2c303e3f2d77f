package nomadjob

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	nomadapi "github.com/hashicorp/nomad/api"
)

// Diff types as the Nomad server reports them.
const (
	diffAdded   = "Added"
	diffDeleted = "Deleted"
	diffEdited  = "Edited"
	diffNone    = "None"
)

// WritePlan prints a plan the way `nomad job plan` does: the job diff with +, -, +/- markers, the scheduler's
// desired updates per task group, and why allocations could not be placed. It reports whether every allocation
// could be placed.
func WritePlan(w io.Writer, resp *nomadapi.JobPlanResponse, verbose bool) bool {
	if resp.Diff != nil {
		writeJobDiff(w, resp.Diff, resp.Annotations, verbose)
	}
	fmt.Fprintln(w, "\nScheduler dry-run:")
	if len(resp.FailedTGAllocs) == 0 {
		fmt.Fprintln(w, "- All tasks successfully allocated.")
	} else {
		fmt.Fprintln(w, "- WARNING: Failed to place all allocations.")
		writeFailedAllocs(w, resp.FailedTGAllocs, "  ")
	}
	if resp.Warnings != "" {
		fmt.Fprintf(w, "\nJob Warnings:\n%s\n", indentLines(resp.Warnings, "  "))
	}
	fmt.Fprintf(w, "\nJob Modify Index: %d\n", resp.JobModifyIndex)
	return len(resp.FailedTGAllocs) == 0
}

func marker(t string) string {
	switch t {
	case diffAdded:
		return "+"
	case diffDeleted:
		return "-"
	case diffEdited:
		return "+/-"
	default:
		return ""
	}
}

func writeJobDiff(w io.Writer, d *nomadapi.JobDiff, ann *nomadapi.PlanAnnotations, verbose bool) {
	m := marker(d.Type)
	if m == "" {
		m = " "
	}
	fmt.Fprintf(w, "%s Job: %q\n", m, d.ID)
	writeFields(w, d.Fields, "", verbose)
	writeObjects(w, d.Objects, "", verbose)
	for _, tg := range d.TaskGroups {
		writeTaskGroupDiff(w, tg, ann, verbose)
	}
}

func writeTaskGroupDiff(w io.Writer, tg *nomadapi.TaskGroupDiff, ann *nomadapi.PlanAnnotations, verbose bool) {
	m := marker(tg.Type)
	if m == "" {
		m = " "
	}
	fmt.Fprintf(w, "%s Task Group: %q", m, tg.Name)
	if s := updatesSummary(tg.Updates); s != "" {
		fmt.Fprintf(w, " (%s)", s)
	} else if ann != nil && ann.DesiredTGUpdates[tg.Name] != nil {
		fmt.Fprintf(w, " (%s)", desiredSummary(ann.DesiredTGUpdates[tg.Name]))
	}
	fmt.Fprintln(w)
	writeFields(w, tg.Fields, "  ", verbose)
	writeObjects(w, tg.Objects, "  ", verbose)
	for _, t := range tg.Tasks {
		tm := marker(t.Type)
		if tm == "" {
			tm = " "
		}
		fmt.Fprintf(w, "  %s Task: %q", tm, t.Name)
		if len(t.Annotations) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(t.Annotations, ", "))
		}
		fmt.Fprintln(w)
		if t.Type == diffEdited || verbose {
			writeFields(w, t.Fields, "    ", verbose)
			writeObjects(w, t.Objects, "    ", verbose)
		}
	}
}

func updatesSummary(u map[string]uint64) string {
	if len(u) == 0 {
		return ""
	}
	keys := slices.Sorted(maps.Keys(u))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		if u[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", u[k], k))
		}
	}
	return strings.Join(parts, ", ")
}

func desiredSummary(d *nomadapi.DesiredUpdates) string {
	return updatesSummary(map[string]uint64{
		"create": d.Place, "destroy": d.Stop, "migrate": d.Migrate, "in-place update": d.InPlaceUpdate,
		"create/destroy update": d.DestructiveUpdate, "canary": d.Canary, "ignore": d.Ignore,
	})
}

func writeFields(w io.Writer, fields []*nomadapi.FieldDiff, indent string, verbose bool) {
	for _, f := range fields {
		if f.Type == diffNone && !verbose {
			continue
		}
		var val string
		switch f.Type {
		case diffAdded:
			val = fmt.Sprintf("%q", f.New)
		case diffDeleted:
			val = fmt.Sprintf("%q", f.Old)
		case diffEdited:
			val = fmt.Sprintf("%q => %q", f.Old, f.New)
		default:
			val = fmt.Sprintf("%q", f.New)
		}
		m := marker(f.Type)
		if m == "" {
			m = " "
		}
		fmt.Fprintf(w, "%s%s %s: %s", indent, m, f.Name, val)
		if len(f.Annotations) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(f.Annotations, ", "))
		}
		fmt.Fprintln(w)
	}
}

func writeObjects(w io.Writer, objs []*nomadapi.ObjectDiff, indent string, verbose bool) {
	for _, o := range objs {
		if o.Type == diffNone && !verbose {
			continue
		}
		m := marker(o.Type)
		if m == "" {
			m = " "
		}
		fmt.Fprintf(w, "%s%s %s {\n", indent, m, o.Name)
		writeFields(w, o.Fields, indent+"  ", verbose)
		writeObjects(w, o.Objects, indent+"  ", verbose)
		fmt.Fprintf(w, "%s  }\n", indent)
	}
}

// writeFailedAllocs explains placement failures as `nomad job plan/run` does.
func writeFailedAllocs(w io.Writer, failed map[string]*nomadapi.AllocationMetric, indent string) {
	for _, g := range slices.Sorted(maps.Keys(failed)) {
		m := failed[g]
		n := m.CoalescedFailures + 1
		noun := "allocation"
		if n > 1 {
			noun += "s"
		}
		fmt.Fprintf(w, "%sTask Group %q (failed to place %d %s):\n", indent, g, n, noun)
		fmt.Fprint(w, allocMetrics(m, indent+"  "))
	}
}

// allocMetrics lists why nodes were filtered or exhausted.
func allocMetrics(m *nomadapi.AllocationMetric, indent string) string {
	var b strings.Builder
	if m.NodesEvaluated == 0 {
		fmt.Fprintf(&b, "%s* No nodes were eligible for evaluation\n", indent)
	}
	for _, dc := range slices.Sorted(maps.Keys(m.NodesAvailable)) {
		if m.NodesAvailable[dc] == 0 {
			fmt.Fprintf(&b, "%s* No nodes are available in datacenter %q\n", indent, dc)
		}
	}
	for _, c := range slices.Sorted(maps.Keys(m.ClassFiltered)) {
		fmt.Fprintf(&b, "%s* Class %q: %d nodes excluded by filter\n", indent, c, m.ClassFiltered[c])
	}
	for _, c := range slices.Sorted(maps.Keys(m.ConstraintFiltered)) {
		fmt.Fprintf(&b, "%s* Constraint %q: %d nodes excluded by filter\n", indent, c, m.ConstraintFiltered[c])
	}
	if m.NodesExhausted > 0 {
		fmt.Fprintf(&b, "%s* Resources exhausted on %d nodes\n", indent, m.NodesExhausted)
	}
	for _, c := range slices.Sorted(maps.Keys(m.ClassExhausted)) {
		fmt.Fprintf(&b, "%s* Class %q exhausted on %d nodes\n", indent, c, m.ClassExhausted[c])
	}
	for _, d := range slices.Sorted(maps.Keys(m.DimensionExhausted)) {
		fmt.Fprintf(&b, "%s* Dimension %q exhausted on %d nodes\n", indent, d, m.DimensionExhausted[d])
	}
	for _, q := range m.QuotaExhausted {
		fmt.Fprintf(&b, "%s* Quota limit hit %q\n", indent, q)
	}
	return b.String()
}
