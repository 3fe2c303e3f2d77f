package consultemplates

import (
	"fmt"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

const service = "eth-devnet"

// serverState says how a node appears in a rendered config: "absent", "server", "backup" (or "mixed").
func serverState(kind, conf, node string) string {
	var lines []string
	for _, l := range strings.Split(conf, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "server" {
			continue
		}
		if (kind == "nginx" && strings.Contains(l, "# "+node+" ")) || (kind == "haproxy" && f[1] == node) {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "absent"
	}
	backups := 0
	for _, l := range lines {
		if strings.Contains(l, " backup") {
			backups++
		}
	}
	switch backups {
	case 0:
		return "server"
	case len(lines):
		return "backup"
	}
	return "mixed"
}

// expectStates returns a config condition: each node in the given state.
func expectStates(kind string, want map[string]string) func(string) error {
	return func(conf string) error {
		for node, st := range want {
			if got := serverState(kind, conf, node); got != st {
				return fmt.Errorf("%s is %s, want %s", node, got, st)
			}
		}
		return nil
	}
}

func TestUpstreamsFollowNodeHealth(t *testing.T) {
	consul := testenv.StartConsul(t)
	nodes := map[string]*fakeNode{}
	for _, n := range []string{"geth-a", "geth-b", "geth-c"} {
		nodes[n] = newFakeNode(t, n)
	}
	fallback := newFakeNode(t, "fallback")
	var proxies []*proxy
	for _, kind := range proxyKinds {
		proxies = append(proxies, startProxy(t, kind, consul, "CHAINWARDEN_FALLBACK_KEY_ETH_DEVNET=k3y-123"))
	}

	// step drives Consul, waits for every proxy's config to show want, then checks who answers.
	step := func(name string, want map[string]string, answer func(got map[string]int) error) {
		t.Helper()
		for _, p := range proxies {
			p.waitConfig(t, name, expectStates(p.kind, want))
			testenv.Eventually(t, 10*time.Second, p.kind+" traffic: "+name, func() error {
				return answer(responders(t, p.URL+"/"+service, 24))
			})
		}
	}
	errorOnly := func(msg string) func(map[string]int) error {
		return func(got map[string]int) error {
			if len(got) != 1 || got["error: "+msg] == 0 {
				return fmt.Errorf("want only the error %q, got %v", msg, got)
			}
			return nil
		}
	}

	// No service at all: still a valid config, serving a JSON-RPC error.
	step("no services", nil, errorOnly("no such chainwarden service; use /<service>"))

	for n, f := range nodes {
		register(t, consul, service, n, "127.0.0.1", f.port(), "passing", nil)
	}
	all := map[string]string{"geth-a": "server", "geth-b": "server", "geth-c": "server"}
	step("all passing", all, func(got map[string]int) error { return only(got, "geth-a", "geth-b", "geth-c") })

	setStatus(t, consul, "geth-b", "warning")
	step("b warning", map[string]string{"geth-a": "server", "geth-b": "backup", "geth-c": "server"},
		func(got map[string]int) error { return only(got, "geth-a", "geth-c") })

	setStatus(t, consul, "geth-a", "critical")
	setStatus(t, consul, "geth-c", "critical")
	step("only b, warning", map[string]string{"geth-a": "absent", "geth-b": "server", "geth-c": "absent"},
		func(got map[string]int) error { return only(got, "geth-b") })

	setStatus(t, consul, "geth-b", "critical")
	none := map[string]string{"geth-a": "absent", "geth-b": "absent", "geth-c": "absent"}
	step("all critical, no fallback", none, errorOnly("no healthy node for "+service))

	if _, err := consul.Client.KV().Put(&consulapi.KVPair{Key: "chainwarden/fallback/" + service,
		Value: []byte(fmt.Sprintf("http://127.0.0.1:%d/v3/{key}", fallback.port()))}, nil); err != nil {
		t.Fatal(err)
	}
	step("all critical, fallback", none, func(got map[string]int) error { return only(got, "fallback") })
	if got := fallback.last(); got.Path != "/v3/k3y-123" || got.Host != "127.0.0.1" {
		t.Errorf("fallback saw path %q host %q, want /v3/k3y-123 and 127.0.0.1", got.Path, got.Host)
	}

	setStatus(t, consul, "geth-a", "passing")
	step("a back", map[string]string{"geth-a": "server", "geth-b": "absent", "geth-c": "absent"},
		func(got map[string]int) error { return only(got, "geth-a") })

	// The fallback also backs up a node that fails without Consul knowing yet (reads only).
	nodes["geth-a"].Srv.Close()
	for _, p := range proxies {
		testenv.Eventually(t, 10*time.Second, p.kind+" fallback behind a dead node", func() error {
			return only(responders(t, p.URL+"/"+service, 6), "fallback")
		})
	}

	for n := range nodes {
		if err := consul.Client.Agent().ServiceDeregister(n); err != nil {
			t.Fatal(err)
		}
	}
	step("deregistered", nil, errorOnly("no such chainwarden service; use /<service>"))
	for _, p := range proxies {
		if strings.Contains(p.liveConfig(t), "k3y-123") && p.kind == "nginx" {
			t.Errorf("the fallback key stayed in the config after the service left")
		}
	}
}
