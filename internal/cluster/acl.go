package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/internal/devnet"
)

// aclHCL turns Consul's ACLs on, as an operator does in a file next to the image's consul.hcl: deny by default,
// and tokens set through the API (the servers' agent tokens) kept in the data dir across restarts. It holds no
// secret.
const aclHCL = `acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "async-cache"
  enable_token_persistence = true
}
`

// randomToken makes a token secret (a random UUID, version 4).
func randomToken() (string, error) {
	var b [16]byte
	if _, err := randRead(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

// bootstrapACL bootstraps the ACL system with this run's management token (kept in memory only, and in a 0600 file
// of the fleet's directory that Close removes) once the servers have a leader, and gives every server an agent
// token of its own (a node identity) through the API: persisted in its data dir (enable_token_persistence).
func (f *Fleet) bootstrapACL(ctx context.Context) error {
	acl := f.Servers[0].Consul().ACL()
	err := devnet.Poll(ctx, 2*timeoutUnit, "acl bootstrap", nil, func() error {
		_, _, err := acl.BootstrapWithToken(f.mgmt)
		return err
	})
	if err != nil {
		return err
	}
	if err := f.writeSecret(f.ManagementTokenFile(), f.mgmt); err != nil {
		return err
	}
	for _, s := range f.Servers {
		tok, err := f.nodeToken(s)
		if err != nil {
			return err
		}
		if _, err := s.Consul().Agent().UpdateAgentACLToken(tok, nil); err != nil {
			return fmt.Errorf("%s: set its agent token: %w", s.Name, err)
		}
	}
	f.log.Info("acls bootstrapped", "default_policy", "deny")
	return nil
}

// nodeToken creates the Consul agent token of a host: a node identity (node:write on its node, reads of services).
func (f *Fleet) nodeToken(h *Host) (string, error) {
	return f.createToken(&consulapi.ACLToken{Description: "consul agent " + h.Name,
		NodeIdentities: []*consulapi.ACLNodeIdentity{{NodeName: h.Name, Datacenter: "dc1"}}})
}

func (f *Fleet) createToken(tok *consulapi.ACLToken) (string, error) {
	got, _, err := f.Servers[0].Consul().ACL().TokenCreate(tok, nil)
	if err != nil {
		return "", fmt.Errorf("create token %q: %w", tok.Description, err)
	}
	return got.SecretID, nil
}

// createPolicy creates a policy from one of the shipped rule files (packer/files/consul-acl), each key of replace
// replaced by its value first (NODE_NAME by the host's node name), as docs/PRODUCTION.md#acls tells operators.
func (f *Fleet) createPolicy(name, file string, replace map[string]string) error {
	b, err := os.ReadFile(filepath.Join(f.opts.Root, "packer", "files", "consul-acl", file))
	if err != nil {
		return err
	}
	rules := string(b)
	for k, v := range replace {
		rules = strings.ReplaceAll(rules, k, v)
	}
	if _, _, err := f.Servers[0].Consul().ACL().PolicyCreate(&consulapi.ACLPolicy{Name: name, Rules: rules}, nil); err != nil {
		return fmt.Errorf("create policy %s from %s: %w", name, file, err)
	}
	return nil
}

// agentTokens makes a chain host's tokens before its processes start: its Consul agent's (into secrets.hcl) and its
// chainwarden agent's (policy chainwarden-agent-NODE from chainwarden-agent.hcl, a service identity per service
// its nodes register), given as the image gives it: /etc/chainwarden/agent.env names CONSUL_HTTP_TOKEN_FILE.
func (f *Fleet) agentTokens(h *Host) error {
	var err error
	if h.consulToken, err = f.nodeToken(h); err != nil {
		return err
	}
	policy := "chainwarden-agent-" + h.Name
	if err := f.createPolicy(policy, "chainwarden-agent.hcl", map[string]string{"NODE_NAME": h.Name}); err != nil {
		return err
	}
	tok, err := f.createToken(&consulapi.ACLToken{Description: "chainwarden agent " + h.Name,
		Policies:          []*consulapi.ACLTokenPolicyLink{{Name: policy}},
		ServiceIdentities: []*consulapi.ACLServiceIdentity{{ServiceName: EthService}, {ServiceName: CometService}}})
	if err != nil {
		return err
	}
	if err := f.writeSecret(h.AgentTokenFile(), tok); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(h.Dir, "agent.env"), []byte("CONSUL_HTTP_TOKEN_FILE="+h.AgentTokenFile()+"\n"), 0o640)
}

// proxyTokens makes the proxy host's tokens: its Consul agent's and the read-only chainwarden-proxy token of its
// consul-templates, named by nginx.env and haproxy.env (the image's /etc/chainwarden/proxy/%i.env).
func (f *Fleet) proxyTokens(h *Host) error {
	var err error
	if h.consulToken, err = f.nodeToken(h); err != nil {
		return err
	}
	if err := f.createPolicy("chainwarden-proxy", "chainwarden-proxy.hcl", nil); err != nil {
		return err
	}
	tok, err := f.createToken(&consulapi.ACLToken{Description: "chainwarden proxy",
		Policies: []*consulapi.ACLTokenPolicyLink{{Name: "chainwarden-proxy"}}})
	if err != nil {
		return err
	}
	f.ProxyTokenFile = filepath.Join(h.Dir, "proxy-token")
	if err := f.writeSecret(f.ProxyTokenFile, tok); err != nil {
		return err
	}
	for _, kind := range []string{"nginx", "haproxy"} {
		if err := os.WriteFile(filepath.Join(h.Dir, kind+".env"), []byte("CONSUL_HTTP_TOKEN_FILE="+f.ProxyTokenFile+"\n"), 0o640); err != nil {
			return err
		}
	}
	return nil
}

// ManagementTokenFile holds this run's ACL management token (mode 0600; Close removes it): for the Consul UI.
func (f *Fleet) ManagementTokenFile() string { return filepath.Join(f.opts.Dir, "management-token") }

// AgentTokenFile is the file holding the chainwarden agent's Consul token on a chain host.
func (h *Host) AgentTokenFile() string { return filepath.Join(h.Dir, "consul-token") }

// writeSecret writes a secret only its owner can read and remembers it for Close to remove.
func (f *Fleet) writeSecret(path, secret string) error {
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		return err
	}
	f.mu.Lock()
	f.secrets = append(f.secrets, path)
	f.mu.Unlock()
	return nil
}

// envFile reads KEY=VALUE lines as systemd's EnvironmentFile does (blank lines and # comments skipped); a missing
// file is no environment, as with EnvironmentFile=-.
func envFile(path string) ([]string, error) {
	fh, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var env []string
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.Contains(line, "=") {
			return nil, fmt.Errorf("%s: not KEY=VALUE: %q", path, line)
		}
		env = append(env, line)
	}
	return env, sc.Err()
}

// ConsulAs is a new API client of the host's own Consul agent sending token (e.g. the proxy's read-only token).
func (h *Host) ConsulAs(token string) *consulapi.Client {
	cfg := consulapi.DefaultConfig()
	cfg.Address = "127.0.0.1:8500"
	cfg.Token, cfg.TokenFile = token, ""
	cfg.HttpClient = h.ns.httpClient(15 * time.Second)
	c, err := consulapi.NewClient(cfg)
	if err != nil {
		panic(err) // only for a bad address or TLS files: neither is possible here
	}
	return c
}
