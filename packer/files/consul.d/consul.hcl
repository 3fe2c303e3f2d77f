# Consul client agent: the part every chainwarden host shares. chainwarden-bootstrap writes host.hcl beside this
# file at boot (datacenter, node name, addresses, cloud auto-join by EC2 tag). Secrets (gossip key, ACL tokens)
# are never baked into the image: deliver them at boot as another file in this directory (e.g. secrets.hcl).
server             = false
data_dir           = "/opt/consul"
log_level          = "INFO"
log_json           = true
leave_on_terminate = true

# The HTTP API, DNS and gRPC answer only on this host: the agent, Nomad and consul-template are local.
# Gossip (serf LAN, 8301) listens on the private address set in host.hcl, for the cluster's security group.
client_addr = "127.0.0.1"

ui_config {
  enabled = false
}

disable_update_check       = true
enable_script_checks       = false
enable_local_script_checks = false

telemetry {
  disable_hostname = true
}
