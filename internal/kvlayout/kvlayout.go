// Package kvlayout names every Consul KV key chainwarden reads or writes, in one place: the heads the agents share,
// the proxy's fallback URLs and its settings. The consul-template templates use the same keys under the default
// prefix (a test checks they agree).
package kvlayout

import "strings"

// DefaultPrefix is the KV prefix agents, `chainwarden status` and the proxy templates use unless told otherwise.
const DefaultPrefix = "chainwarden"

// Layout is the key layout under one prefix.
type Layout struct {
	prefix string // without slashes at either end
}

// New returns the layout under prefix ("" for DefaultPrefix); slashes at either end are dropped.
func New(prefix string) Layout {
	prefix = strings.Trim(prefix, "/")
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Layout{prefix: prefix}
}

// Prefix is the prefix without slashes, e.g. "chainwarden".
func (l Layout) Prefix() string { return l.prefix }

// Heads is the folder of every node head, with its trailing slash: PREFIX/heads/.
func (l Layout) Heads() string { return l.prefix + "/heads/" }

// ServiceHeads is the folder of one service's node heads: PREFIX/heads/SERVICE/.
func (l Layout) ServiceHeads(service string) string { return l.Heads() + service + "/" }

// Head is the key of one node's head: PREFIX/heads/SERVICE/NODE.
func (l Layout) Head(service, node string) string { return l.ServiceHeads(service) + node }

// Flags is the folder of the sources agents flagged as not counting toward a network's head, with its trailing
// slash: PREFIX/flags/.
func (l Layout) Flags() string { return l.prefix + "/flags/" }

// Flag is the key of a source one agent flagged: PREFIX/flags/SERVICE/AGENT/SOURCE.
func (l Layout) Flag(service, agent, source string) string {
	return l.Flags() + service + "/" + agent + "/" + source
}

// Fallback is the key of a service's external fallback URL: PREFIX/fallback/SERVICE.
func (l Layout) Fallback(service string) string { return l.prefix + "/fallback/" + service }

// DenyMethods is the key of the proxy's comma-separated list of refused JSON-RPC method prefixes.
func (l Layout) DenyMethods() string { return l.prefix + "/proxy/deny_methods" }

// DefaultService is the key of the service the proxy serves at "/".
func (l Layout) DefaultService() string { return l.prefix + "/proxy/default_service" }

// RestartLock is the key of a service's restart lock, held (with a Consul session) by the agent restarting one of
// its nodes, so that only one node of a service is restarted at a time across all agents: PREFIX/restart/SERVICE.
func (l Layout) RestartLock(service string) string { return l.prefix + "/restart/" + service }

// VolumeHolders is the folder where each agent says which node's EBS volume it holds: PREFIX/volumes/.
func (l Layout) VolumeHolders() string { return l.prefix + "/volumes/" }

// VolumeHolder is the key of the agent holding a node's volume: PREFIX/volumes/NODE.
func (l Layout) VolumeHolder(node string) string { return l.VolumeHolders() + node }

// VolumeOps is the folder of the volume operations asked of the agents (snapshot, restore): PREFIX/volume-ops/.
func (l Layout) VolumeOps() string { return l.prefix + "/volume-ops/" }

// VolumeOp is the key of the operation asked on a node's volume: PREFIX/volume-ops/NODE.
func (l Layout) VolumeOp(node string) string { return l.VolumeOps() + node }
