# Consul ACL policy of the RPC proxy's consul-template and of `chainwarden status`: read only
# (docs/PRODUCTION.md#acls). The same for every proxy host; with a kv_prefix other than "chainwarden", change the
# key_prefix rules to match.
#
#   consul acl policy create -name chainwarden-proxy -rules @chainwarden-proxy.hcl
#   consul acl token create -description "chainwarden proxy" -policy-name chainwarden-proxy

# `range services` and `service "chainwarden.NAME|passing,warning"`; status lists services and their health.
# Consul drops from answers what a token may not read: with less, upstreams would silently lose nodes.
service_prefix "" {
  policy = "read"
}
# Health answers are filtered by node too.
node_prefix "" {
  policy = "read"
}

# The proxy's settings (deny_methods, default_service) and each service's external fallback URL.
key_prefix "chainwarden/proxy/" {
  policy = "read"
}
key_prefix "chainwarden/fallback/" {
  policy = "read"
}
# `chainwarden status`: the heads and the flags of sources that do not count, read as whole folders ("list" is read
# plus listing, which a Consul with acl.enable_key_list_policy requires for that; nothing more).
key_prefix "chainwarden/heads/" {
  policy = "list"
}
key_prefix "chainwarden/flags/" {
  policy = "list"
}
