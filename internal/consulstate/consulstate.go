// Package consulstate edits what a stopped Consul agent restores from its data dir. Its one job: forget the
// registrations chainwarden's agent made (services tagged "chainwarden", their checks and the checks' last TTL
// state) before Consul starts, so that after a host restart Consul does not serve a "passing" nobody has judged
// since: the agent registers them again, critical until its first pass judges them.
//
// Why it is needed: the Consul agent persists every service and check registered through its API under
// DATA_DIR/services and DATA_DIR/checks, and a TTL check's last status under DATA_DIR/checks/state until its TTL
// runs out; it restores both at start. A re-registration carries the check's current status into the persisted
// definition, so removing only the state would still restore "passing".
package consulstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Forgotten is what Forget removed.
type Forgotten struct {
	Services []string // service IDs
	Checks   []string // check IDs
}

type persistedService struct {
	Service *struct {
		ID   string
		Tags []string
	}
}

type persistedCheck struct {
	Check *struct {
		CheckID   string
		ServiceID string
	}
}

// Forget removes from a stopped Consul agent's data dir every persisted service tagged tag, then their checks and
// the checks' saved state. Services go first: a check left without its service is dropped by Consul at start,
// a service left without its check would pass. Files it cannot read or parse are left as they are and named in the
// error; nothing else is touched. A data dir that does not exist yet or holds no services (a fresh host) is no error.
func Forget(dataDir, tag string) (Forgotten, error) {
	var out Forgotten
	if tag == "" {
		return out, errors.New("consulstate: no tag given")
	}
	if _, err := os.Stat(dataDir); errors.Is(err, os.ErrNotExist) {
		return out, nil // a host's first start, or a wiped data dir: Consul restores nothing either
	} else if err != nil {
		return out, fmt.Errorf("consul data dir: %w", err)
	}
	var errs []error
	ids := map[string]bool{}
	for _, path := range files(filepath.Join(dataDir, "services"), &errs) {
		var p persistedService
		if err := readJSON(path, &p); err != nil {
			errs = append(errs, err)
			continue
		}
		if p.Service == nil || !slices.Contains(p.Service.Tags, tag) {
			continue
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
			continue
		}
		ids[p.Service.ID] = true
		out.Services = append(out.Services, p.Service.ID)
	}
	if len(ids) == 0 {
		return out, errors.Join(errs...)
	}
	checks := filepath.Join(dataDir, "checks")
	for _, path := range files(checks, &errs) {
		var p persistedCheck
		if err := readJSON(path, &p); err != nil {
			errs = append(errs, err)
			continue
		}
		if p.Check == nil || !ids[p.Check.ServiceID] {
			continue
		}
		// The saved TTL state has the same file name under checks/state.
		state := filepath.Join(checks, "state", filepath.Base(path))
		if err := os.Remove(state); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
			continue
		}
		out.Checks = append(out.Checks, p.Check.CheckID)
	}
	return out, errors.Join(errs...)
}

// files lists the regular files of dir (none when it does not exist).
func files(dir string, errs *[]error) []string {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		*errs = append(*errs, err)
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.HasSuffix(e.Name(), ".tmp") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: not a persisted consul registration (left as it is): %w", path, err)
	}
	return nil
}
