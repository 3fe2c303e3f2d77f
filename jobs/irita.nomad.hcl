# irita: an IRITA validator set (a CometBFT/Tendermint chain by Bianjie), `validators` allocations on distinct
# hosts, each with its home on a Nomad host volume.
#
# Instead of hand-edited persistent_peers lists, every validator's peers are rendered from Consul: each allocation
# registers its P2P port as the Consul service "<service>-p2p" with its allocation index in the service meta, and
# the node id of validator i comes from the Nomad Variable nomad/jobs/<job_name>/validator-<i> (item node_id).
# That variable also holds validator i's node_key and priv_validator_key (rendered into secrets/ only); the
# genesis is the item genesis of nomad/jobs/<job_name>:
#
#   nomad var put nomad/jobs/irita genesis=@genesis.json
#   nomad var put nomad/jobs/irita/validator-0 node_id=$(irita tendermint show-node-id --home n0) \
#       node_key=@n0/config/node_key.json priv_validator_key=@n0/config/priv_validator_key.json
#   chainwarden job run irita -var chain_id=irita-hub -var validators=4
#
# Prometheus metrics are on 26660 (the metrics port), on the private address.

variable "job_name" {
  type    = string
  default = "irita"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "bianjie/irita:v3.3.0"
}

variable "binary" {
  type    = string
  default = "irita"
}

variable "validators" {
  description = "number of validators (allocations), each on its own host"
  type        = number
  default     = 4
}

variable "host_volume" {
  type    = string
  default = "irita"
}

variable "chain_id" {
  type    = string
  default = "irita-hub"
}

variable "service" {
  type    = string
  default = "irita"
}

variable "p2p_port" {
  type    = number
  default = 26656
}

variable "metrics_port" {
  type    = number
  default = 26660
}

variable "rpc_host_network" {
  type    = string
  default = "default"
}

variable "p2p_host_network" {
  type    = string
  default = "default"
}

variable "extra_args" {
  type    = list(string)
  default = []
}

variable "min_healthy_time" {
  description = "how long the agent's verdict must stay healthy before a deployment counts the allocation healthy"
  type        = string
  default     = "2m"
}

variable "healthy_deadline" {
  description = "how long a new allocation has to become healthy (start, find peers, catch up) before the deployment fails"
  type        = string
  default     = "15m"
}

variable "progress_deadline" {
  description = "how long a deployment may go without an allocation becoming healthy (longer than healthy_deadline)"
  type        = string
  default     = "25m"
}

variable "health_check" {
  description = "how Nomad judges a deployment: \"checks\" (the chainwarden agent's verdict) or \"task_states\" (running is enough)"
  type        = string
  default     = "checks"
}

variable "warning_ok" {
  description = "a warning node (lagging but serving) counts as healthy for a deployment (default: only passing does)"
  type        = bool
  default     = false
}

variable "agent_address" {
  description = "the chainwarden agent's HTTP address as the Nomad client reaches it (the agent's listen)"
  type        = string
  default     = "127.0.0.1"
}

variable "agent_port" {
  description = "the chainwarden agent's HTTP port (the agent's listen)"
  type        = number
  default     = 9464
}

variable "min_peers" {
  description = "peers below which the agent reports critical (-1 = the agent's default; 0 for a one-node chain)"
  type        = number
  default     = -1
}

variable "push_heads" {
  description = "the agent subscribes to NewBlock on the RPC port's /websocket (IRITA is a Tendermint v0.34 fork: off unless you turn it on)"
  type        = bool
  default     = false
}

variable "cpu" {
  type    = number
  default = 2000
}

variable "memory" {
  type    = number
  default = 4096
}

variable "kill_timeout" {
  type    = string
  default = "2m"
}

