package probe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strconv"
	"strings"
)

// ChainlinkRecentRuns is how many of the most recent pipeline runs a Chainlink probe looks at for failures.
const ChainlinkRecentRuns = 20

// ErrCredentialsRefused says a Chainlink node answered 401 or 403 to the configured API credentials.
var ErrCredentialsRefused = errors.New("credentials refused")

// jsonAPIDoc is a JSON:API document whose data is a list of resources with attributes of type A.
type jsonAPIDoc[A any] struct {
	Data []struct {
		Type       string `json:"type"`
		ID         string `json:"id"`
		Attributes A      `json:"attributes"`
	} `json:"data"`
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
}

// failed reports whether a run ended with a fatal error: a non-null entry in fatalErrors (or errors, on versions
// that predate fatalErrors).
func (r *chainlinkRun) failed() bool {
	errs := r.FatalErrors
	if errs == nil {
		errs = r.Errors
	}
	for _, e := range errs {
		if e != nil {
			return true
		}
	}
	return false
}

// probeChainlink asks a Chainlink node for its /health checks and, when API credentials are configured, for its EVM
// keys and balances, its build version and the outcome of its most recent job runs.
func probeChainlink(ctx context.Context, hc *http.Client, t Target) Result {
	r := Result{Client: "chainlink"}
	base := strings.TrimRight(t.URL, "/")

	healthErr := chainlinkHealth(ctx, hc, base, &r)
	if t.APIKey == "" || t.APISecret == "" || ctx.Err() != nil {
		r.Err = healthErr
		return r
	}
	keysErr := chainlinkKeys(ctx, hc, base, t, &r)
	var runsErr error
	if !errors.Is(keysErr, ErrCredentialsRefused) { // don't knock twice with refused credentials
		runsErr = chainlinkRuns(ctx, hc, base, t, &r)
		chainlinkVersion(ctx, hc, base, t, &r)
	}
	r.Err = joinErrors(healthErr, keysErr, runsErr)
	return r
}

// chainlinkHealth reads GET /health. 200 with every check passing is healthy; any other status (207 in current
// versions, 503 in older ones) or any failing check is not: some versions answer 200 while listing failing checks.
func chainlinkHealth(ctx context.Context, hc *http.Client, base string, r *Result) error {
	var doc jsonAPIDoc[chainlinkCheck]
	status, err := chainlinkGet(ctx, hc, base, "/health", nil, &doc)
	if err != nil {
		return err
	}
	var failing []string
	var detail strings.Builder
	for i := range doc.Data {
		c := &doc.Data[i].Attributes
		if c.Status == "passing" {
			continue
		}
		name := c.Name
		if name == "" {
			name = doc.Data[i].ID
		}
		failing = append(failing, name)
		if detail.Len() < maxErrText {
			if detail.Len() > 0 {
				detail.WriteString(", ")
			}
			detail.WriteString(name)
			if out := strings.TrimSpace(c.Output); out != "" {
				detail.WriteString(" (" + clip(out, 120) + ")")
			}
		}
	}
	r.FailingChecks = failing
	switch {
	case len(failing) > 0:
		return fmt.Errorf("GET /health: HTTP %d, %d failing check(s): %s", status, len(failing),
			clip(detail.String(), maxErrText))
	case status != http.StatusOK:
		return fmt.Errorf("GET /health: HTTP %d without a failing check listed", status)
	}
	return nil
}

// chainlinkKeys reads GET /v2/keys/evm into r.Wallets.
func chainlinkKeys(ctx context.Context, hc *http.Client, base string, t Target, r *Result) error {
	var doc jsonAPIDoc[chainlinkKey]
	status, err := chainlinkGet(ctx, hc, base, "/v2/keys/evm", &t, &doc)
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
			w.Balance = b
		}
		wallets = append(wallets, w)
	}
	r.Wallets = wallets
	return nil
}

// chainlinkRuns counts the failed runs among the most recent ones (GET /v2/pipeline/runs, newest first).
func chainlinkRuns(ctx context.Context, hc *http.Client, base string, t Target, r *Result) error {
	var doc jsonAPIDoc[chainlinkRun]
	path := "/v2/pipeline/runs?size=" + strconv.Itoa(ChainlinkRecentRuns)
	status, err := chainlinkGet(ctx, hc, base, path, &t, &doc)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("GET /v2/pipeline/runs: HTTP %d", status)
	}
	r.FailedRuns = 0
	for i := range doc.Data {
		if doc.Data[i].Attributes.failed() {
			r.FailedRuns++
		}
	}
	r.RunsChecked = true
	return nil
}

// chainlinkVersion reads GET /v2/build_info ({"version":..., "commitSHA":...}), which needs credentials and does
// not exist on old versions: any failure just leaves the version empty.
func chainlinkVersion(ctx context.Context, hc *http.Client, base string, t Target, r *Result) {
	var info struct {
		Version string `json:"version"`
	}
	if status, err := chainlinkGet(ctx, hc, base, "/v2/build_info", &t, &info); err == nil && status == http.StatusOK {
		r.Version = clip(info.Version, 128)
	}
}

// chainlinkGet GETs base+path and decodes the JSON body into v whatever the status (the /health body matters on
// 207 and 503 too), except for 401/403, which become ErrCredentialsRefused. With creds set it authenticates with
// the X-API-KEY/X-API-SECRET headers; neither ever appears in an error.
func chainlinkGet(ctx context.Context, hc *http.Client, base, path string, creds *Target, v any) (int, error) {
	endpoint, _, _ := strings.Cut(path, "?")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", endpoint, tidy(err))
	}
	req.Header.Set("Accept", "application/vnd.api+json, application/json")
	if creds != nil {
		req.Header.Set("X-API-KEY", creds.APIKey)
		req.Header.Set("X-API-SECRET", creds.APISecret)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", endpoint, tidy(err))
	}
	defer func() {
		// Drain a little so the connection can be reused, never the whole of a huge body.
		_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
		resp.Body.Close()
	}()
	if creds != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		return resp.StatusCode, fmt.Errorf("GET %s: HTTP %d: API %w", endpoint, resp.StatusCode, ErrCredentialsRefused)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return resp.StatusCode, fmt.Errorf("GET %s: HTTP %d: body is not the expected JSON: %w",
			endpoint, resp.StatusCode, tidy(err))
	}
	return resp.StatusCode, nil
}
