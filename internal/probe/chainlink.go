package probe

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chainwarden/chainwarden/internal/clock"
)

// ChainlinkRecentRuns is how many of the most recent pipeline runs a Chainlink probe looks at for failures.
const ChainlinkRecentRuns = 20

// chainlinkMaxJobs caps how many failed jobs a probe names (one GET /v2/jobs/ID each, cached).
const chainlinkMaxJobs = 3

var (
	// ErrCredentialsRefused says a Chainlink node refused the configured API credentials.
	ErrCredentialsRefused = errors.New("credentials refused")
	// ErrDatabaseUnreachable says a Chainlink node cannot reach its database: it answers every authenticated
	// request with 401 and the database dial error (there is no database check in /health).
	ErrDatabaseUnreachable = errors.New("database unreachable")
	// errLogin marks a failed session login: the other authenticated calls are not tried after it.
	errLogin = errors.New("log in with the API email and password")
)

// Check is one Chainlink /health check.
type Check struct {
	Name   string
	Output string
}

// RunFailure is a job whose recent run failed, with the run's first error.
type RunFailure struct {
	JobID string
	Job   string // the job's name; "" when it could not be read
	Error string
}

// ChainlinkSession is what a Chainlink probe keeps of a node between probes: its login cookie and the results of
// the authenticated checks, reused until Target.AuthEvery has passed. One per node; safe for concurrent use.
type ChainlinkSession struct {
	clock clock.Clock

	mu      sync.Mutex
	cookies []*http.Cookie // from POST /sessions; renewed on 401
	// The last failed login and when: logins are not retried for LoginRetry after a failure (a node that cannot
	// reach its database refuses every login, and answers a burst of them with HTTP 429).
	loginErr error
	loginAt  time.Time
	jobs     map[string]string // job id -> name
	last     chainlinkAuthed   // the last successful authenticated checks
	lastAt   time.Time         // when they ran; zero: never
}

// NewChainlinkSession returns an empty session whose cadence follows c (nil: the wall clock).
func NewChainlinkSession(c clock.Clock) *ChainlinkSession {
	return &ChainlinkSession{clock: clock.OrReal(c), jobs: map[string]string{}}
}

// chainlinkAuthed is what the authenticated checks learn.
type chainlinkAuthed struct {
	wallets     []Wallet
	failedRuns  int
	runsChecked bool
	failures    []RunFailure
	version     string
}

// jsonAPIDoc is a JSON:API document whose data is a list of resources with attributes of type A.
type jsonAPIDoc[A any] struct {
	Data []jsonAPIResource[A] `json:"data"`
}

type jsonAPIResource[A any] struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	Attributes A      `json:"attributes"`
}

// chainlinkCheck is one entry of GET /health (presenters.Check).
type chainlinkCheck struct {
	Name   string `json:"name"`
	Status string `json:"status"` // "passing" or "failing"
	Output string `json:"output"`
}

// chainlinkKey is one entry of GET /v2/keys/evm (presenters.ETHKeyResource, type "eTHKeys").
type chainlinkKey struct {
	Address    string       `json:"address"`
	EVMChainID json.Number  `json:"evmChainID"` // a decimal string; a number is accepted too
	EthBalance *json.Number `json:"ethBalance"` // wei as a decimal string; null when the node could not fetch it
	Disabled   bool         `json:"disabled"`
}

// chainlinkRun is one entry of GET /v2/pipeline/runs (presenters.PipelineRunResource).
type chainlinkRun struct {
	FatalErrors []*string `json:"fatalErrors"`
	Errors      []*string `json:"errors"` // before fatalErrors existed, errors held the fatal ones
	// AllErrors holds the tasks' own errors; fatalErrors of a failed run only says "task inputs: too many errors".
	AllErrors    []*string `json:"allErrors"`
	PipelineSpec struct {
		JobID json.Number `json:"jobID"`
	} `json:"pipelineSpec"`
}

// failed reports whether a run ended with a fatal error: a non-null entry in fatalErrors (or errors, on versions
// that predate fatalErrors).
func (r *chainlinkRun) failed() bool {
	errs := r.FatalErrors
	if errs == nil {
		errs = r.Errors
	}
	return firstError(errs) != ""
}

