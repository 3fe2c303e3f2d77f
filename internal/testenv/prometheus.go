package testenv

import (
	"context"
	"testing"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// StartPrometheus starts a real Prometheus (Debian's `prometheus`) on a free loopback port with its own storage in
// the test's temp dir, scraping o.Targets as the job "chainwarden" and loading o.Rules; it stops when the test ends.
func StartPrometheus(t testing.TB, o devnet.PrometheusOptions) *devnet.Prometheus {
	t.Helper()
	Bin(t, "prometheus")
	p, err := devnet.StartPrometheus(context.Background(), t.TempDir(), o)
	if p != nil && p.Proc != nil {
		track(t, p.Proc)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}
