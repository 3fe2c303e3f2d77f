package consultemplates

import (
	"fmt"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/testenv"
)

// With Consul ACLs on (deny by default), consul-template renders the nginx upstreams with the token of the shipped
// read-only proxy policy: passing nodes as servers, warning ones as backup, and the fallback it reads from KV.
func TestProxyPolicyRendersUpstreams(t *testing.T) {
	consul := testenv.StartConsulACL(t)
	consul.CreatePolicy(t, "chainwarden-proxy", "../packer/files/consul-acl/chainwarden-proxy.hcl", nil)
	token := consul.CreateToken(t, []string{"chainwarden-proxy"})
	a, b := newFakeNode(t, "geth-a"), newFakeNode(t, "geth-b")
	register(t, consul, service, "geth-a", "127.0.0.1", a.port(), "passing", nil)
	register(t, consul, service, "geth-b", "127.0.0.1", b.port(), "warning", nil)
	fallback := newFakeNode(t, "fallback")
	if _, err := consul.Client.KV().Put(&consulapi.KVPair{Key: "chainwarden/fallback/" + service,
		Value: []byte(fmt.Sprintf("http://127.0.0.1:%d/", fallback.port()))}, nil); err != nil {
		t.Fatal(err)
	}

	p := startProxy(t, "nginx", consul, "CONSUL_HTTP_TOKEN="+token)
	p.waitConfig(t, "passing and warning nodes", expectStates("nginx", map[string]string{"geth-a": "server", "geth-b": "backup"}))
	testenv.Eventually(t, 10*time.Second, "traffic to the passing node", func() error {
		return only(responders(t, p.URL+"/"+service, 12), "geth-a")
	})

	// Both down: the fallback read from KV with the same token serves.
	setStatus(t, consul, "geth-a", "critical")
	setStatus(t, consul, "geth-b", "critical")
	p.waitConfig(t, "no healthy node", expectStates("nginx", map[string]string{"geth-a": "absent", "geth-b": "absent"}))
	testenv.Eventually(t, 10*time.Second, "traffic to the fallback", func() error {
		return only(responders(t, p.URL+"/"+service, 12), "fallback")
	})
}
