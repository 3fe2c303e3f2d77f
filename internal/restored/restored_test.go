package restored_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/restored"
)

func TestMarks(t *testing.T) {
	dir := t.TempDir()
	if ms, err := restored.List(dir); err != nil || len(ms) != 0 {
		t.Fatalf("no state dir yet: %v %v", ms, err)
	}
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	m := restored.Mark{Node: "geth-geth-0", Volume: "geth-a", VolumeID: "vol-1", Snapshot: "snap-1", Height: "1200", Restored: at}
	if err := restored.Write(dir, m); err != nil {
		t.Fatal(err)
	}
	m2 := m
	m2.Snapshot = "snap-2"
	if err := restored.Write(dir, m2); err != nil { // replaces
		t.Fatal(err)
	}
	if err := restored.Write(dir, restored.Mark{Node: "../etc/passwd"}); err == nil {
		t.Fatal("a node name with a path in it was written")
	}
	// A broken file is reported, the good marks still come back.
	os.WriteFile(filepath.Join(dir, "restored", "junk.json"), []byte("{"), 0o644)
	ms, err := restored.List(dir)
	if len(ms) != 1 || ms[0] != m2 || err == nil || !strings.Contains(err.Error(), "junk.json") {
		t.Fatalf("list: %+v %v", ms, err)
	}
	if err := restored.Remove(dir, "geth-geth-0"); err != nil {
		t.Fatal(err)
	}
	if err := restored.Remove(dir, "geth-geth-0"); err != nil {
		t.Fatalf("removing twice: %v", err)
	}
	os.Remove(filepath.Join(dir, "restored", "junk.json"))
	if ms, err := restored.List(dir); err != nil || len(ms) != 0 {
		t.Fatalf("after remove: %v %v", ms, err)
	}
}