// firstError is the first non-null, non-empty entry of errs.
func firstError(errs []*string) string {
	for _, e := range errs {
		if e != nil && strings.TrimSpace(*e) != "" {
			return strings.TrimSpace(*e)
		}
	}
	return ""
}

// cause is the most telling error of a failed run: the first task error of allErrors, else the fatal one.
func (r *chainlinkRun) cause() string {
	if e := firstError(r.AllErrors); e != "" {
		return e
	}
	if e := firstError(r.FatalErrors); e != "" {
		return e
	}
	return firstError(r.Errors)
}

// chainlinkCreds is how a probe authenticates.
type chainlinkCreds struct {
	key, secret     string // a user token
	email, password string // a session login
}

func (c chainlinkCreds) none() bool { return c.secret == "" && c.password == "" }

// credentials reads t's credentials; the .api file is read at each probe, so a rotated password is picked up.
func (t *Target) credentials() (chainlinkCreds, error) {
	c := chainlinkCreds{key: t.APIKey, secret: t.APISecret, email: t.APIEmail, password: t.APIPassword}
	if c.key == "" || c.secret == "" {
		c.key, c.secret = "", ""
	}
	if t.APICredentialsFile != "" && c.secret == "" && c.password == "" {
		b, err := os.ReadFile(t.APICredentialsFile)
		if err != nil {
			return c, fmt.Errorf("API credentials file: %w", err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) < 2 || strings.TrimSpace(lines[0]) == "" || strings.TrimSpace(lines[1]) == "" {
			return c, fmt.Errorf("API credentials file %s: want the email on the first line and the password on the second",
				t.APICredentialsFile)
		}
		c.email, c.password = strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1])
	}
	if c.email == "" || c.password == "" {
		c.email, c.password = "", ""
	}
	return c, nil
}

