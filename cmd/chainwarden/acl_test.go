package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/consulacl"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

// The shipped ACL policies against a real Consul with ACLs on (deny by default), through the real binary: the
// agent with its policy registers its node and writes its head; with no token, a token Consul does not know or the
// proxy's read-only token it refuses to start, says why, and leaves nothing registered; the proxy's token reads
// what `chainwarden status` shows and is refused writes.
func TestACLPolicies(t *testing.T) {
	testenv.Integration(t)
	// The stricter of Consul's modes: listing a KV folder needs "list".
	c := testenv.StartConsulACL(t, "-hcl", "acl { enable_key_list_policy = true }")
	bin := testenv.GoBuild(t, "./cmd/chainwarden")
	g := testenv.StartGethDev(t, "geth-acl")
	node, err := c.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	agentPolicy := "chainwarden-agent-" + node
	c.CreatePolicy(t, agentPolicy, "../../packer/files/consul-acl/chainwarden-agent.hcl", map[string]string{"NODE_NAME": node})
	c.CreatePolicy(t, "chainwarden-proxy", "../../packer/files/consul-acl/chainwarden-proxy.hcl", nil)
	agentToken := c.CreateToken(t, []string{agentPolicy}, "eth-devnet")
	proxyToken := c.CreateToken(t, []string{"chainwarden-proxy"})

	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	conf := filepath.Join(t.TempDir(), "agent.hcl")
	src := fmt.Sprintf(`consul {
  address = %q
  check_ttl = "3s"
}
listen = %q
interval = "500ms"
node "geth-a" {
  kind = "ethereum"
  rpc = %q
  service = "eth-devnet"
  chain_id = %d
  min_peers = 0
}
`, c.Addr, listen, g.RPC, testenv.DevChainID)
	if err := os.WriteFile(conf, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	// The token reaches the binary as an operator's environment file would give it: never in a file of ours.
	env := func(token string) []string {
		return []string{"CONSUL_HTTP_TOKEN=" + token, "CONSUL_HTTP_TOKEN_FILE=", "CONSUL_HTTP_ADDR="}
	}
	run := func(token string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), env(token)...)
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("%s did not finish in a minute:\n%s", args[0], out)
		}
		return string(out), err
	}

	for _, tc := range []struct {
		name, token string
		want        []string
	}{
		{"missing", "", []string{"no consul token given"}},
		{"wrong", testenv.RandomUUID(t), []string{"consul does not know the token given"}},
		{"read-only", proxyToken, []string{"consul token lacks agent:read on this host's consul node",
			`service:write on "eth-devnet" (register the nodes of eth-devnet)`, `key:write on "chainwarden/heads/eth-devnet/geth-a"`}},
	} {
		t.Run("agent refuses "+tc.name+" token", func(t *testing.T) {
			out, err := run(tc.token, "agent", "-config", conf)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("want exit status 1, got %v:\n%s", err, out)
			}
			for _, want := range append(tc.want, consulacl.Doc) {
				if !strings.Contains(strings.ReplaceAll(out, `\"`, `"`), want) { // the log escapes quotes in values
					t.Fatalf("want %q in:\n%s", want, out)
				}
			}
			if tc.token != "" && strings.Contains(out, tc.token) {
				t.Fatalf("the token is in the output:\n%s", out)
			}
			svcs, _, err := c.Client.Catalog().Services(nil)
			if err != nil {
				t.Fatal(err)
			}
			checks, err := c.Client.Agent().Checks()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := svcs["eth-devnet"]; ok || len(checks) > 0 {
				t.Fatalf("left registered: services %v, checks %v", svcs, checks)
			}
		})
	}

	// The agent's token: the node registered, its check passing, its head in KV, nothing refused.
	agent := testenv.StartIn(t, "", env(agentToken), "agent", bin, "agent", "-config", conf)
	out := c.WaitCheck(t, "geth-a", time.Minute, "passing")
	if !strings.HasPrefix(out, "height ") {
		t.Fatalf("output %q", out)
	}
	proxy := c.TokenClient(t, proxyToken)
	testenv.Eventually(t, 30*time.Second, "head of geth-a readable with the proxy's token", func() error {
		p, _, err := proxy.KV().Get("chainwarden/heads/eth-devnet/geth-a", nil)
		if err != nil || p == nil {
			return fmt.Errorf("head: %v %v", p, err)
		}
		return nil
	})
	entries, _, err := proxy.Health().Service("eth-devnet", "chainwarden", true, nil)
	if err != nil || len(entries) != 1 || entries[0].Service.ID != "geth-a" {
		t.Fatalf("passing eth-devnet with the proxy's token: %v %v", entries, err)
	}
	log, err := os.ReadFile(agent.Log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "consul token checked") || strings.Contains(string(log), "Permission denied") ||
		strings.Contains(string(log), "refused") || strings.Contains(string(log), agentToken) {
		t.Fatalf("agent log:\n%s", log)
	}

	// What the agent does beside registering and publishing heads, made with its token as the agent makes it: a
	// session on its own node holding the restart lock (and head keys), maintenance mode for a snapshot, the
	// check-and-set writes of volume operations. A session on another node is refused.
	ag := c.TokenClient(t, agentToken)
	sid, _, err := ag.Session().Create(&consulapi.SessionEntry{Name: "chainwarden test", TTL: "30s",
		Behavior: consulapi.SessionBehaviorDelete}, nil)
	if err != nil {
		t.Fatalf("session on its node: %v", err)
	}
	if ok, _, err := ag.KV().Acquire(&consulapi.KVPair{Key: "chainwarden/restart/eth-devnet", Session: sid}, nil); err != nil || !ok {
		t.Fatalf("restart lock: %v %v", ok, err)
	}
	if _, err := ag.Session().Destroy(sid, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ag.Session().Create(&consulapi.SessionEntry{Node: "another-host", TTL: "30s"}, nil); !consulacl.IsDenied(err) {
		t.Fatalf("session on another node: %v", err)
	}
	if err := ag.Agent().EnableServiceMaintenance("geth-a", "snapshot"); err != nil {
		t.Fatalf("maintenance: %v", err)
	}
	if err := ag.Agent().DisableServiceMaintenance("geth-a"); err != nil {
		t.Fatalf("maintenance off: %v", err)
	}
	for _, key := range []string{"chainwarden/volume-ops/geth-a", "chainwarden/volumes/geth-a"} {
		ok, _, _, err := ag.Txn().Txn(consulapi.TxnOps{{KV: &consulapi.KVTxnOp{Verb: consulapi.KVCAS, Key: key, Value: []byte("{}")}}}, nil)
		if err != nil || !ok {
			t.Fatalf("check-and-set %s: %v %v", key, ok, err)
		}
	}
	if _, err := ag.KV().Put(&consulapi.KVPair{Key: "chainwarden/proxy/deny_methods", Value: []byte("")}, nil); !consulacl.IsDenied(err) {
		t.Fatalf("the agent's token wrote the proxy's settings: %v", err)
	}

	// The proxy's token only reads.
	if _, err := proxy.KV().Put(&consulapi.KVPair{Key: "chainwarden/heads/eth-devnet/geth-a", Value: []byte("{}")}, nil); !consulacl.IsDenied(err) {
		t.Fatalf("kv write with the proxy's token: %v", err)
	}
	if err := proxy.Agent().ServiceRegister(&consulapi.AgentServiceRegistration{ID: "x", Name: "eth-devnet"}); !consulacl.IsDenied(err) {
		t.Fatalf("service registration with the proxy's token: %v", err)
	}

	// `chainwarden status` reads with the proxy's token, and says why it cannot without a good one.
	if out, err := run(proxyToken, "status", "-consul", c.Addr); err != nil || !strings.Contains(out, "geth-a") ||
		!strings.Contains(out, "passing") {
		t.Fatalf("status with the proxy's token: %v\n%s", err, out)
	}
	for token, want := range map[string]string{"": "no consul token given", testenv.RandomUUID(t): "consul does not know the token"} {
		if out, err := run(token, "status", "-consul", c.Addr); err == nil || !strings.Contains(out, want) {
			t.Fatalf("status with token %q: want %q, got %v:\n%s", token, want, err, out)
		}
	}
}

