package probe_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chainwarden/chainwarden/internal/probe"
	"github.com/chainwarden/chainwarden/internal/testenv"
	"github.com/chainwarden/chainwarden/internal/verdict"
)

// clJudge probes a Chainlink node once (with a deadline long enough for its balance lookups) and judges the result
// as the agent does.
func clJudge(client *http.Client, tg probe.Target, th verdict.Thresholds) verdict.Report {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r := probe.Run(ctx, client, tg)
	return verdict.Judge(verdict.Input{Kind: probe.Chainlink, Result: r, Thresholds: th, Now: time.Now()})
}

// waitVerdict probes until the verdict has status want and its output holds every one of parts.
func waitVerdict(t *testing.T, timeout time.Duration, client *http.Client, tg probe.Target, th verdict.Thresholds,
	want verdict.Status, parts ...string) verdict.Report {
	t.Helper()
	var rep verdict.Report
	testenv.Eventually(t, timeout, fmt.Sprintf("%s %q", want, parts), func() error {
		rep = clJudge(client, tg, th)
		if rep.Status != want {
			return fmt.Errorf("status %s: %s", rep.Status, rep.Output())
		}
		for _, p := range parts {
			if !strings.Contains(rep.Output(), p) {
				return fmt.Errorf("output %q lacks %q", rep.Output(), p)
			}
		}
		return nil
	})
	t.Logf("%s: %s", rep.Status, rep.Output())
	return rep
}

// A real Chainlink v2.23.0 node on a private Postgres and a dev geth chain, taken through what operators meet:
// credentials both ways, the database down, the chain down, the node killed, a wallet below the minimum and a
// failing job; each with its recovery.
func TestChainlinkRealNode(t *testing.T) {
	pg := testenv.StartPostgres(t)
	geth := testenv.StartGethWS(t, "geth")
	cl := testenv.StartChainlink(t, testenv.ChainlinkOptions{
		DatabaseURL: pg.CreateDatabase("chainlink", testenv.NewPassword()), Geth: geth, NoLock: true})
	t.Logf("chainlink booted in %s (process start to /health answering)", cl.Boot.Round(100*time.Millisecond))
	api := cl.Login()
	key, secret := api.Token()

	client := probe.NewHTTPClient()
	th := verdict.KindDefaults[probe.Chainlink]
	token := probe.Target{Name: "cl", Kind: probe.Chainlink, URL: cl.URL, APIKey: key, APISecret: secret}
	login := probe.Target{Name: "cl", Kind: probe.Chainlink, URL: cl.URL, APIEmail: testenv.ChainlinkAPIEmail,
		APIPassword: testenv.ChainlinkAPIPassword, Session: probe.NewChainlinkSession(nil)}
	file := probe.Target{Name: "cl", Kind: probe.Chainlink, URL: cl.URL, APICredentialsFile: cl.APIFile,
		Session: probe.NewChainlinkSession(nil)}

	t.Run("passing with credentials, both ways", func(t *testing.T) {
		rep := waitVerdict(t, 2*time.Minute, client, token, th, verdict.Passing, "version ", "wallet 0x")
		if strings.Contains(rep.Output(), "version unset") { // a build without -X .../core/static.Version
			t.Errorf("the node reports no version: %s", rep.Output())
		}
		for _, tg := range []probe.Target{login, file} {
			if got := clJudge(client, tg, th); got.Status != verdict.Passing || got.Output() != rep.Output() {
				t.Errorf("%+v: %s %s, want what the token gives: %s", tg.APICredentialsFile, got.Status, got.Output(), rep.Output())
			}
		}
		bad := token
		bad.APISecret = "not-the-secret"
		if got := clJudge(client, bad, th); got.Status != verdict.Critical || !strings.Contains(got.Output(), "API credentials refused") ||
			strings.Contains(got.Output(), "not-the-secret") {
			t.Errorf("wrong secret: %s %s", got.Status, got.Output())
		}
	})

	t.Run("database stopped", func(t *testing.T) {
		pg.Stop()
		restarted := false
		defer func() {
			if !restarted { // leave the next subtests a database
				pg.Start()
			}
		}()
		// With a token the node names the database in its 401. A session login it answers with a bare HTTP 500
		// (v2.23.0): critical, never blamed on the credentials, and a hint at the database.
		rep := waitVerdict(t, time.Minute, client, token, th, verdict.Critical, "database unreachable", "connection refused")
		if strings.Contains(rep.Output(), "credentials refused") {
			t.Errorf("the cause is the database, not the credentials: %s", rep.Output())
		}
		rep = waitVerdict(t, time.Minute, client, login, th, verdict.Critical, "log in with the API email and password")
		if out := rep.Output(); strings.Contains(out, "credentials refused") ||
			!(strings.Contains(out, "database unreachable") || strings.Contains(out, "is its database reachable?")) {
			t.Errorf("login with the database down: %s", out)
		}
		pg.Start()
		restarted = true
		waitVerdict(t, 2*time.Minute, client, token, th, verdict.Passing)
		waitVerdict(t, time.Minute, client, login, th, verdict.Passing)
	})

	t.Run("geth stopped", func(t *testing.T) {
		geth.Stop()
		waitVerdict(t, 3*time.Minute, client, token, th, verdict.Critical, "EVM.1337.HeadTracker.HeadListener")
		geth.Start()
		waitVerdict(t, 3*time.Minute, client, token, th, verdict.Passing)
	})

	t.Run("node killed", func(t *testing.T) {
		cl.Kill()
		rep := waitVerdict(t, 30*time.Second, client, token, th, verdict.Critical, "connection refused")
		if len(rep.Reasons) != 1 || strings.Count(rep.Output(), "connection refused") != 1 {
			t.Errorf("want one reason, got %q", rep.Reasons)
		}
		cl.Start(false)
		t.Logf("restarted in %s", cl.Boot.Round(100*time.Millisecond))
		waitVerdict(t, 2*time.Minute, client, token, th, verdict.Passing)
	})

	t.Run("wallet below the minimum", func(t *testing.T) {
		keys := api.EVMKeys()
		if len(keys) == 0 {
			t.Fatal("the node has no EVM key")
		}
		min := th
		min.MinBalanceWei = "1000000000000000000" // 1 ETH
		waitVerdict(t, time.Minute, client, token, min, verdict.Critical, "wallet "+keys[0]+" has 0 ETH, below min_balance 1")
		geth.Fund(keys[0], 2_000_000_000_000_000_000)
		waitVerdict(t, 2*time.Minute, client, token, min, verdict.Passing, "wallet "+keys[0]+" 2 ETH (min 1)")
	})

	t.Run("failing job run", func(t *testing.T) {
		closed := testenv.FreePort(t)
		id := api.CreateJob(fmt.Sprintf(`type = "cron"
schemaVersion = 1
name = "price-from-closed-port"
schedule = "CRON_TZ=UTC @every 2s"
observationSource = """
fetch [type=http method=GET url="http://127.0.0.1:%d/price" allowUnrestrictedNetworkAccess=true];
parse [type=jsonparse path="price"];
fetch -> parse;
"""
`, closed))
		runs := th
		runs.MaxFailedRuns = 0
		waitVerdict(t, time.Minute, client, token, runs, verdict.Warning, `job "price-from-closed-port"`,
			"more than max_failed_runs 0", "connection refused")
		api.DeleteJob(id)
		waitVerdict(t, time.Minute, client, token, runs, verdict.Passing, "0 of the last 20 job runs failed")
	})
}