// probeChainlink asks a Chainlink node for its /health checks and, when API credentials are configured, for its EVM
// keys and balances, the outcome of its most recent job runs and its version: those at most every t.AuthEvery,
// reusing the last results in between (each call of /v2/keys/evm makes the node log an error when it has no LINK
// contract). A node that does not answer at all gives one reason, not one per call.
func probeChainlink(ctx context.Context, hc *http.Client, t Target) Result {
	r := Result{Client: "chainlink"}
	base := strings.TrimRight(t.URL, "/")

	answered, healthErr := chainlinkHealth(ctx, hc, base, &r)
	creds, credErr := t.credentials()
	if !answered || ctx.Err() != nil || (creds.none() && credErr == nil) {
		r.Err = healthErr
		return r
	}
	if credErr != nil {
		r.Err = joinErrors(healthErr, credErr)
		return r
	}
	s := t.Session
	if s == nil {
		s = NewChainlinkSession(nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if t.Session != nil && t.AuthEvery > 0 && !s.lastAt.IsZero() && now.Sub(s.lastAt) < t.AuthEvery {
		s.last.apply(&r)
		r.AuthAge = now.Sub(s.lastAt)
		r.Err = healthErr
		return r
	}
	c := chainlinkClient{hc: hc, base: base, creds: creds, s: s}
	a, authErr := c.authenticated(ctx)
	if authErr == nil {
		s.last, s.lastAt = a, now
	}
	a.apply(&r)
	r.Err = joinErrors(healthErr, authErr)
	return r
}

func (a *chainlinkAuthed) apply(r *Result) {
	r.Wallets = a.wallets
	r.FailedRuns, r.RunsChecked, r.RunFailures = a.failedRuns, a.runsChecked, a.failures
	if a.version != "" {
		r.Version = a.version
	}
}

// chainlinkHealth reads GET /health into r.FailingChecks. answered is false when the node gave no answer that
// could be read. Any status with a list of checks is an answer (200 all passing; 207 in current versions and 503 in
// older ones when some fail; some versions answer 200 while listing failing checks).
func chainlinkHealth(ctx context.Context, hc *http.Client, base string, r *Result) (answered bool, err error) {
	var doc jsonAPIDoc[chainlinkCheck]
	status, err := chainlinkDo(ctx, hc, http.MethodGet, base, "/health", nil, nil, &doc)
	if err != nil {
		return false, err
	}
	var failing []Check
	for i := range doc.Data {
		c := &doc.Data[i].Attributes
		if c.Status == "passing" {
			continue
		}
		name := c.Name
		if name == "" {
			name = doc.Data[i].ID
		}
		if strings.TrimSpace(name) == "" {
			name = "(unnamed check)"
		}
		failing = append(failing, Check{Name: clip(name, 128), Output: clip(strings.TrimSpace(c.Output), 200)})
	}
	r.FailingChecks = failing
	if len(failing) == 0 && status != http.StatusOK {
		return true, fmt.Errorf("GET /health: HTTP %d without a failing check listed", status)
	}
	return true, nil
}

// chainlinkClient makes the authenticated calls of one probe. The caller holds s.mu.
type chainlinkClient struct {
	hc    *http.Client
	base  string
	creds chainlinkCreds
	s     *ChainlinkSession
}

// authenticated runs the authenticated checks. The first failure that is about the node rather than the call (the
// credentials, the database) stops the others: one reason per cause.
func (c *chainlinkClient) authenticated(ctx context.Context) (chainlinkAuthed, error) {
	var a chainlinkAuthed
	if err := c.keys(ctx, &a); err != nil {
		if errors.Is(err, ErrCredentialsRefused) || errors.Is(err, ErrDatabaseUnreachable) || errors.Is(err, errLogin) ||
			ctx.Err() != nil {
			return a, err
		}
		runsErr := c.runs(ctx, &a)
		return a, joinErrors(err, runsErr)
	}
	runsErr := c.runs(ctx, &a)
	if ctx.Err() == nil && !errors.Is(runsErr, ErrDatabaseUnreachable) {
		c.version(ctx, &a)
	}
	return a, runsErr
}

// keys reads GET /v2/keys/evm into a.wallets.
func (c *chainlinkClient) keys(ctx context.Context, a *chainlinkAuthed) error {
	var doc jsonAPIDoc[chainlinkKey]
	status, err := c.get(ctx, "/v2/keys/evm", &doc)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("GET /v2/keys/evm: HTTP %d", status)
	}
	wallets := make([]Wallet, 0, len(doc.Data))
	for i := range doc.Data {
		k := &doc.Data[i].Attributes
		if doc.Data[i].Type != "" && doc.Data[i].Type != "eTHKeys" {
			continue
		}
		w := Wallet{Address: clip(k.Address, 64), ChainID: clip(k.EVMChainID.String(), 80), Disabled: k.Disabled}
		if k.EthBalance != nil { // null: the node could not read the balance, which is unknown, not zero
			b, ok := new(big.Int).SetString(k.EthBalance.String(), 10)
			if !ok {
				return fmt.Errorf("GET /v2/keys/evm: key %s: ethBalance %q is not a whole number of wei",
					w.Address, clip(k.EthBalance.String(), 40))
			}
			if b.Sign() < 0 {
				return fmt.Errorf("GET /v2/keys/evm: key %s: ethBalance %q is negative", w.Address, clip(k.EthBalance.String(), 40))
			}
			w.Balance = b
		}
		wallets = append(wallets, w)
	}
	a.wallets = wallets
	return nil
}

// runs counts the failed runs among the most recent ones (GET /v2/pipeline/runs) and names their jobs.
func (c *chainlinkClient) runs(ctx context.Context, a *chainlinkAuthed) error {
	var doc jsonAPIDoc[chainlinkRun]
	path := "/v2/pipeline/runs?size=" + strconv.Itoa(ChainlinkRecentRuns)
	status, err := c.get(ctx, path, &doc)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("GET /v2/pipeline/runs: HTTP %d", status)
	}
	// The order of runs is not guaranteed: newest first by id, which grows.
	runs := doc.Data
	slices.SortStableFunc(runs, func(x, y jsonAPIResource[chainlinkRun]) int {
		xi, _ := strconv.ParseInt(x.ID, 10, 64)
		yi, _ := strconv.ParseInt(y.ID, 10, 64)
		return cmp.Compare(yi, xi)
	})
	a.failedRuns, a.failures = 0, nil
	for i := range runs {
		run := &runs[i].Attributes
		if !run.failed() {
			continue
		}
		a.failedRuns++
		job := clip(run.PipelineSpec.JobID.String(), 20)
		if len(a.failures) >= chainlinkMaxJobs || slices.ContainsFunc(a.failures, func(f RunFailure) bool { return f.JobID == job }) {
			continue
		}
		a.failures = append(a.failures, RunFailure{JobID: job, Error: clip(run.cause(), 200)})
	}
	a.runsChecked = true
	for i := range a.failures {
		a.failures[i].Job = c.jobName(ctx, a.failures[i].JobID)
	}
	return nil
}

