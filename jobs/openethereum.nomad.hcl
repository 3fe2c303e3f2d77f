# openethereum: an Ethereum node with OpenEthereum, Parity's successor (same flags as Parity), chain data on a
# Nomad host volume. Like the Parity seed: JSON-RPC 8545 / WS 8546 on the private address, P2P 30303 public, and
# `--nat extip:` the instance's public IP, read from EC2 instance metadata by Nomad's env_aws fingerprinter
# (attr.unique.platform.aws.public-ipv4) unless public_ip is given.
#
#   chainwarden job run openethereum -var host_volume=openethereum-mainnet

variable "job_name" {
  type    = string
  default = "openethereum"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "openethereum/openethereum:v3.3.5"
}

variable "host_volume" {
  type    = string
  default = "openethereum-mainnet"
}

variable "chain" {
  description = "OpenEthereum --chain: foundation (mainnet), goerli, or a chain spec path"
  type        = string
  default     = "foundation"
}

variable "network" {
  description = "network name the agent reports (mainnet, goerli, ...)"
  type        = string
  default     = "mainnet"
}

variable "chain_id" {
  type    = number
  default = 1
}

variable "service" {
  type    = string
  default = "eth-mainnet"
}

variable "public_ip" {
  description = "public IP for --nat extip:; empty = from EC2 instance metadata (attr.unique.platform.aws.public-ipv4)"
  type        = string
  default     = ""
}

variable "p2p_port" {
  type    = number
  default = 30303
}

variable "rpc_port" {
  description = "static JSON-RPC port on the private address"
  type        = number
  default     = 8545
}

variable "ws_port" {
  type    = number
  default = 8546
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
  default     = "20m"
}

variable "progress_deadline" {
  description = "how long a deployment may go without an allocation becoming healthy (longer than healthy_deadline)"
  type        = string
  default     = "30m"
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
  default = 4000
}

variable "memory" {
  type    = number
  default = 16384
}

variable "kill_timeout" {
  type    = string
  default = "5m"
}

variable "warn_lag" {
  type    = number
  default = 0
}

variable "max_lag" {
  type    = number
  default = 0
}

locals {
  # "$${...}" is left for Nomad to interpolate on the client, from the node's fingerprinted attributes.
  public_ip = var.public_ip != "" ? var.public_ip : "$${attr.unique.platform.aws.public-ipv4}"
}

job "openethereum" {
  id          = var.job_name
  datacenters = var.datacenters
  type        = "service"

  # Without an explicit public IP, only place on clients that know theirs from EC2 metadata.
  dynamic "constraint" {
    for_each = var.public_ip == "" ? [1] : []
    content {
      attribute = "$${attr.unique.platform.aws.public-ipv4}"
      operator  = "is_set"
    }
  }

  group "openethereum" {
    count = 1

    reschedule {
      attempts  = 0
      unlimited = false
    }

    restart {
      attempts = 5
      interval = "30m"
      delay    = "30s"
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
        static       = var.rpc_port
        host_network = var.rpc_host_network
      }
      port "ws" {
        static       = var.ws_port
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

    task "openethereum" {
      driver       = "docker"
      kill_signal  = "SIGINT"
      kill_timeout = var.kill_timeout

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      config {
        image        = var.image
        network_mode = "host"
        args = concat([
          "--chain=${var.chain}",
          "--base-path=/data",
          "--port=${NOMAD_PORT_p2p}",
          "--nat=extip:${local.public_ip}",
          "--jsonrpc-interface=${NOMAD_IP_rpc}",
          "--jsonrpc-port=${NOMAD_PORT_rpc}",
          "--jsonrpc-hosts=all",
          "--jsonrpc-apis=web3,eth,net,parity",
          "--ws-interface=${NOMAD_IP_ws}",
          "--ws-port=${NOMAD_PORT_ws}",
          "--ws-hosts=all",
          "--ws-origins=all",
          "--ws-apis=web3,eth,net",
          "--no-ipc",
        ], var.extra_args)
      }

      meta = merge({
        chainwarden_kind     = "ethereum"
        chainwarden_service  = var.service
        chainwarden_chain_id = "${var.chain_id}"
        chainwarden_network  = var.network
        chainwarden_rpc_port = "rpc"
        chainwarden_ws_port  = "ws"
        chainwarden_client   = "openethereum"
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