job "irita" {
  id          = var.job_name
  datacenters = var.datacenters
  type        = "service"

  group "validator" {
    count = var.validators

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    restart {
      attempts = 5
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    # Nomad judges an upgrade by the chainwarden agent's verdict (the service check below), not by the container
    # running: an upgrade that never syncs fails at healthy_deadline and auto_revert brings back the last good version.
    update {
      max_parallel      = 1
      health_check      = var.health_check
      min_healthy_time  = var.min_healthy_time
      healthy_deadline  = var.healthy_deadline
      progress_deadline = var.progress_deadline
      auto_revert       = true
    }

    volume "data" {
      type      = "host"
      source    = var.host_volume
      read_only = false
    }

    network {
      port "p2p" {
        static       = var.p2p_port
        host_network = var.p2p_host_network
      }
      port "rpc" {
        host_network = var.rpc_host_network
      }
      port "metrics" {
        static       = var.metrics_port
        host_network = var.rpc_host_network
      }
    }

    # Registered by Nomad as soon as the task runs, so validators find each other before any of them is synced.
    service {
      provider     = "consul"
      name         = "${var.service}-p2p"
      port         = "p2p"
      address_mode = "host"
      tags         = ["chainwarden-p2p"]
      meta {
        validator_index = "${NOMAD_ALLOC_INDEX}"
      }
    }

    # The chainwarden agent's verdict on this allocation (worst of its chain nodes), asked by Nomad for deployments
    # (health_check = "checks"): 200 passing, 429 warning (200 with warning_ok), 503 critical, 404 not discovered yet.
    service {
      provider = "consul"
      name     = "${var.service}-chainwarden"
      address  = var.agent_address
      port     = "${var.agent_port}"

      check {
        name     = "chainwarden"
        type     = "http"
        path     = "/v1/health/alloc/${NOMAD_ALLOC_ID}${var.warning_ok ? "?warning_ok=true" : ""}"
        interval = "5s"
        timeout  = "3s"
      }
    }

    task "irita" {
      driver       = "docker"
      kill_timeout = var.kill_timeout

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      config {
        image        = var.image
        entrypoint   = [var.binary]
        network_mode = "host"
        args = concat([
          "start",
          "--home=/data",
          "--rpc.laddr=tcp://${NOMAD_IP_rpc}:${NOMAD_PORT_rpc}",
          "--p2p.laddr=tcp://0.0.0.0:${NOMAD_PORT_p2p}",
        ], var.extra_args)
      }

      # A Cosmos SDK daemon reads its Tendermint settings from <BINARY>_* environment variables too.
      env {
        IRITA_INSTRUMENTATION_PROMETHEUS             = "true"
        IRITA_INSTRUMENTATION_PROMETHEUS_LISTEN_ADDR = "${NOMAD_IP_metrics}:${NOMAD_PORT_metrics}"
        IRITA_GENESIS_FILE                           = "/local/genesis.json"
        IRITA_NODE_KEY_FILE                          = "/secrets/node_key.json"
        IRITA_PRIV_VALIDATOR_KEY_FILE                = "/secrets/priv_validator_key.json"
      }

      template {
        destination = "local/genesis.json"
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/${var.job_name}" }}{{ .genesis.Value }}{{ end -}}
        EOT
      }

      template {
        destination = "secrets/node_key.json"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar (printf "nomad/jobs/${var.job_name}/validator-%s" (env "NOMAD_ALLOC_INDEX")) }}{{ .node_key.Value }}{{ end -}}
        EOT
      }

      template {
        destination = "secrets/priv_validator_key.json"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar (printf "nomad/jobs/${var.job_name}/validator-%s" (env "NOMAD_ALLOC_INDEX")) }}{{ .priv_validator_key.Value }}{{ end -}}
        EOT
      }

      # The other validators' node id @ address:port, from Consul. A peer set change (a validator placed on
      # another host) restarts the validator; splay keeps the set from restarting all at once.
      template {
        destination = "local/peers.env"
        env         = true
        change_mode = "restart"
        splay       = "2m"
        data        = <<-EOT
        {{- $self := env "NOMAD_ALLOC_INDEX" -}}
        IRITA_P2P_PERSISTENT_PEERS=
        {{- range $s := service "${var.service}-p2p|any" }}
        {{- $idx := index $s.ServiceMeta "validator_index" }}
        {{- if and (ne $idx "") (ne $idx $self) }}
        {{- with nomadVar (printf "nomad/jobs/${var.job_name}/validator-%s" $idx) }}{{ .node_id.Value }}@{{ $s.Address }}:{{ $s.Port }},{{ end }}
        {{- end }}
        {{- end }}
        EOT
      }

      meta = merge({
        chainwarden_kind     = "cometbft"
        chainwarden_service  = var.service
        chainwarden_network  = var.chain_id
        chainwarden_rpc_port = "rpc"
        chainwarden_client   = "irita"
        chainwarden_role     = "validator"
        },
        var.min_peers >= 0 ? { chainwarden_min_peers = "${var.min_peers}" } : {},
        var.push_heads ? { chainwarden_ws_port = "rpc" } : {},
      )

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
