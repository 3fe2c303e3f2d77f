// Package consulclient builds the one kind of Consul API client every chainwarden command uses: Consul's standard
// environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE), CONSUL_CACERT, ...) applies, an explicit address wins.
package consulclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	consulapi "github.com/hashicorp/consul/api"
)

// DefaultIdleConns is how many idle connections to the Consul agent a client keeps: the registry updates checks
// many at a time, and Go's default (GOMAXPROCS+1) would open and close a TCP connection for most calls.
const DefaultIdleConns = 32

// New returns a client of the Consul agent at address ("" = CONSUL_HTTP_ADDR, else 127.0.0.1:8500).
func New(address string) (*consulapi.Client, error) {
	c, err := Open(address)
	if err != nil {
		return nil, err
	}
	return c.Client, nil
}

// Conn is a Consul API client and the few calls consulapi has no method for, made with the same address, TLS
// settings and token.
type Conn struct {
	*consulapi.Client
	http     *http.Client
	base     string // scheme://address[/prefix]
	token    string // kept in memory only: never logged, never written
	hasToken bool
}

// Open returns a Conn to the Consul agent at address ("" = CONSUL_HTTP_ADDR, else 127.0.0.1:8500). An unreadable
// CONSUL_HTTP_TOKEN_FILE is an error that names the file.
func Open(address string) (*Conn, error) {
	cc := consulapi.DefaultConfig()
	if address != "" {
		cc.Address = address
	}
	return OpenConfig(cc)
}

// OpenConfig returns a Conn from cc (consulapi.DefaultConfig() with changes; tests set a token there).
func OpenConfig(cc *consulapi.Config) (*Conn, error) {
	if cc.Transport == nil {
		cc.Transport = consulapi.DefaultConfig().Transport
	}
	cc.Transport.MaxIdleConnsPerHost = DefaultIdleConns
	c, err := consulapi.NewClient(cc) // fills cc in: HTTP client, scheme, address without scheme, token from its file
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	host := cc.Address
	if strings.HasPrefix(cc.Address, "/") { // unix socket: the client's transport dials it; any host name will do
		host = "consul"
	}
	return &Conn{Client: c, http: cc.HttpClient, base: cc.Scheme + "://" + host + cc.PathPrefix, token: cc.Token,
		hasToken: cc.Token != ""}, nil
}

// HasToken reports whether a token was given (CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE); without one Consul
// uses its anonymous token.
func (c *Conn) HasToken() bool { return c.hasToken }

// Authorization is one question to Consul's ACL system: may this token have Access ("read", "write", "list") to
// Resource ("service", "key", "session", "agent", "node", ...) named Segment?
type Authorization struct {
	Resource string
	Segment  string `json:",omitempty"`
	Access   string
	Allow    bool `json:",omitempty"`
}

// MaxAuthorizations is how many questions Consul answers in one call.
const MaxAuthorizations = 64

// Authorize asks Consul which of reqs the token is allowed, through POST /v1/internal/acl/authorize (the call
// Consul's UI makes; it answers for any valid token and performs the same checks the real calls would). It returns
// reqs with Allow filled in.
func (c *Conn) Authorize(ctx context.Context, reqs []Authorization) ([]Authorization, error) {
	var out []Authorization
	for len(reqs) > 0 {
		n := min(len(reqs), MaxAuthorizations)
		got, err := c.authorize(ctx, reqs[:n])
		if err != nil {
			return nil, err
		}
		if len(got) != n {
			return nil, fmt.Errorf("consul acl authorize: %d answers to %d questions", len(got), n)
		}
		out = append(out, got...)
		reqs = reqs[n:]
	}
	return out, nil
}

func (c *Conn) authorize(ctx context.Context, reqs []Authorization) ([]Authorization, error) {
	body, err := json.Marshal(reqs)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/internal/acl/authorize", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("consul acl authorize: %w", err)
	}
	if c.token != "" {
		req.Header.Set("X-Consul-Token", c.token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("consul acl authorize: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("consul acl authorize: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		// The same error value consulapi returns, so callers tell 403s from the rest in one way.
		return nil, fmt.Errorf("consul acl authorize: %w", consulapi.StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(b))})
	}
	var out []Authorization
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("consul acl authorize: decode answer: %w", err)
	}
	return out, nil
}
