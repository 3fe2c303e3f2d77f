// Package dashboards holds chainwarden's Grafana dashboards (chainwarden-fleet.json, chainwarden-node.json) and the
// tests that prove them without Grafana: their structure, and every panel query, with the template variables
// substituted as Grafana would, evaluated by a real Prometheus scraping real agents that watch real geth nodes.
package dashboards

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent"
	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/browsertest"
	"github.com/chainwarden/chainwarden/internal/devnet"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	RefID        string      `json:"refId"`
	Expr         string      `json:"expr"`
	LegendFormat string      `json:"legendFormat"`
	Instant      bool        `json:"instant"`
	Datasource   *datasource `json:"datasource"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []target `json:"targets"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Datasource *datasource     `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
}

type dashboard struct {
	file          string
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

func (v variable) query() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var q struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &q)
	return q.Query
}

func load(t *testing.T) []dashboard {
	t.Helper()
	files, err := filepath.Glob("*.json")
	if err != nil || len(files) != 2 {
		t.Fatalf("dashboards %v (%v), want the fleet and node ones", files, err)
	}
	var out []dashboard
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d := dashboard{file: f}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out = append(out, d)
	}
	return out
}

// Grafana's own variables that panel queries may use, and what the test gives them: a scrape interval of 1s makes
// Grafana's $__rate_interval at least 4s; 15s keeps a few samples in every window.
var builtins = map[string]string{"__rate_interval": "15s", "__interval": "2s", "__range": "1m"}

var varRef = regexp.MustCompile(`\$(\w+)|\$\{(\w+)\}`)

var promDS = datasource{Type: "prometheus", UID: "${datasource}"}

// Every dashboard is structured as Grafana expects: a uid, the current schema, a Prometheus datasource variable
// that every panel and query uses, the service and node variables, unique panel ids, panels inside the 24-column
// grid that don't overlap, and queries that name only variables the dashboard defines.
func TestDashboardStructure(t *testing.T) {
	uids := map[string]string{}
	for _, d := range load(t) {
		t.Run(d.file, func(t *testing.T) {
			if d.UID == "" || d.Title == "" || d.SchemaVersion < 39 {
				t.Errorf("uid %q, title %q, schemaVersion %d (want the current schema, 39+)", d.UID, d.Title, d.SchemaVersion)
			}
			if prev, dup := uids[d.UID]; dup {
				t.Errorf("uid %s also in %s", d.UID, prev)
			}
			uids[d.UID] = d.file
			vars := map[string]variable{}
			for _, v := range d.Templating.List {
				vars[v.Name] = v
			}
			if ds, ok := vars["datasource"]; !ok || ds.Type != "datasource" || ds.query() != "prometheus" {
				t.Errorf("no datasource variable for Prometheus: %+v", ds)
			}
			for _, name := range []string{"service", "node"} {
				v, ok := vars[name]
				if !ok || v.Type != "query" || v.Datasource == nil || *v.Datasource != promDS || !strings.HasPrefix(v.query(), "label_values(") {
					t.Errorf("variable %s: %+v", name, v)
				}
				if v.Definition != v.query() {
					t.Errorf("variable %s: definition %q differs from its query %q", name, v.Definition, v.query())
				}
			}
			ids := map[int]string{}
			for i, p := range d.Panels {
				where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
				if p.ID <= 0 || p.Title == "" {
					t.Errorf("%s: no id or title", where)
				}
				if prev, dup := ids[p.ID]; dup {
					t.Errorf("%s: id also used by %q", where, prev)
				}
				ids[p.ID] = p.Title
				if !slices.Contains([]string{"timeseries", "state-timeline", "stat", "table", "bargauge", "gauge"}, p.Type) {
					t.Errorf("%s: type %q", where, p.Type)
				}
				if p.Datasource == nil || *p.Datasource != promDS {
					t.Errorf("%s: datasource %+v, want %+v", where, p.Datasource, promDS)
				}
				g := p.GridPos
				if g == nil || g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
					t.Errorf("%s: gridPos %+v outside the 24-column grid", where, g)
					continue
				}
				for _, q := range d.Panels[:i] {
					o := q.GridPos
					if o != nil && g.X < o.X+o.W && o.X < g.X+g.W && g.Y < o.Y+o.H && o.Y < g.Y+g.H {
						t.Errorf("%s overlaps panel %d %q", where, q.ID, q.Title)
					}
				}
				if len(p.Targets) == 0 {
					t.Errorf("%s: no queries", where)
				}
				refs := map[string]bool{}
				for _, tg := range p.Targets {
					if tg.RefID == "" || refs[tg.RefID] || strings.TrimSpace(tg.Expr) == "" {
						t.Errorf("%s: query %q with refId %q (empty or repeated)", where, tg.Expr, tg.RefID)
					}
					refs[tg.RefID] = true
					if tg.Datasource == nil || *tg.Datasource != promDS {
						t.Errorf("%s: query %s datasource %+v", where, tg.RefID, tg.Datasource)
					}
					for _, m := range varRef.FindAllStringSubmatch(tg.Expr, -1) {
						name := m[1] + m[2]
						if _, ok := vars[name]; !ok && builtins[name] == "" {
							t.Errorf("%s: query %s uses $%s, which the dashboard does not define", where, tg.RefID, name)
						}
					}
				}
			}
		})
	}
}

// substitute replaces the template variables in expr with values (Grafana's built-ins included).
func substitute(expr string, values map[string]string) string {
	return varRef.ReplaceAllStringFunc(expr, func(ref string) string {
		m := varRef.FindStringSubmatch(ref)
		name := m[1] + m[2]
		if v, ok := values[name]; ok {
			return v
		}
		if v, ok := builtins[name]; ok {
			return v
		}
		return ref
	})
}

var labelValuesCall = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

// resolve evaluates the dashboard's variables in order as Grafana does (label_values(selector, label) is Grafana's
// call of Prometheus's /api/v1/label/<label>/values?match[]=selector), each against the values chosen before it, and
// returns the value sets to evaluate the panels with: the first value of each variable, and for a dashboard whose
// variables take several values also "All" (their allValue).
func resolve(ctx context.Context, p promAPI, d dashboard) ([]map[string]string, error) {
	sets := []map[string]string{{}}
	for _, v := range d.Templating.List {
		if v.IncludeAll {
			sets = append(sets, map[string]string{})
			break
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesCall.FindStringSubmatch(v.query())
		if m == nil {
			return nil, fmt.Errorf("%s: variable %s: query %q is not label_values(selector, label)", d.file, v.Name, v.query())
		}
		for i, values := range sets {
			sel := substitute(m[1], values)
			got, err := p.labelValues(ctx, m[2], sel)
			if err != nil || len(got) == 0 {
				return nil, fmt.Errorf("%s: variable %s: label_values(%s, %s): %v %v", d.file, v.Name, sel, m[2], got, err)
			}
			values[v.Name] = got[0]
			if i == 1 && v.IncludeAll {
				values[v.Name] = v.AllValue
			}
		}
	}
	return sets, nil
}

var legendRef = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)

// check evaluates every panel query of d with values as Grafana would for the last minute and returns what is wrong:
// a query Prometheus refuses, one that returns no series, or a legend naming a label its series lack.
func check(ctx context.Context, p promAPI, d dashboard, values map[string]string) []string {
	var problems []string
	end := time.Now()
	for _, pn := range d.Panels {
		for _, tg := range pn.Targets {
			expr := substitute(tg.Expr, values)
			where := fmt.Sprintf("%s panel %d %q query %s: %s", d.file, pn.ID, pn.Title, tg.RefID, expr)
			series, err := p.queryRange(ctx, expr, end.Add(-time.Minute), end, 2*time.Second)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", where, err))
				continue
			}
			if len(series) == 0 {
				problems = append(problems, where+": no series")
				continue
			}
			for _, s := range series {
				for _, m := range legendRef.FindAllStringSubmatch(tg.LegendFormat, -1) {
					if s[m[1]] == "" {
						problems = append(problems, fmt.Sprintf("%s: legend %q names %s, series %v lacks it", where, tg.LegendFormat, m[1], s))
					}
				}
			}
		}
	}
	return problems
}

// promAPI is the part of Prometheus's HTTP API that Grafana's Prometheus data source uses here.
type promAPI struct{ url string }

func (p promAPI) get(ctx context.Context, path string, q url.Values, data any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+path+"?"+q.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("HTTP %d: %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

func (p promAPI) labelValues(ctx context.Context, label, match string) ([]string, error) {
	var values []string
	err := p.get(ctx, "/api/v1/label/"+label+"/values", url.Values{"match[]": {match}}, &values)
	return values, err
}

// queryRange returns the labels of each series the query yields.
func (p promAPI) queryRange(ctx context.Context, expr string, start, end time.Time, step time.Duration) ([]map[string]string, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
		} `json:"result"`
	}
	err := p.get(ctx, "/api/v1/query_range", url.Values{"query": {expr}, "start": {fmt.Sprint(start.Unix())},
		"end": {fmt.Sprint(end.Unix())}, "step": {fmt.Sprint(step.Seconds())}}, &data)
	if err != nil {
		return nil, err
	}
	if data.ResultType != "matrix" {
		return nil, fmt.Errorf("result type %q, want matrix", data.ResultType)
	}
	var out []map[string]string
	for _, r := range data.Result {
		out = append(out, r.Metric)
	}
	return out, nil
}

// startAgent runs an agent in this process, as `chainwarden agent` would, until the test ends; it returns its listen
// address.
func startAgent(t *testing.T, c *testenv.Consul, id, blocks string) string {
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	src := fmt.Sprintf("consul {\n  address = %q\n  check_ttl = \"3s\"\n}\nlisten = %q\ninterval = \"1s\"\nhead_max_age = \"10s\"\n%s",
		c.Addr, listen, blocks)
	cfg, err := config.Parse([]byte(src), id+".hcl")
	if err != nil {
		t.Fatal(err)
	}
	log := hclog.New(&hclog.LoggerOptions{Name: id, Level: hclog.Warn, Output: t.Output()})
	a, err := agent.New(cfg, log, agent.Options{ID: id, Consul: agent.ConsulAPI(c.Client)})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Background(t, "agent "+id, a.Run)
	testenv.WaitHTTP(t, nil, "http://"+listen+"/metrics", 10*time.Second)
	return listen
}

// Every panel query of both dashboards returns series from a real Prometheus scraping two real agents, which watch
// a two-node geth Clique network and a geth --dev (a chain with finality), with a reference each, their variables
// resolved as Grafana would.
func TestEveryPanelQueryReturnsSeries(t *testing.T) {
	testenv.Bin(t, "prometheus")
	dashboards := load(t)
	c := testenv.StartConsul(t)
	net := testenv.StartCliqueNetwork(t, 2)
	dev := testenv.StartGethDev(t, "geth-dev") // a chain with finality (geth --dev finalizes), which Clique has not
	node := func(name, service string, g *testenv.Geth, chainID int) string {
		return fmt.Sprintf("node %q {\n  kind = \"ethereum\"\n  rpc = %q\n  service = %q\n  chain_id = %d\n  min_peers = 0\n}\n",
			name, g.RPC, service, chainID)
	}
	reference := func(name, service string, g *testenv.Geth) string {
		return fmt.Sprintf("reference %q {\n  service = %q\n  rpc = %q\n}\n", name, service, g.RPC)
	}
	a := startAgent(t, c, "host-a", node("clique-0", "eth-devnet", net.Nodes[0], testenv.CliqueChainID)+
		node("geth-dev", "eth-dev", dev, testenv.DevChainID)+
		reference("sealer", "eth-devnet", net.Nodes[0])+reference("dev-self", "eth-dev", dev))
	b := startAgent(t, c, "host-b", node("clique-1", "eth-devnet", net.Nodes[1], testenv.CliqueChainID))
	prom := testenv.StartPrometheus(t, devnet.PrometheusOptions{Targets: []string{a, b}, Interval: time.Second})
	api := promAPI{url: prom.URL}
	ctx := context.Background()
	for _, n := range []string{"clique-0", "clique-1", "geth-dev"} {
		c.WaitCheck(t, n, 60*time.Second, "passing")
	}

	started := time.Now()
	queries := 0
	testenv.Eventually(t, 3*time.Minute, "every panel query returning series", func() error {
		var problems []string
		queries = 0
		for _, d := range dashboards {
			sets, err := resolve(ctx, api, d)
			if err != nil {
				return err
			}
			for _, values := range sets {
				problems = append(problems, check(ctx, api, d, values)...)
				for _, p := range d.Panels {
					queries += len(p.Targets)
				}
			}
		}
		if len(problems) > 0 {
			return fmt.Errorf("%d of %d queries:\n%s", len(problems), queries, strings.Join(problems, "\n"))
		}
		return nil
	})
	t.Logf("%d panel queries (both dashboards, each variable set) returned series %s after the nodes passed",
		queries, time.Since(started).Round(time.Second))

	// Grafana can't run here: Prometheus's own graph page, in a real browser, draws each dashboard's panels (their
	// first query, the variables substituted, the panel's title as a PromQL comment) for a person to look at.
	t.Run("screenshots", func(t *testing.T) {
		br := browsertest.Start(t)
		for _, d := range dashboards {
			sets, err := resolve(ctx, api, d)
			if err != nil {
				t.Fatal(err)
			}
			var graphs []panel
			for _, p := range d.Panels {
				if p.Type != "stat" {
					graphs = append(graphs, p)
				}
			}
			// The classic graph page reads at most 10 graphs from its URL (it sorts g10. before g2.).
			for page := 0; page*10 < len(graphs); page++ {
				q := url.Values{}
				chunk := graphs[page*10 : min(len(graphs), page*10+10)]
				for i, p := range chunk {
					g := fmt.Sprintf("g%d.", i)
					q.Set(g+"expr", "# "+p.Title+"\n"+substitute(p.Targets[0].Expr, sets[0]))
					q.Set(g+"tab", "0")
					q.Set(g+"range_input", "1m")
				}
				br.Open(prom.UIPage("graph") + "?" + q.Encode())
				// Each graph says how long its query took once it is drawn.
				br.Wait(browsertest.Want{Text: []string{fmt.Sprintf(`(Load time: \d+ms[\s\S]*){%d}`, len(chunk))}, Absent: []string{`Error`}})
				br.Screenshot(fmt.Sprintf("%s-%d.png", strings.TrimSuffix(d.file, ".json"), page+1))
			}
		}
	})
}
