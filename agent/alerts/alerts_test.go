package alerts

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

func TestRulesAreValidAndFireAsDocumented(t *testing.T) {
	promtool := testenv.Bin(t, "promtool")
	testenv.Run(t, promtool, "check", "rules", "chainwarden.rules.yml")
	testenv.Run(t, promtool, "test", "rules", "chainwarden.rules.test.yml")
}

// The demo loads the rules with every `for:` shortened (devnet.ShortenFor): the result is still valid, and only the
// durations changed.
func TestShortenedRulesStayValid(t *testing.T) {
	short, n := devnet.ShortenFor(Rules, time.Minute)
	if n != 8 { // the rules with for: 2m, 5m or 10m; NetworkHasNoHealthyNode already has 1m
		t.Fatalf("%d durations shortened, want 8:\n%s", n, short)
	}
	if again, m := devnet.ShortenFor(short, time.Minute); m != 0 || string(again) != string(short) {
		t.Fatalf("shortening twice changed %d more", m)
	}
	was, now := strings.Split(string(Rules), "\n"), strings.Split(string(short), "\n")
	if len(was) != len(now) {
		t.Fatalf("%d lines, were %d", len(now), len(was))
	}
	for i := range was {
		if was[i] != now[i] && (strings.TrimSpace(now[i]) != "for: 60s" || !strings.HasPrefix(strings.TrimSpace(was[i]), "for: ")) {
			t.Fatalf("line %d changed from %q to %q", i+1, was[i], now[i])
		}
	}
	promtool := testenv.Bin(t, "promtool")
	path := filepath.Join(t.TempDir(), "short.rules.yml")
	if err := os.WriteFile(path, short, 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, promtool, "check", "rules", path)
}
