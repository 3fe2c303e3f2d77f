package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/consulacl"
	"github.com/chainwarden/chainwarden/internal/consulclient"
	"github.com/chainwarden/chainwarden/internal/registry"
	"github.com/chainwarden/chainwarden/internal/testenv"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A node whose service the agent's token may not register (as one found later through Nomad would be): the start
// check names the permission; at run time the refusal is logged as one, the other service registers, and nothing is
// half-registered: no service without its check, no check without its service.
func TestACLRefusedServiceNothingHalfRegistered(t *testing.T) {
	c := testenv.StartConsulACL(t)
	g := testenv.StartGethDev(t, "geth-acl")
	node, err := c.Client.Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	c.CreatePolicy(t, "agent", "../packer/files/consul-acl/chainwarden-agent.hcl", map[string]string{"NODE_NAME": node})
	token := c.CreateToken(t, []string{"agent"}, "eth-devnet") // no identity for eth-other

	src := fmt.Sprintf("consul {\n  address = %q\n}\n%s%s", c.Addr, gethBlock("geth-a", g, testenv.DevChainID, "  min_peers = 0\n"),
		strings.Replace(gethBlock("geth-b", g, testenv.DevChainID, "  min_peers = 0\n"), "eth-devnet", "eth-other", 1))
	cfg, err := config.Parse([]byte(src), "agent.hcl")
	if err != nil {
		t.Fatal(err)
	}
	cc := consulapi.DefaultConfig()
	cc.Address, cc.Token, cc.TokenFile = c.Addr, token, ""
	conn, err := consulclient.OpenConfig(cc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	_, err = CheckConsulACL(ctx, conn, cfg, "host-a")
	var denied *consulacl.DeniedError
	if !errors.As(err, &denied) || len(denied.Missing) != 1 ||
		!strings.HasPrefix(denied.Missing[0], `service:write on "eth-other"`) || errors.Is(err, consulacl.ErrNoToken) {
		t.Fatalf("start check: %v", err)
	}

	var logs syncBuffer
	log := hclog.New(&hclog.LoggerOptions{Name: "host-a", Level: hclog.Info, Output: &logs})
	a, err := New(cfg, log, Options{ID: "host-a", Consul: ConsulAPI(conn.Client)})
	if err != nil {
		t.Fatal(err)
	}
	a.Step(ctx)
	c.WaitCheck(t, "geth-a", 10*time.Second, "passing", "warning", "critical")
	if a.reg.Down() {
		t.Fatal("a refusal taken for consul being down: the other checks would wait out a backoff")
	}
	if !strings.Contains(logs.String(), "consul refused the agent's token") ||
		!strings.Contains(logs.String(), `lacks permission 'service:write' on \"eth-other\"`) ||
		!strings.Contains(logs.String(), consulacl.Doc) || strings.Contains(logs.String(), token) {
		t.Fatalf("log:\n%s", logs.String())
	}
	services, err := c.Client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	checks, err := c.Client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := services["geth-b"]; ok {
		t.Fatalf("geth-b registered without permission: %v", services)
	}
	for id := range services {
		if checks[registry.CheckID(id)] == nil {
			t.Errorf("service %s without its check", id)
		}
	}
	for id, ch := range checks {
		if services[ch.ServiceID] == nil {
			t.Errorf("check %s without its service", id)
		}
	}
	if services["geth-a"] == nil {
		t.Fatalf("geth-a not registered: %v", services)
	}
}
