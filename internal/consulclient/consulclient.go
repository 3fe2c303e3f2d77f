// Package consulclient builds the one kind of Consul API client every chainwarden command uses: Consul's standard
// environment (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE), CONSUL_CACERT, ...) applies, an explicit address wins.
package consulclient

import (
	"fmt"

	consulapi "github.com/hashicorp/consul/api"
)

// DefaultIdleConns is how many idle connections to the Consul agent a client keeps: the registry updates checks
// many at a time, and Go's default (GOMAXPROCS+1) would open and close a TCP connection for most calls.
const DefaultIdleConns = 32

// New returns a client of the Consul agent at address ("" = CONSUL_HTTP_ADDR, else 127.0.0.1:8500).
func New(address string) (*consulapi.Client, error) {
	cc := consulapi.DefaultConfig()
	cc.Transport.MaxIdleConnsPerHost = DefaultIdleConns
	if address != "" {
		cc.Address = address
	}
	c, err := consulapi.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return c, nil
}
