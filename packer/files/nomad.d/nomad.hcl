# Nomad client agent with the Docker driver: the part every chainwarden node host shares.
# chainwarden-bootstrap writes host.hcl beside this file at boot (datacenter, region, name, addresses, node class);
# `chainwarden volume ensure` writes chainwarden-volume-NAME.hcl (the host_volume block of each mounted EBS volume).
# Nomad finds its servers through the local Consul agent, so no server addresses live here.
data_dir             = "/opt/nomad"
log_level            = "INFO"
log_json             = true
disable_update_check = true
leave_on_terminate   = true

# The HTTP API answers only on this host (the agent and operators' SSH sessions); the cluster reaches a client
# through the RPC connection the client opens to its servers.
addresses {
  http = "127.0.0.1"
}

server {
  enabled = false
}

client {
  enabled = true

  # chainwarden-ebs, the dynamic host volume plugin (`nomad volume create` with plugin_id = "chainwarden-ebs").
  host_volume_plugin_dir = "/opt/nomad/host_volume_plugins"

  # Chain data lives on the host volumes from chainwarden-volume-*.hcl, nowhere else.
  options = {
    "driver.denylist" = "raw_exec"
  }
}

consul {
  address = "127.0.0.1:8500"
}

plugin "docker" {
  config {
    allow_privileged = false

    # Tasks mount only the declared host volumes, never arbitrary host paths.
    volumes {
      enabled = false
    }

    gc {
      image       = true
      image_delay = "1h"
    }
  }
}

telemetry {
  publish_allocation_metrics = true
  publish_node_metrics       = true
  prometheus_metrics         = true
}
