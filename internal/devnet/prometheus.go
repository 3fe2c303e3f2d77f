package devnet

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Prometheus is a real Prometheus server (Debian's `prometheus`) on loopback, scraping chainwarden agents as the
// job "chainwarden" (the name the alert rules expect), with its own storage under the directory it was given.
type Prometheus struct {
	URL  string // http://127.0.0.1:PORT
	Proc *Process
	Dir  string // prometheus.yml, rules.yml, data/
}

// PrometheusOptions say what a Prometheus scrapes and evaluates.
type PrometheusOptions struct {
	Port     int           // 0: a free one
	Targets  []string      // host:port of each agent's HTTP listener
	Interval time.Duration // scrape and rule evaluation interval; default 5s
	Rules    []byte        // a rules file to load; nil: none
}

// StartPrometheus writes prometheus.yml (and rules.yml) under dir, starts Prometheus with its storage in dir/data and
// waits until it is ready with every rule group loaded.
func StartPrometheus(ctx context.Context, dir string, o PrometheusOptions) (*Prometheus, error) {
	bin, err := Bin("prometheus")
	if err != nil {
		return nil, err
	}
	if o.Port == 0 {
		if o.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if o.Interval <= 0 {
		o.Interval = 5 * time.Second
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("prometheus dir: %w", err)
	}
	var cfg strings.Builder
	iv := promDuration(o.Interval)
	fmt.Fprintf(&cfg, "# written by chainwarden's devnet\nglobal:\n  scrape_interval: %s\n  scrape_timeout: %s\n  evaluation_interval: %s\n",
		iv, iv, iv)
	groups := 0
	if o.Rules != nil {
		groups = len(groupLine.FindAll(o.Rules, -1))
		if err := os.WriteFile(filepath.Join(dir, "rules.yml"), o.Rules, 0o644); err != nil {
			return nil, fmt.Errorf("prometheus rules: %w", err)
		}
		cfg.WriteString("rule_files: [rules.yml]\n")
	}
	targets, _ := json.Marshal(o.Targets) // a YAML flow sequence of quoted strings
	fmt.Fprintf(&cfg, "scrape_configs:\n  - job_name: chainwarden\n    static_configs:\n      - targets: %s\n", targets)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		return nil, fmt.Errorf("prometheus config: %w", err)
	}
	p := &Prometheus{URL: fmt.Sprintf("http://127.0.0.1:%d", o.Port), Dir: dir}
	p.Proc, err = Start(dir, dir, nil, "prometheus", bin, "--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+strings.TrimPrefix(p.URL, "http://"),
		"--storage.tsdb.retention.time=1d", "--log.level=warn")
	if err != nil {
		return nil, err
	}
	err = Poll(ctx, 60*time.Second, "prometheus ready with its rules", p.Proc, func() error {
		if err := getOK(p.URL + "/-/ready"); err != nil {
			return err
		}
		var rules struct {
			Data struct {
				Groups []json.RawMessage `json:"groups"`
			} `json:"data"`
		}
		if err := getJSON(p.URL+"/api/v1/rules", &rules); err != nil {
			return err
		}
		if len(rules.Data.Groups) != groups {
			return fmt.Errorf("%d rule groups loaded, want %d", len(rules.Data.Groups), groups)
		}
		return nil
	})
	return p, err
}

// Stop kills Prometheus; its data stays in Dir.
func (p *Prometheus) Stop() { p.Proc.Kill() }

// AlertsPage is the URL of the page listing alert rules and their alerts: /alerts in Prometheus builds with the
// React UI, /classic/alerts in Debian's (which ships only the classic, server-rendered UI).
func (p *Prometheus) AlertsPage() string { return p.UIPage("alerts") }

// UIPage is the URL of one of the web UI's pages ("alerts", "graph", "targets", ...): /NAME where the React UI is
// built in, else /classic/NAME.
func (p *Prometheus) UIPage(name string) string {
	for _, path := range []string{"/" + name, "/classic/" + name} {
		if getOK(p.URL+path) == nil {
			return p.URL + path
		}
	}
	return p.URL + "/" + name
}

var groupLine = regexp.MustCompile(`(?m)^\s*-\s+name:`)

var forLine = regexp.MustCompile(`(?m)^(\s+for:\s*)(\S+)[ \t]*$`)

// ShortenFor returns a rules file with every rule's `for:` longer than d set to d, and how many it changed: the
// demo and the tests load the shipped rules so that an alert fires within a minute of its cause, not five. Every
// other line stays as it was.
func ShortenFor(rules []byte, d time.Duration) ([]byte, int) {
	n := 0
	out := forLine.ReplaceAllFunc(rules, func(line []byte) []byte {
		m := forLine.FindSubmatch(line)
		if cur, err := time.ParseDuration(string(m[2])); err == nil && cur <= d {
			return line
		}
		n++
		return append(append([]byte{}, m[1]...), promDuration(d)...)
	})
	return out, n
}

// promDuration writes d as Prometheus reads durations: whole seconds ("90s"), or milliseconds below a second.
func promDuration(d time.Duration) string {
	if d%time.Second != 0 && d < time.Second {
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}

// noRedirects answers a redirect itself, so that a page that only redirects elsewhere is not taken for the page.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func getOK(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := noRedirects.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}

func getJSON(url string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