// jobName reads a job's name (GET /v2/jobs/ID), cached in the session; "" when it cannot be read.
func (c *chainlinkClient) jobName(ctx context.Context, id string) string {
	if _, err := strconv.ParseUint(id, 10, 32); err != nil {
		return ""
	}
	if name, ok := c.s.jobs[id]; ok {
		return name
	}
	var doc struct {
		Data struct {
			Attributes struct {
				Name string `json:"name"`
			} `json:"attributes"`
		} `json:"data"`
	}
	if status, err := c.get(ctx, "/v2/jobs/"+id, &doc); err != nil || status != http.StatusOK {
		return ""
	}
	name := clip(doc.Data.Attributes.Name, 80)
	if len(c.s.jobs) > 1000 { // jobs come and go; don't keep them all forever
		clear(c.s.jobs)
	}
	c.s.jobs[id] = name
	return name
}

// version reads GET /v2/build_info ({"version":..., "commitSHA":...}), which does not exist on old versions: any
// failure just leaves the version empty.
func (c *chainlinkClient) version(ctx context.Context, a *chainlinkAuthed) {
	var info struct {
		Version string `json:"version"`
	}
	if status, err := c.get(ctx, "/v2/build_info", &info); err == nil && status == http.StatusOK {
		a.version = clip(info.Version, 128)
	}
}

// get GETs an authenticated path: with the token headers, or with the session cookie, logging in first when
// there is none and once more when the node no longer accepts it (sessions expire).
func (c *chainlinkClient) get(ctx context.Context, path string, v any) (int, error) {
	if c.creds.secret != "" {
		h := http.Header{"X-API-KEY": {c.creds.key}, "X-API-SECRET": {c.creds.secret}}
		return chainlinkDo(ctx, c.hc, http.MethodGet, c.base, path, h, nil, v)
	}
	fresh := false
	if len(c.s.cookies) == 0 {
		if err := c.login(ctx); err != nil {
			return 0, err
		}
		fresh = true
	}
	status, err := c.getWithCookies(ctx, path, v)
	if errors.Is(err, ErrCredentialsRefused) && !fresh {
		c.s.cookies = nil
		if err := c.login(ctx); err != nil {
			return 0, err
		}
		return c.getWithCookies(ctx, path, v)
	}
	return status, err
}

func (c *chainlinkClient) getWithCookies(ctx context.Context, path string, v any) (int, error) {
	h := http.Header{}
	for _, ck := range c.s.cookies {
		h.Add("Cookie", ck.String())
	}
	return chainlinkDo(ctx, c.hc, http.MethodGet, c.base, path, h, nil, v)
}

// LoginRetry is how long a Chainlink session waits after a failed login before it logs in again; meanwhile probes
// report that failure.
const LoginRetry = 30 * time.Second

// login makes a session with the operator's email and password (POST /sessions) and keeps its cookie. After a
// failure it answers with that failure, without asking the node, for LoginRetry.
func (c *chainlinkClient) login(ctx context.Context) error {
	now := c.s.clock.Now()
	if c.s.loginErr != nil && now.Sub(c.s.loginAt) < LoginRetry {
		return c.s.loginErr
	}
	err := c.loginNow(ctx)
	c.s.loginErr, c.s.loginAt = err, now
	return err
}

func (c *chainlinkClient) loginNow(ctx context.Context) error {
	body, err := json.Marshal(map[string]string{"email": c.creds.email, "password": c.creds.password})
	if err != nil {
		return fmt.Errorf("POST /sessions: %w", err)
	}
	var doc json.RawMessage
	status, cookies, err := chainlinkRequest(ctx, c.hc, http.MethodPost, c.base, "/sessions", nil, body, &doc)
	// A node that cannot reach its database answers logins with a bare HTTP 500 (v2.23.0): say what to look at.
	hint := ""
	if status/100 == 5 {
		hint = " (the node failed to make a session: is its database reachable?)"
	}
	if err != nil {
		return fmt.Errorf("%w: %w%s", errLogin, err, hint)
	}
	if status != http.StatusOK {
		return fmt.Errorf("%w: POST /sessions: HTTP %d%s%s", errLogin, status, detailSuffix(doc), hint)
	}
	if len(cookies) == 0 {
		return fmt.Errorf("%w: POST /sessions: HTTP 200 without a session cookie", errLogin)
	}
	c.s.cookies = cookies
	return nil
}

