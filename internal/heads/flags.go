package heads

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Flag is a source (a node or a reference) an agent found not to count toward its network's head, as stored in KV
// at PREFIX/flags/SERVICE/AGENT/SOURCE, for `chainwarden status` to show: a node's own check says why as well, a
// reference has no check.
type Flag struct {
	Service   string    `json:"-"`
	Agent     string    `json:"-"`
	Source    string    `json:"-"`
	Reference bool      `json:"reference,omitempty"`
	Kind      string    `json:"kind"` // not_corroborated | fork
	Reason    string    `json:"reason"`
	Since     time.Time `json:"since"`
	// Key is Reason without the figures that change every pass: the flag is written again only when Kind or Key
	// changes ("" = Reason).
	Key string `json:"-"`
}

func (f *Flag) key() string {
	if f.Key != "" {
		return f.Key
	}
	return f.Reason
}

// PublishFlags makes this agent's flags in KV what flags says: written when new or changed, deleted when cleared.
// The first call also deletes the flags an earlier run of the agent left behind (under its ID or a former one).
func (s *Store) PublishFlags(ctx context.Context, agent string, flags []Flag) error {
	s.mu.Lock()
	first := !s.flagsRead
	s.mu.Unlock()
	if first {
		pairs, _, err := s.kv.List(s.layout.Flags(), (&consulapi.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("read flags from consul kv: %w", err)
		}
		s.mu.Lock()
		for _, p := range pairs {
			if f, ok := decodeFlag(s.layout.Flags(), p, nil); ok && (f.Agent == agent || s.mine(f.Agent)) {
				if _, mine := s.flagged[p.Key]; !mine {
					s.flagged[p.Key] = f // unknown content: deleted below unless flagged again
				}
			}
		}
		s.mu.Unlock()
	}

	var ops consulapi.TxnOps
	want := map[string]Flag{}
	s.mu.Lock()
	for _, f := range flags {
		f.Agent = agent
		k := s.layout.Flag(f.Service, agent, f.Source)
		want[k] = f
		if last, ok := s.flagged[k]; ok && last.Kind == f.Kind && last.key() == f.key() && !first {
			continue
		}
		b, err := json.Marshal(f)
		if err != nil {
			s.mu.Unlock()
			return fmt.Errorf("encode flag: %w", err)
		}
		ops = append(ops, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVSet, Key: k, Value: b}})
	}
	for k := range s.flagged {
		if _, ok := want[k]; !ok {
			ops = append(ops, &consulapi.TxnOp{KV: &consulapi.KVTxnOp{Verb: consulapi.KVDelete, Key: k}})
		}
	}
	s.mu.Unlock()
	if err := s.apply(ctx, ops); err != nil {
		return fmt.Errorf("flags: %w", err)
	}
	s.mu.Lock()
	s.flagged, s.flagsRead = want, true
	s.mu.Unlock()
	return nil
}

// DecodeFlags reads the flags under prefix (PREFIX/flags/), skipping (and logging) entries it can't read.
func DecodeFlags(prefix string, pairs consulapi.KVPairs, log hclog.Logger) []Flag {
	var out []Flag
	for _, p := range pairs {
		if f, ok := decodeFlag(prefix, p, log); ok {
			out = append(out, f)
		}
	}
	return out
}

func decodeFlag(prefix string, p *consulapi.KVPair, log hclog.Logger) (Flag, bool) {
	parts := strings.Split(strings.TrimPrefix(p.Key, prefix), "/")
	var f Flag
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		if log != nil {
			log.Warn("skipping flag", "key", p.Key, "error", ErrBadKey)
		}
		return f, false
	}
	if err := json.Unmarshal(p.Value, &f); err != nil {
		if log != nil {
			log.Warn("skipping flag", "key", p.Key, "error", err)
		}
		return f, false
	}
	f.Service, f.Agent, f.Source = parts[0], parts[1], parts[2]
	return f, true
}
