package nomadjob

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"
)

func TestParseVarFlags(t *testing.T) {
	vars, err := ParseVarFlags([]string{"image=local/geth:test", "extra_args=[\"--dev.period=1\"]", "empty=", "url=http://a/?x=1"})
	if err != nil {
		t.Fatal(err)
	}
	if vars["image"] != "local/geth:test" || vars["empty"] != "" || vars["url"] != "http://a/?x=1" {
		t.Errorf("vars %v", vars)
	}
	for _, bad := range []string{"novalue", "=x", " =x"} {
		if _, err := ParseVarFlags([]string{bad}); err == nil {
			t.Errorf("ParseVarFlags(%q) accepted", bad)
		}
	}
}

func TestVariablesHCL(t *testing.T) {
	s := &Spec{Vars: map[string]string{
		"image": `local/geth:"q"`, "memory": "512", "extra_args": ` ["--dev.period=1"]`, "labels": "{a = 1}",
	}, VarFile: `datacenters = ["dc1"]`}
	got, err := s.VariablesHCL()
	if err != nil {
		t.Fatal(err)
	}
	want := `datacenters = ["dc1"]
extra_args = ["--dev.period=1"]
image = "local/geth:\"q\""
labels = {a = 1}
memory = "512"
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if _, err := (&Spec{Vars: map[string]string{"bad name": "x"}}).VariablesHCL(); err == nil {
		t.Error("a variable name with a space was accepted")
	}
}

func TestLoadUnknown(t *testing.T) {
	_, err := Load("bitcoin", nil)
	if !errors.Is(err, ErrUnknownJob) || !strings.Contains(err.Error(), "geth") {
		t.Fatalf("err = %v", err)
	}
	for _, n := range []string{"geth", "openethereum", "chainlink", "irita", "cometbft"} {
		if _, err := Load(n, nil); err != nil {
			t.Errorf("Load(%s): %v", n, err)
		}
	}
}

func TestNomadMessage(t *testing.T) {
	err := errors.New(`Unexpected response code: 400 (failed to parse: geth.hcl:3,1-4: Unsupported argument)`)
	if got := nomadMessage(err); got != "failed to parse: geth.hcl:3,1-4: Unsupported argument" {
		t.Errorf("got %q", got)
	}
	if got := nomadMessage(errors.New("dial tcp: refused")); got != "dial tcp: refused" {
		t.Errorf("got %q", got)
	}
}

func TestWritePlan(t *testing.T) {
	resp := &nomadapi.JobPlanResponse{
		JobModifyIndex: 42,
		Diff: &nomadapi.JobDiff{Type: "Edited", ID: "geth", TaskGroups: []*nomadapi.TaskGroupDiff{{
			Type: "Edited", Name: "geth", Updates: map[string]uint64{"create/destroy update": 1},
			Tasks: []*nomadapi.TaskDiff{{Type: "Edited", Name: "geth", Annotations: []string{"forces create/destroy update"},
				Objects: []*nomadapi.ObjectDiff{{Type: "Edited", Name: "Config", Fields: []*nomadapi.FieldDiff{
					{Type: "Edited", Name: "image", Old: "a:1", New: "a:2"},
					{Type: "None", Name: "network_mode", Old: "host", New: "host"},
				}}}}},
		}}},
		FailedTGAllocs: map[string]*nomadapi.AllocationMetric{"geth": {
			NodesEvaluated: 1, NodesFiltered: 1, ConstraintFiltered: map[string]int{"missing compatible host volumes": 1},
		}},
	}
	var b bytes.Buffer
	ok := WritePlan(&b, resp, false)
	out := b.String()
	if ok {
		t.Error("a plan with failed placements reported ok")
	}
	for _, want := range []string{
		`+/- Job: "geth"`,
		`+/- Task Group: "geth" (1 create/destroy update)`,
		`  +/- Task: "geth" (forces create/destroy update)`,
		`      +/- image: "a:1" => "a:2"`,
		`- WARNING: Failed to place all allocations.`,
		`Task Group "geth" (failed to place 1 allocation):`,
		`* Constraint "missing compatible host volumes": 1 nodes excluded by filter`,
		`Job Modify Index: 42`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "network_mode") {
		t.Errorf("unchanged field shown without -verbose:\n%s", out)
	}
	b.Reset()
	WritePlan(&b, resp, true)
	if !strings.Contains(b.String(), `network_mode: "host"`) {
		t.Errorf("verbose plan lacks the unchanged field:\n%s", b.String())
	}
}

func TestErrorsReadLikeNomad(t *testing.T) {
	de := &DeploymentError{ID: "0123456789abcdef", Status: "failed", Description: "Failed due to unhealthy allocations",
		Reasons: []string{`alloc 9f8e7d6c task "geth" (dead): Driver Failure: Failed to pull local/geth:nope`}}
	want := "Deployment \"01234567\" failed: Failed due to unhealthy allocations\n" +
		"  alloc 9f8e7d6c task \"geth\" (dead): Driver Failure: Failed to pull local/geth:nope"
	if de.Error() != want {
		t.Errorf("got\n%s\nwant\n%s", de.Error(), want)
	}
	pe := &PlacementError{EvalID: "abcdef0123", Failed: map[string]*nomadapi.AllocationMetric{
		"validator": {NodesEvaluated: 3, CoalescedFailures: 1, ConstraintFiltered: map[string]int{"distinct_hosts": 3}},
	}}
	want = "Evaluation \"abcdef01\" finished with status \"complete\" but failed to place all allocations:\n" +
		"    Task Group \"validator\" (failed to place 2 allocations):\n" +
		"      * Constraint \"distinct_hosts\": 3 nodes excluded by filter"
	if pe.Error() != want {
		t.Errorf("got\n%s\nwant\n%s", pe.Error(), want)
	}
}
