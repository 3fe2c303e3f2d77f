# Consul ACL policy of the Nomad agents, servers and clients alike (docs/PRODUCTION.md#acls): the same for every
# host. Give it through the environment of nomad.service, CONSUL_HTTP_TOKEN in /etc/nomad.d/nomad.env (mode 0600),
# which Nomad reads as its consul block's token.
#
#   consul acl policy create -name nomad-agent -rules @nomad-agent.hcl
#   consul acl token create -description "nomad agents" -policy-name nomad-agent
#
# With a token per host instead, give each a node identity as well (its Consul agent's rules on its own node).

# Servers find each other, and clients their servers, through the catalog ("nomad" service); both read their local
# Consul agent's own state.
agent_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}

# Each agent registers itself ("nomad" on servers, "nomad-client" on clients) with its health checks, and clients
# register the services of the tasks they run (the jobs in jobs/ name theirs), so write on services: the rule
# Nomad's own documentation gives its agents.
service_prefix "" {
  policy = "write"
}
