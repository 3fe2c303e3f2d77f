// Package restored keeps the marks of chain data volumes just restored from a snapshot: `chainwarden volume
// ensure` (and a restore on `job revert`) writes one for the node that will run on the restored volume, the agent
// reads them to report that node as catching up from the snapshot instead of merely behind, and removes the mark
// once the node has caught up. A mark is a small JSON file per node in a local state directory
// (<state_dir>/restored/<node>.json): the volume work and the agent run on the same host.
package restored

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// DefaultStateDir is where chainwarden keeps local state unless configured otherwise.
const DefaultStateDir = "/var/lib/chainwarden"

// Mark says that a node's volume was just restored from a snapshot.
type Mark struct {
	Node     string    `json:"node"`
	Volume   string    `json:"volume"`
	VolumeID string    `json:"volume_id"`
	Snapshot string    `json:"snapshot"`
	Height   string    `json:"snapshot_height,omitempty"` // the snapshot's height tag ("" or "unknown" when not known)
	Restored time.Time `json:"restored_at"`
}

// nodeName is what a mark's file may be called after (a node name: letters, digits, dashes, dots, underscores).
var nodeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func path(stateDir, node string) (string, error) {
	if !nodeName.MatchString(node) {
		return "", fmt.Errorf("restore mark: %q is not a node name", node)
	}
	return filepath.Join(stateDir, "restored", node+".json"), nil
}

// Write records a mark, replacing the node's previous one; the file is written atomically.
func Write(stateDir string, m Mark) error {
	p, err := path(stateDir, m.Node)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("restore mark: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+m.Node+".tmp*")
	if err != nil {
		return fmt.Errorf("restore mark: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("restore mark: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("restore mark: %w", err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("restore mark: %w", err)
	}
	return nil
}

// List reads every mark; a file that does not parse is reported in the error and skipped, the others are returned.
func List(stateDir string) ([]Mark, error) {
	dir := filepath.Join(stateDir, "restored")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("restore marks: %w", err)
	}
	var out []Mark
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) { // removed meanwhile
				errs = append(errs, fmt.Errorf("restore mark %s: %w", name, err))
			}
			continue
		}
		var m Mark
		if err := json.Unmarshal(b, &m); err != nil || m.Node+".json" != name {
			errs = append(errs, fmt.Errorf("restore mark %s: not a mark of this node (%v)", name, err))
			continue
		}
		out = append(out, m)
	}
	return out, errors.Join(errs...)
}

// Remove deletes a node's mark; none is not an error.
func Remove(stateDir, node string) error {
	p, err := path(stateDir, node)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("restore mark: %w", err)
	}
	return nil
}
