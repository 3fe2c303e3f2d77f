# cometbft: a node of any CometBFT chain, its home (config, blocks, state, validator sign state) on a Nomad host
# volume. The chain's genesis, and optionally the node and validator keys, come from the Nomad Variable
# nomad/jobs/<job_name> (items genesis, node_key, priv_validator_key), rendered into the task's local/ and secrets/
# directories and handed to CometBFT through its CMT_* environment overrides, so no key is written to the volume.
#
#   nomad var put nomad/jobs/cometbft genesis=@genesis.json priv_validator_key=@priv_validator_key.json node_key=@node_key.json
#   chainwarden job run cometbft -var chain_id=my-chain -var host_volume=cometbft-my-chain
#
# A prestart task runs `cometbft init` first: on an empty volume it lays out the home (config.toml, the validator
# sign state); on a volume with data it changes nothing.

variable "job_name" {
  type    = string
  default = "cometbft"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "cometbft/cometbft:v0.38.19"
}

variable "binary" {
  description = "path of the node binary in the image (cometbft, or a chain daemon embedding it)"
  type        = string
  default     = "/usr/bin/cometbft"
}

variable "host_volume" {
  type    = string
  default = "cometbft"
}

variable "chain_id" {
  description = "the chain id in the genesis; the agent checks the node's network against it"
  type        = string
  default     = "cometbft-local"
}

variable "service" {
  type    = string
  default = "cometbft"
}

variable "proxy_app" {
  description = "ABCI application: an address (tcp://127.0.0.1:26658) or a built-in (kvstore)"
  type        = string
  default     = "tcp://127.0.0.1:26658"
}

variable "persistent_peers" {
  description = "comma-separated id@host:26656 peers"
  type        = string
  default     = ""
}

variable "p2p_port" {
  type    = number
  default = 26656
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

variable "warn_lag" {
  type    = number
  default = 0
}

variable "max_lag" {
  type    = number
  default = 0
}

job "cometbft" {
  id          = var.job_name
  datacenters = var.datacenters
  type        = "service"

  group "cometbft" {
    count = 1

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
        host_network = var.rpc_host_network
      }
    }

    # The chainwarden agent's verdict on this allocation (worst of its chain nodes), asked by Nomad for deployments
    # (health_check = "checks"): 200 passing, 429 warning (200 with warning_ok), 503 critical, 404 not discovered yet.
    # Only when deployments are judged by it: a service with provider "nomad" is registered through the Nomad servers.
    dynamic "service" {
      for_each = var.health_check == "checks" ? [1] : []
      content {
        provider = "nomad"
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
    }

    # Lays out the home on an empty volume; `cometbft init` keeps every file that already exists.
    task "init" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      config {
        image        = var.image
        entrypoint   = [var.binary]
        network_mode = "none"
        args         = ["init", "--home=/data"]
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }

    task "cometbft" {
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
          "--proxy_app=${var.proxy_app}",
          "--rpc.laddr=tcp://${NOMAD_IP_rpc}:${NOMAD_PORT_rpc}",
          "--p2p.laddr=tcp://0.0.0.0:${NOMAD_PORT_p2p}",
          "--p2p.persistent_peers=${var.persistent_peers}",
        ], var.extra_args)
      }

      env {
        CMT_INSTRUMENTATION_PROMETHEUS             = "true"
        CMT_INSTRUMENTATION_PROMETHEUS_LISTEN_ADDR = "${NOMAD_IP_metrics}:${NOMAD_PORT_metrics}"
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
        {{- with nomadVar "nomad/jobs/${var.job_name}" }}{{ .node_key.Value }}{{ end -}}
        EOT
      }

      template {
        destination = "secrets/priv_validator_key.json"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/${var.job_name}" }}{{ .priv_validator_key.Value }}{{ end -}}
        EOT
      }

      # Points CometBFT at the rendered files; keys the variable doesn't hold stay on the volume (from init).
      template {
        destination = "secrets/cometbft.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
        CMT_GENESIS_FILE=/local/genesis.json
        {{- with nomadVar "nomad/jobs/${var.job_name}" }}
        {{- if .node_key.Value }}
        CMT_NODE_KEY_FILE=/secrets/node_key.json
        {{- end }}
        {{- if .priv_validator_key.Value }}
        CMT_PRIV_VALIDATOR_KEY_FILE=/secrets/priv_validator_key.json
        {{- end }}
        {{- end }}
        EOT
      }

      meta = merge({
        chainwarden_kind     = "cometbft"
        chainwarden_service  = var.service
        chainwarden_network  = var.chain_id
        chainwarden_rpc_port = "rpc"
        chainwarden_ws_port  = "rpc" # new blocks by push: NewBlock on the RPC port's /websocket
        chainwarden_client   = "cometbft"
        },
        var.warn_lag > 0 ? { chainwarden_warn_lag = "${var.warn_lag}" } : {},
        var.max_lag > 0 ? { chainwarden_max_lag = "${var.max_lag}" } : {},
        var.min_peers >= 0 ? { chainwarden_min_peers = "${var.min_peers}" } : {},
      )

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
