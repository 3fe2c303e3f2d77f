package agent

import (
	"cmp"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"
)

// maxTransitions is how many of the latest status changes the agent keeps for its page.
const maxTransitions = 50

// Transition is one change of a node's damped verdict.
type Transition struct {
	Time          time.Time
	Node, Service string
	From, To      string
	Output        string // the check output at that moment: why
}

// recordTransition keeps t among the latest transitions; a.mu must be held.
func (a *Agent) recordTransition(t Transition) {
	if len(a.transitions) == maxTransitions {
		a.transitions = slices.Delete(a.transitions, 0, 1)
	}
	a.transitions = append(a.transitions, t)
}

// Transitions returns the latest status changes, newest first.
func (a *Agent) Transitions() []Transition {
	a.mu.Lock()
	out := slices.Clone(a.transitions)
	a.mu.Unlock()
	slices.Reverse(out)
	return out
}

//go:embed page.html
var pageHTML string

// pageTmpl renders the agent's own page. html/template escapes every value by context: node names come from the
// config or Nomad, but versions, reasons and outputs come from the nodes themselves.
var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return roundAgo(now.Sub(t)) + " ago"
	},
	"stamp": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"secs": func(s float64) string {
		if s <= 0 {
			return ""
		}
		return roundAgo(time.Duration(s * float64(time.Second)))
	},
}).Parse(pageHTML))

func roundAgo(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

// pageNode is one row of the page.
type pageNode struct {
	NodeHealth
	Client, Version string
	Since           time.Time // the last change of status; zero: none since the agent started
	Probed          bool
}

// pageData is what the page shows.
type pageData struct {
	ID          string
	Now         time.Time
	Interval    time.Duration
	Nodes       []pageNode
	Counts      []statusCount // passing, warning, critical: those with nodes
	Transitions []Transition
}

type statusCount struct {
	Status string
	N      int
}

func (a *Agent) pageData() pageData {
	now := a.clock.Now()
	a.mu.Lock()
	d := pageData{ID: a.id, Now: now, Interval: a.cfg.Interval}
	counts := map[string]int{}
	for _, st := range a.nodes {
		client := st.cfg.Client
		if client == "" {
			client = st.client
		}
		n := pageNode{NodeHealth: st.health(), Client: client, Version: st.version, Since: st.changed, Probed: st.report.Probed}
		counts[n.Status]++
		d.Nodes = append(d.Nodes, n)
	}
	d.Transitions = slices.Clone(a.transitions)
	a.mu.Unlock()
	for _, s := range []string{"passing", "warning", "critical"} {
		if counts[s] > 0 {
			d.Counts = append(d.Counts, statusCount{s, counts[s]})
		}
	}
	slices.SortFunc(d.Nodes, func(x, y pageNode) int {
		return cmp.Or(strings.Compare(x.Service, y.Service), strings.Compare(x.Node, y.Node))
	})
	slices.Reverse(d.Transitions)
	if len(d.Transitions) > 20 {
		d.Transitions = d.Transitions[:20]
	}
	return d
}

// servePage writes the agent's page: its nodes with their verdicts, and the latest transitions.
func (a *Agent) servePage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	// No script runs on this page, whatever a node answered: escaping is the first guard, this the second.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'")
	if err := pageTmpl.Execute(w, a.pageData()); err != nil {
		a.log.Debug("render page failed", "error", err)
		fmt.Fprintf(w, "\n<p>render failed: %s</p>", template.HTMLEscapeString(err.Error()))
	}
}