// The active/standby pair of jobs/chainlink.nomad.hcl on one Postgres: the standby waits on the database lock
// without serving its API (warning "standby"); when the active one is killed, the standby takes the lock and passes.
func TestChainlinkStandbyTakesOver(t *testing.T) {
	pg := testenv.StartPostgres(t)
	geth := testenv.StartGethWS(t, "geth")
	db := pg.CreateDatabase("chainlink", testenv.NewPassword())
	active := testenv.StartChainlink(t, testenv.ChainlinkOptions{Name: "chainlink-a", DatabaseURL: db, Geth: geth})
	standby := testenv.StartChainlink(t, testenv.ChainlinkOptions{Name: "chainlink-b", DatabaseURL: db, Geth: geth, NoWait: true})

	client := probe.NewHTTPClient()
	th := verdict.KindDefaults[probe.Chainlink]
	judge := func(cl *testenv.Chainlink, isStandby bool) verdict.Report {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		r := probe.Run(ctx, client, probe.Target{Name: cl.Name, Kind: probe.Chainlink, URL: cl.URL,
			APICredentialsFile: cl.APIFile, Session: probe.NewChainlinkSession(nil)})
		return verdict.Judge(verdict.Input{Kind: probe.Chainlink, Result: r, Thresholds: th, Standby: isStandby, Now: time.Now()})
	}
	waitVerdict(t, 2*time.Minute, client, probe.Target{Name: "a", Kind: probe.Chainlink, URL: active.URL,
		APICredentialsFile: active.APIFile}, th, verdict.Passing)
	// The standby keeps waiting on the lock for as long as the active holds it (its lease is renewed every second).
	for i := 0; i < 5; i++ {
		rep := judge(standby, true)
		if rep.Status != verdict.Warning || !strings.Contains(rep.Output(), "standby") {
			t.Fatalf("standby: %s %s", rep.Status, rep.Output())
		}
		if standby.Proc.Exited() {
			t.Fatal("the standby exited instead of waiting on the lock")
		}
		time.Sleep(time.Second) // observing that nothing changes over a few lease refreshes, not synchronising
	}
	t.Logf("standby: %s", judge(standby, true).Output())

	killed := time.Now()
	active.Kill()
	var rep verdict.Report
	testenv.Eventually(t, 3*time.Minute, "the standby to take over and pass", func() error {
		rep = judge(standby, true)
		if rep.Status != verdict.Passing {
			return fmt.Errorf("%s: %s", rep.Status, rep.Output())
		}
		return nil
	})
	t.Logf("takeover: the standby passed %s after the active was killed: %s", time.Since(killed).Round(100*time.Millisecond), rep.Output())
}