// Consul not up yet when the agent starts (as at boot): the agent starts at once, keeps asking, and stops with the
// same clear error once Consul answers that its token is unknown, leaving nothing registered.
func TestACLRefusalAfterConsulStarts(t *testing.T) {
	testenv.Integration(t)
	bin := testenv.GoBuild(t, "./cmd/chainwarden")
	port := testenv.FreePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	conf := filepath.Join(t.TempDir(), "agent.hcl")
	src := fmt.Sprintf("consul {\n  address = \"127.0.0.1:%d\"\n}\nlisten = %q\nnode \"geth-a\" {\n  kind = \"ethereum\"\n"+
		"  rpc = \"http://127.0.0.1:1\"\n  service = \"eth-devnet\"\n  chain_id = 1337\n}\n", port, listen)
	if err := os.WriteFile(conf, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	token := testenv.RandomUUID(t)
	p := testenv.StartIn(t, "", []string{"CONSUL_HTTP_TOKEN=" + token, "CONSUL_HTTP_TOKEN_FILE=", "CONSUL_HTTP_ADDR="},
		"agent", bin, "agent", "-config", conf)
	testenv.WaitHTTP(t, p, "http://"+listen+"/v1/health", 30*time.Second) // started without Consul's answer
	logged := func() string {
		b, _ := os.ReadFile(p.Log)
		return strings.ReplaceAll(string(b), `\"`, `"`)
	}
	if !strings.Contains(logged(), "cannot check the consul token yet, starting anyway and will retry") {
		t.Fatalf("agent log:\n%s", logged())
	}

	c := testenv.StartConsulACLOn(t, port)
	testenv.Eventually(t, 90*time.Second, "the agent stops", func() error {
		if !p.Exited() {
			return fmt.Errorf("still running")
		}
		return nil
	})
	if code := p.Cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit status %d:\n%s", code, logged())
	}
	if out := logged(); !strings.Contains(out, "agent stopped") || !strings.Contains(out, "consul does not know the token given") ||
		strings.Contains(out, token) {
		t.Fatalf("agent log:\n%s", out)
	}
	svcs, _, err := c.Client.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := svcs["eth-devnet"]; ok {
		t.Fatalf("left registered: %v", svcs)
	}
}
