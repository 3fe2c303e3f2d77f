package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

func svc(id, status, out string) Service {
	return Service{ID: id, Name: "eth-devnet", Address: "127.0.0.1", Port: 8545, Meta: map[string]string{"kind": "ethereum"},
		Status: status, Output: out}
}

func TestRegistryAgainstRealConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	ctx := context.Background()
	r := New(c.Client.Agent(), Options{AgentID: "host-a", TTL: 3 * time.Second, DeregisterAfter: time.Minute}, hclog.NewNullLogger())

	if err := r.Sync(ctx, []Service{svc("geth-a", "passing", "height 10, at head 10"), svc("geth-b", "warning", "3 behind")}); err != nil {
		t.Fatal(err)
	}
	assertCheck(t, c, "geth-a", "passing", "height 10, at head 10")
	assertCheck(t, c, "geth-b", "warning", "3 behind")
	s, _, err := c.Client.Agent().Service("geth-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Service != "eth-devnet" || s.Meta["agent"] != "host-a" || s.Meta["kind"] != "ethereum" || s.Tags[0] != Tag {
		t.Fatalf("registration: %+v", s)
	}

	// Status changes reach the check; a node no longer in the list is deregistered.
	if err := r.Sync(ctx, []Service{svc("geth-a", "critical", "probe failed")}); err != nil {
		t.Fatal(err)
	}
	assertCheck(t, c, "geth-a", "critical", "probe failed")
	assertCheck(t, c, "geth-b", "", "")

	// Consul loses its state: the next sync registers again.
	c.Restart()
	if err := r.Sync(ctx, []Service{svc("geth-a", "passing", "back")}); err != nil {
		t.Fatal(err)
	}
	assertCheck(t, c, "geth-a", "passing", "back")

	// Consul down: Sync fails, backs off, and registers everything when it is back.
	c.Stop()
	if err := r.Sync(ctx, []Service{svc("geth-a", "passing", "x")}); err == nil {
		t.Fatal("sync with consul down: no error")
	}
	if !r.Down() {
		t.Fatal("registry does not know consul is down")
	}
	c.Restart()
	testenv.Eventually(t, 10*time.Second, "re-registration after consul is back", func() error {
		if err := r.Sync(ctx, []Service{svc("geth-a", "warning", "recovered")}); err != nil {
			return err
		}
		st, out, err := c.CheckStatus("geth-a")
		if err != nil {
			return err
		}
		if st != "warning" || out != "recovered" {
			return errors.New("not yet: " + st + " " + out)
		}
		return nil
	})
}

func TestTTLExpiresWhenNotUpdated(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	r := New(c.Client.Agent(), Options{AgentID: "host-a", TTL: time.Second, DeregisterAfter: time.Minute}, hclog.NewNullLogger())
	if err := r.Sync(context.Background(), []Service{svc("geth-a", "passing", "ok")}); err != nil {
		t.Fatal(err)
	}
	assertCheck(t, c, "geth-a", "passing", "ok")
	testenv.Eventually(t, 10*time.Second, "TTL expiry", func() error {
		st, _, err := c.CheckStatus("geth-a")
		if err != nil {
			return err
		}
		if st != "critical" {
			return errors.New("still " + st)
		}
		return nil
	})
}

func assertCheck(t *testing.T, c *testenv.Consul, id, status, output string) {
	t.Helper()
	st, out, err := c.CheckStatus(id)
	if err != nil {
		t.Fatal(err)
	}
	if st != status || out != output {
		t.Fatalf("check of %s: %q %q, want %q %q", id, st, out, status, output)
	}
}