// chainlinkDo makes a request and decodes the JSON body into v whatever the status (the /health body matters on
// 207 and 503 too), except for 401/403 (see authError). Credentials never appear in an error.
func chainlinkDo(ctx context.Context, hc *http.Client, method, base, path string, h http.Header, body []byte, v any) (int, error) {
	status, _, err := chainlinkRequest(ctx, hc, method, base, path, h, body, v)
	return status, err
}

func chainlinkRequest(ctx context.Context, hc *http.Client, method, base, path string, h http.Header, body []byte,
	v any) (int, []*http.Cookie, error) {
	endpoint, _, _ := strings.Cut(path, "?")
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, endpoint, tidy(err))
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/vnd.api+json, application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, endpoint, tidy(err))
	}
	defer func() {
		// Drain a little so the connection can be reused, never the whole of a huge body.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		resp.Body.Close()
	}()
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		var doc json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&doc)
		return resp.StatusCode, nil, authError(method, endpoint, resp.StatusCode, doc)
	}
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusServiceUnavailable && !isJSON(resp.Header.Get("Content-Type")) {
		// An error page or a rate limit's plain text (Chainlink answers a burst of logins with 429 and text).
		text, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return resp.StatusCode, nil, fmt.Errorf("%s %s: HTTP %d: %s", method, endpoint, resp.StatusCode,
			clip(strings.TrimSpace(strings.ToValidUTF8(string(text), "?")), 200))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: HTTP %d: body is not the expected JSON: %w",
			method, endpoint, resp.StatusCode, tidy(err))
	}
	return resp.StatusCode, resp.Cookies(), nil
}

// isJSON reports whether a Content-Type is JSON (application/json, application/vnd.api+json, ...).
func isJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(strings.ToLower(mt))
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

// databaseErrorRE matches what Chainlink's auth middleware answers when its database lookup fails (pgx's
// "failed to connect to `host=... user=... database=...`: dial error (dial tcp 127.0.0.1:5432: connect: connection
// refused)"), as opposed to "Authentication failed" for wrong credentials.
var databaseErrorRE = regexp.MustCompile(`failed to connect to|dial (tcp|unix)|connection refused|SQLSTATE|` +
	`the database system|no such host|server closed the connection|driver: bad connection|sql: database is closed`)

// authError turns a 401/403 into ErrDatabaseUnreachable when the node says its database is the cause, else into
// ErrCredentialsRefused, keeping the node's own detail either way.
func authError(method, endpoint string, status int, doc json.RawMessage) error {
	detail := errorDetail(doc)
	if detail != "" && databaseErrorRE.MatchString(detail) {
		return fmt.Errorf("%w (the node answers %s %s with HTTP %d: %s)", ErrDatabaseUnreachable, method, endpoint,
			status, clip(detail, 300))
	}
	if detail == "" {
		return fmt.Errorf("%s %s: HTTP %d: API %w", method, endpoint, status, ErrCredentialsRefused)
	}
	return fmt.Errorf("%s %s: HTTP %d: API %w: %s", method, endpoint, status, ErrCredentialsRefused, clip(detail, 200))
}

// errorDetail is the detail of a JSON:API error document ({"errors":[{"detail":"..."}]}), "" when there is none.
func errorDetail(doc json.RawMessage) string {
	var e struct {
		Errors []struct {
			Detail string `json:"detail"`
		} `json:"errors"`
	}
	if json.Unmarshal(doc, &e) != nil {
		return ""
	}
	for _, d := range e.Errors {
		if s := strings.TrimSpace(d.Detail); s != "" {
			return s
		}
	}
	return ""
}

func detailSuffix(doc json.RawMessage) string {
	if d := errorDetail(doc); d != "" {
		return ": " + clip(d, 200)
	}
	return ""
}
