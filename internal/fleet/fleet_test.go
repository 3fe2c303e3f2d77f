package fleet

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/heads"
)

func TestReason(t *testing.T) {
	for in, want := range map[string]string{
		"3 blocks behind, more than warn_lag 2 — height 97, 3 behind head 100 (geth-b), 5 peers":                    "3 blocks behind, more than warn_lag 2",
		"probe failed: dial tcp 10.0.0.5:8545: connect: connection refused; 0 peers, want at least 1":               "probe failed: dial tcp 10.0.0.5:8545: connect: connection refused",
		"recovering: 1 of 3 good probes; last probe: height 100, at head 100, 5 peers":                              "recovering: 1 of 3 good probes: height 100, at head 100, 5 peers",
		"failing: 1 of 2 bad probes; last probe: no new block for 33s; 33 blocks behind — height 1, 33 behind head": "failing: 1 of 2 bad probes: no new block for 33s",
		"": "",
	} {
		if got := Reason(in, 200); got != want {
			t.Errorf("Reason(%q)\n got %q\nwant %q", in, got, want)
		}
	}
	if got := Reason(strings.Repeat("x", 100), 10); got != "xxxxxxxxx…" {
		t.Errorf("shortened: %q", got)
	}
}

func TestBehindSince(t *testing.T) {
	now := time.Unix(1000, 0)
	hs := map[string]heads.Head{
		"a": {Height: 100, Observed: now.Add(-30 * time.Second)},
		"b": {Height: 105, Observed: now.Add(-12 * time.Second)},
		"c": {Height: 107, Observed: now.Add(-2 * time.Second)},
		"d": {Height: 200, Observed: now.Add(-time.Hour)}, // stale: ignored
	}
	if got := behindSince(hs, 100, now, time.Minute); got != 12 {
		t.Fatalf("behind since %v s, want 12", got)
	}
	if got := behindSince(hs, 107, now, time.Minute); got != 0 {
		t.Fatalf("at the head: %v", got)
	}
}

func TestTableColoursOnlyWhenAsked(t *testing.T) {
	rows := []Row{{Service: "eth", Node: "geth-a", Host: "h", Status: "critical", Height: 1, Lag: 2, LagSec: 3, AgeSec: 4, Reason: "probe failed"}}
	var plain, color bytes.Buffer
	if err := WriteTable(&plain, rows); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plain.String(), "\x1b[") || !strings.Contains(plain.String(), "REASON") || !strings.Contains(plain.String(), "probe failed") {
		t.Fatalf("plain table:\n%s", plain.String())
	}
	if err := (Style{Color: true}).WriteTable(&color, rows); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(color.String(), "\x1b[31mcritical\x1b[0m") {
		t.Fatalf("coloured table:\n%q", color.String())
	}
	// The columns line up the same with and without colour.
	strip := strings.NewReplacer("\x1b[31m", "", "\x1b[0m", "")
	if strip.Replace(color.String()) != plain.String() {
		t.Fatalf("colour moved the columns:\n%s\n%s", plain.String(), color.String())
	}
}

func TestFromOutput(t *testing.T) {
	for out, want := range map[string][3]uint64{ // height, peers, ok
		"height 1234, 2 behind head 1236 (geth-b), 5 peers, last block 1s ago": {1234, 5, 1},
		"height 1236, at head 1236, 47 peers, last block 3s ago":               {1236, 47, 1},
		"height 1240": {1240, 0, 1},
		"3 blocks behind, more than warn_lag 2 — height 97, 3 behind head 100 (geth-b), 5 peers":      {97, 5, 1},
		"recovering: 1 of 3 good probes; last probe: height 100, at head 100, 5 peers":                {100, 5, 1},
		"probe failed: dial tcp 10.0.0.5:8545: connect: connection refused; 0 peers, want at least 1": {0, 0, 0},
		"at height 0, not synced":                      {0, 0, 0},
		"catching up from snapshot: height 500 → 1000": {0, 0, 0},
		"": {0, 0, 0},
	} {
		h, p, ok := FromOutput(out)
		if h != want[0] || p != want[1] || ok != (want[2] == 1) {
			t.Errorf("FromOutput(%q) = %d %d %v, want %v", out, h, p, ok, want)
		}
	}
}
