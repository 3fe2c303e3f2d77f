package testenv

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
)

// StartConsulACL starts a Consul dev agent with ACLs on and deny by default. Its management token is made at random
// for this run: it sits only in a config file in the test's temp dir (removed with it) and in c.ManagementToken;
// c.Client and CheckStatus use it. The dev agent's own token (its node and anti-entropy) is the same token.
func StartConsulACL(t testing.TB, extra ...string) *Consul {
	t.Helper()
	return StartConsulACLOn(t, 0, extra...)
}

// StartConsulACLOn is StartConsulACL with the HTTP API on httpPort (0: a free port), e.g. one a program under test
// was told before Consul started.
func StartConsulACLOn(t testing.TB, httpPort int, extra ...string) *Consul {
	t.Helper()
	token := RandomUUID(t)
	file := filepath.Join(t.TempDir(), "acl.hcl")
	conf := fmt.Sprintf("acl {\n  enabled = true\n  default_policy = \"deny\"\n  down_policy = \"extend-cache\"\n"+
		"  tokens {\n    initial_management = %q\n    agent = %q\n  }\n}\n", token, token)
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startConsul(t, httpPort, append([]string{"-config-file", file}, extra...)...)
	c.ManagementToken = token
	c.Client = c.TokenClient(t, token)
	return c
}

// TokenClient returns a client of this Consul that sends token ("" for none: Consul's anonymous token), whatever
// CONSUL_HTTP_TOKEN says.
func (c *Consul) TokenClient(t testing.TB, token string) *consulapi.Client {
	t.Helper()
	cfg := consulapi.DefaultConfig()
	cfg.Address = c.Addr
	cfg.Token, cfg.TokenFile = token, ""
	cl, err := consulapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// CreatePolicy creates an ACL policy named name from a policy file of the repo (rules as `consul acl policy create
// -rules @file` takes them), each key of replace replaced by its value first (e.g. NODE_NAME by the node name).
func (c *Consul) CreatePolicy(t testing.TB, name, file string, replace map[string]string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	rules := string(b)
	for k, v := range replace {
		rules = strings.ReplaceAll(rules, k, v)
	}
	if _, _, err := c.Client.ACL().PolicyCreate(&consulapi.ACLPolicy{Name: name, Rules: rules}, nil); err != nil {
		t.Fatalf("create policy %s from %s: %v", name, file, err)
	}
}

// CreateToken creates a token with the named policies and a service identity for each of services, and returns
// its secret.
func (c *Consul) CreateToken(t testing.TB, policies []string, services ...string) string {
	t.Helper()
	tok := &consulapi.ACLToken{Description: "chainwarden test"}
	for _, p := range policies {
		tok.Policies = append(tok.Policies, &consulapi.ACLTokenPolicyLink{Name: p})
	}
	for _, s := range services {
		tok.ServiceIdentities = append(tok.ServiceIdentities, &consulapi.ACLServiceIdentity{ServiceName: s})
	}
	got, _, err := c.Client.ACL().TokenCreate(tok, nil)
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return got.SecretID
}

// RandomUUID returns a random UUID (version 4), e.g. a token Consul does not know.
func RandomUUID(t testing.TB) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
