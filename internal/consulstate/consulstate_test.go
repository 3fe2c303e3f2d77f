package consulstate

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// What Consul 1.19.2 writes under its data dir for a service registered through the agent API with a TTL check
// (file names are hashes; their content is what Forget reads).
const (
	svcJSON   = `{"Token":"","Service":{"ID":"%s","Service":"eth","Tags":%s,"Address":"","Meta":null,"Weights":{"Passing":1,"Warning":1}},"Source":"remote"}`
	checkJSON = `{"Check":{"Node":"vm","CheckID":"%s","Name":"x","Status":"passing","ServiceID":"%s","ServiceName":"eth","Type":"ttl"},"ChkType":{"CheckID":"%s","TTL":10000000000},"Token":"","Source":"remote"}`
	stateJSON = `{"CheckID":"%s","Output":"","Status":"passing","Expires":1796659708}`
)

func write(t *testing.T, path, format string, args ...any) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	body := format
	for _, a := range args {
		body = strings.Replace(body, "%s", a.(string), 1)
	}
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

func TestForgetRemovesOnlyTaggedRegistrations(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "services", "s1"), svcJSON, "geth-a", `["chainwarden","archive"]`)
	write(t, filepath.Join(dir, "checks", "c1"), checkJSON, "chainwarden:geth-a", "geth-a", "chainwarden:geth-a")
	write(t, filepath.Join(dir, "checks", "state", "c1"), stateJSON, "chainwarden:geth-a")
	// A service of someone else (e.g. Nomad's) and its check stay.
	write(t, filepath.Join(dir, "services", "s2"), svcJSON, "_nomad-task-x", `["web"]`)
	write(t, filepath.Join(dir, "checks", "c2"), checkJSON, "nomad-check", "_nomad-task-x", "nomad-check")
	write(t, filepath.Join(dir, "checks", "state", "c2"), stateJSON, "nomad-check")
	// Consul's other files stay.
	write(t, filepath.Join(dir, "node-id"), "abc")

	got, err := Forget(dir, "chainwarden")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Services, []string{"geth-a"}) || !slices.Equal(got.Checks, []string{"chainwarden:geth-a"}) {
		t.Fatalf("forgot %+v, want geth-a and its check", got)
	}
	for _, gone := range []string{"services/s1", "checks/c1", "checks/state/c1"} {
		if exists(filepath.Join(dir, gone)) {
			t.Errorf("%s is still there", gone)
		}
	}
	for _, kept := range []string{"services/s2", "checks/c2", "checks/state/c2", "node-id"} {
		if !exists(filepath.Join(dir, kept)) {
			t.Errorf("%s was removed", kept)
		}
	}
}

func TestForgetLeavesWhatItCannotReadAndSaysSo(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "services", "bad"), "{not json")
	write(t, filepath.Join(dir, "services", "s1"), svcJSON, "geth-a", `["chainwarden"]`)
	write(t, filepath.Join(dir, "checks", "c1"), checkJSON, "chainwarden:geth-a", "geth-a", "chainwarden:geth-a")
	got, err := Forget(dir, "chainwarden")
	if err == nil || !strings.Contains(err.Error(), "bad") || !strings.Contains(err.Error(), "left as it is") {
		t.Fatalf("want an error naming the unreadable file, got %v", err)
	}
	if !exists(filepath.Join(dir, "services", "bad")) {
		t.Error("the unreadable file was removed")
	}
	if len(got.Services) != 1 || exists(filepath.Join(dir, "checks", "c1")) {
		t.Errorf("the readable registration was not forgotten: %+v", got)
	}
}

func TestForgetFreshOrMissingDataDir(t *testing.T) {
	if got, err := Forget(t.TempDir(), "chainwarden"); err != nil || len(got.Services) != 0 {
		t.Fatalf("fresh data dir: %+v, %v", got, err)
	}
	if got, err := Forget(filepath.Join(t.TempDir(), "nope"), "chainwarden"); err != nil || len(got.Services) != 0 {
		t.Fatalf("a data dir not made yet (first start, wiped): %+v, %v", got, err)
	}
	if _, err := Forget(t.TempDir(), ""); err == nil {
		t.Fatal("no tag: want an error")
	}
}
