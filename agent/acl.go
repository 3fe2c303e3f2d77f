package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"

	consulapi "github.com/hashicorp/consul/api"

	"github.com/chainwarden/chainwarden/agent/config"
	"github.com/chainwarden/chainwarden/internal/consulacl"
	"github.com/chainwarden/chainwarden/internal/kvlayout"
)

// ConsulNeeds lists the Consul permissions the agent needs for cfg on the Consul node named node, as agent id (its
// KV flags are filed under it): what packer/files/consul-acl/chainwarden-agent.hcl (with the host's node name put
// in) plus a service identity per service grants. Nodes found later through Nomad need service:write and their
// head keys too; they cannot be listed before they are found.
func ConsulNeeds(cfg *config.Config, node, agentID string) []consulacl.Need {
	l := kvlayout.New(cfg.Consul.KVPrefix)
	needs := []consulacl.Need{{Resource: "key", Segment: l.Heads(), Access: "read", Why: "read the heads of the network's nodes"}}
	if node != "" { // "": not known (no agent:read); the rest is still checked
		needs = append(needs,
			consulacl.Need{Resource: "agent", Segment: node, Access: "read", Why: "read the local consul agent's node name"},
			consulacl.Need{Resource: "node", Segment: node, Access: "read", Why: "read this node's checks to bring their outputs to the catalog"},
			consulacl.Need{Resource: "session", Segment: node, Access: "write", Why: "hold locks and head keys with a session on this node"})
	}
	services := map[string]bool{}
	for _, n := range cfg.Nodes {
		if !services[n.Service] {
			services[n.Service] = true
			needs = append(needs,
				consulacl.Need{Resource: "service", Segment: n.Service, Access: "write", Why: "register the nodes of " + n.Service},
				consulacl.Need{Resource: "key", Segment: l.Flag(n.Service, agentID, ""), Access: "write", Why: "flag sources that do not count toward the head of " + n.Service})
		}
		needs = append(needs, consulacl.Need{Resource: "key", Segment: l.Head(n.Service, n.Name), Access: "write", Why: "publish the head of " + n.Name})
	}
	if cfg.Restart != nil {
		needs = append(needs, consulacl.Need{Resource: "node", Segment: "", Access: "read", Why: "restart: read the checks of every node of a service"})
		for _, s := range sortedKeys(services) {
			needs = append(needs, consulacl.Need{Resource: "key", Segment: l.RestartLock(s), Access: "write", Why: "restart: the lock of " + s})
		}
	}
	for _, v := range cfg.Volumes {
		if v.Node == "" {
			continue
		}
		needs = append(needs,
			consulacl.Need{Resource: "key", Segment: l.VolumeHolder(v.Node), Access: "write", Why: "say this host holds the volume of " + v.Node},
			consulacl.Need{Resource: "key", Segment: l.VolumeOp(v.Node), Access: "write", Why: "answer volume operations on " + v.Node})
	}
	return needs
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ConsulConn is what CheckConsulACL asks of Consul: *consulclient.Conn satisfies it.
type ConsulConn interface {
	consulacl.Authorizer
	ACL() *consulapi.ACL
	Raw() *consulapi.Raw
	HasToken() bool
}

// CheckConsulACL checks that the agent's Consul token can do what cfg needs (ConsulNeeds). With ACLs off it
// returns a Result with Enabled false. Refusals come back as errors naming every missing permission
// (consulacl.Decided is true for them); other errors mean Consul could not be asked.
func CheckConsulACL(ctx context.Context, c ConsulConn, cfg *config.Config, agentID string) (consulacl.Result, error) {
	res, err := consulacl.Check(ctx, c.ACL(), c, c.HasToken(), nil)
	if err != nil || !res.Enabled {
		return res, err
	}
	node, err := ConsulNodeName(ctx, c.Raw())
	if err != nil && !consulacl.IsDenied(err) {
		return res, fmt.Errorf("read the local consul agent's node name: %w", err)
	}
	if err == nil {
		return consulacl.Check(ctx, c.ACL(), c, c.HasToken(), ConsulNeeds(cfg, node, agentID))
	}
	// Without agent:read the node is unknown: say so, with what else is missing.
	denied := &consulacl.DeniedError{NoToken: !c.HasToken(),
		Missing: []string{"agent:read on this host's consul node (read the local consul agent's node name)"}}
	_, err = consulacl.Check(ctx, c.ACL(), c, c.HasToken(), ConsulNeeds(cfg, "", agentID))
	var more *consulacl.DeniedError
	switch {
	case errors.As(err, &more):
		denied.Missing = append(denied.Missing, more.Missing...)
	case err != nil:
		return res, err
	}
	return res, denied
}

// ConsulNodeName is the local Consul agent's node name (GET /v1/agent/self, as Agent().NodeName() but under ctx).
func ConsulNodeName(ctx context.Context, raw *consulapi.Raw) (string, error) {
	var self struct{ Config struct{ NodeName string } }
	if _, err := raw.Query("/v1/agent/self", &self, (&consulapi.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", err
	}
	if self.Config.NodeName == "" {
		return "", errors.New("the local consul agent did not say its node name")
	}
	return self.Config.NodeName, nil
}