// Against a real Consul whose agent holds output-only changes back for check_update_interval (5m, as in
// production): with Catalog set, the servers' copy — what the Consul UI and consul-template read — has the first
// output from the start and every new reason at once; without it, it stays blank.
func TestCatalogOutputsAgainstRealConsul(t *testing.T) {
	c := testenv.StartConsulWith(t, testenv.ProductionChecks...)
	ctx := context.Background()
	catalogOutput := func(id string) string {
		checks, _, err := c.Client.Health().Checks("eth-devnet", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range checks {
			if ch.CheckID == CheckID(id) {
				return ch.Output
			}
		}
		return "<none>"
	}
	plain := New(c.Client.Agent(), Options{AgentID: "host-b", TTL: time.Minute, DeregisterAfter: time.Minute}, hclog.NewNullLogger())
	r := New(c.Client.Agent(), Options{AgentID: "host-a", TTL: time.Minute, DeregisterAfter: time.Minute, Catalog: Catalog(c.Client)},
		hclog.NewNullLogger())
	first := svc("geth-a", "critical", "0 peers, want at least 1 — height 5, 0 peers")
	testenv.Eventually(t, 10*time.Second, "the first output in the catalog", func() error {
		if err := r.Sync(ctx, []Service{first}); err != nil {
			return err
		}
		if got := catalogOutput("geth-a"); got != first.Output {
			return errors.New("catalog has " + got)
		}
		return nil
	})
	next := svc("geth-a", "critical", "no new block for 2m0s — height 5, 0 peers")
	if err := r.Sync(ctx, []Service{next}); err != nil {
		t.Fatal(err)
	}
	if got := catalogOutput("geth-a"); got != next.Output {
		t.Fatalf("catalog %q right after a new reason, want %q", got, next.Output)
	}

	// The control: the same through the local agent alone stays blank in the catalog.
	if err := plain.Sync(ctx, []Service{svc("geth-b", "critical", "0 peers, want at least 1")}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "geth-b in the catalog", func() error {
		if got := catalogOutput("geth-b"); got == "<none>" {
			return errors.New("not yet")
		}
		return nil
	})
	if got := catalogOutput("geth-b"); got != "" {
		t.Fatalf("without the catalog write, the catalog has %q: is check_update_interval in force?", got)
	}
}

// An agent whose ID changed (the hostname before, its Consul node name now) takes what it registered under its
// former ID as its own: resumed by Standing, kept or removed by its audit. Another agent's services stay.
func TestFormerAgentIDAgainstRealConsul(t *testing.T) {
	if testing.Short() {
		t.Skip("integration")
	}
	c := testenv.StartConsul(t)
	ctx := context.Background()
	before := New(c.Client.Agent(), Options{AgentID: "ip-10-0-1-23", TTL: time.Minute, DeregisterAfter: time.Minute}, hclog.NewNullLogger())
	if err := before.Sync(ctx, []Service{svc("geth-a", "passing", "height 10"), svc("geth-b", "passing", "height 10")}); err != nil {
		t.Fatal(err)
	}
	other := New(c.Client.Agent(), Options{AgentID: "someone-else", TTL: time.Minute, DeregisterAfter: time.Minute}, hclog.NewNullLogger())
	if err := other.Sync(ctx, []Service{svc("geth-z", "passing", "height 10")}); err != nil {
		t.Fatal(err)
	}

	now := New(c.Client.Agent(), Options{AgentID: "chain-host-1", FormerAgentIDs: []string{"ip-10-0-1-23"}, TTL: time.Minute,
		DeregisterAfter: time.Minute}, hclog.NewNullLogger())
	st, err := now.Standing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 2 || st["geth-a"].Status != "passing" || st["geth-b"].Status != "passing" {
		t.Fatalf("standing under the former id: %+v", st)
	}
	if err := now.Sync(ctx, []Service{svc("geth-a", "passing", "height 11")}); err != nil {
		t.Fatal(err)
	}
	assertCheck(t, c, "geth-a", "passing", "height 11")
	assertCheck(t, c, "geth-b", "", "") // its own, registered under the former id and no longer wanted: removed
	assertCheck(t, c, "geth-z", "passing", "height 10")
	s, _, err := c.Client.Agent().Service("geth-a", nil)
	if err != nil || s.Meta["agent"] != "chain-host-1" {
		t.Fatalf("geth-a re-registered under the new id: %+v %v", s, err)
	}
}
