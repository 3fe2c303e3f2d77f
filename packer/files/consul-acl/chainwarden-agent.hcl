# Consul ACL policy of the chainwarden agent on ONE chain host: the least it needs (docs/PRODUCTION.md#acls).
#
# Per host: the agent and session rules name the host's Consul node, so put its node name in for NODE_NAME
# (Consul has no variables in custom policies). The chain services come from service identities on the token,
# one per service the host's nodes register (Consul's own template: service "NAME" write, reads of all services
# and nodes). With a kv_prefix other than "chainwarden", change the key_prefix rules to match.
#
#   sed "s/NODE_NAME/ip-10-0-1-23/g" chainwarden-agent.hcl > agent-ip-10-0-1-23.hcl
#   consul acl policy create -name chainwarden-agent-ip-10-0-1-23 -rules @agent-ip-10-0-1-23.hcl
#   consul acl token create -description "chainwarden agent ip-10-0-1-23" \
#     -policy-name chainwarden-agent-ip-10-0-1-23 -service-identity eth-mainnet -service-identity irita
#
# The agent checks at start that its token has all of this (for the nodes in its config file) and names what is
# missing; `chainwarden agent -config-check` does not talk to Consul.

# GET /v1/agent/self: the local agent's node name, to write check outputs to the catalog (registry).
agent "NODE_NAME" {
  policy = "read"
}

# Sessions are created on the host's own node: the restart lock (restart block) and the session the head keys are
# held with.
session "NODE_NAME" {
  policy = "write"
}

# Reads of the catalog and health: this node's checks (check outputs to the catalog), the checks of every node of a
# service (restart: never the last passing node). Consul drops from answers what a token may not read, so without
# these the agent would see too little without an error. Service identities grant the same reads.
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}

# KV: PREFIX/heads/SERVICE/NODE (this host's heads; reads all heads of its networks), PREFIX/flags/SERVICE/AGENT/
# (sources it does not count), PREFIX/restart/SERVICE (restart lock), PREFIX/volumes/NODE (which host holds a
# volume) and PREFIX/volume-ops/NODE (answers to `chainwarden job`'s snapshot and restore requests). Consul's KV
# rules go by key prefix; the keys under them are named by service and node, not by host, so a host's token could
# write another host's head: the network head is corroborated (no single head moves it), which bounds that.
key_prefix "chainwarden/heads/" {
  policy = "write"
}
key_prefix "chainwarden/flags/" {
  policy = "write"
}
key_prefix "chainwarden/restart/" {
  policy = "write"
}
key_prefix "chainwarden/volumes/" {
  policy = "write"
}
key_prefix "chainwarden/volume-ops/" {
  policy = "write"
}
