# geth: an Ethereum execution node (go-ethereum) whose chain data lives on a Nomad host volume.
#
#   chainwarden job run geth -var host_volume=geth-mainnet
#   nomad job run -var image=local/geth:test jobs/geth.nomad.hcl
#
# The chainwarden agent on the Nomad client discovers the task from its chainwarden_* meta and registers it in
# Consul with a lag check (see docs/JOBS.md). JSON-RPC, WS and metrics listen on the host's private address only
# (rpc_host_network); P2P on p2p_host_network. Post-merge networks also need a consensus client on the authrpc port.

variable "job_name" {
  description = "Nomad job ID; also the prefix of the node name the agent registers in Consul"
  type        = string
  default     = "geth"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  description = "geth image; any image whose entrypoint is geth"
  type        = string
  default     = "ethereum/client-go:v1.16.7"
}

variable "host_volume" {
  description = "Nomad host volume holding the chain data (chainwarden volume ensure creates it on the EBS disk)"
  type        = string
  default     = "geth-mainnet"
}

variable "network" {
  description = "geth network flag without dashes: mainnet, sepolia, holesky, hoodi or dev"
  type        = string
  default     = "mainnet"
}

variable "chain_id" {
  description = "chain id the agent expects from eth_chainId (1 mainnet, 11155111 sepolia, 1337 dev)"
  type        = number
  default     = 1
}

variable "service" {
  description = "Consul service the node is registered under (letters, digits and dashes)"
  type        = string
  default     = "eth-mainnet"
}

variable "p2p_port" {
  description = "static P2P port (TCP and UDP), open to the internet"
  type        = number
  default     = 30303
}

variable "rpc_host_network" {
  description = "Nomad client host_network for JSON-RPC/WS/metrics: the private address (\"default\" = the client's network_interface)"
  type        = string
  default     = "default"
}

variable "p2p_host_network" {
  description = "Nomad client host_network for P2P (public)"
  type        = string
  default     = "default"
}

variable "extra_args" {
  description = "more geth flags, e.g. [\"--syncmode=snap\", \"--cache=8192\"]"
  type        = list(string)
  default     = []
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
  description = "MiB reserved; geth on mainnet wants 16 GiB"
  type        = number
  default     = 16384
}

variable "kill_timeout" {
  description = "time geth gets to flush its database on stop (the client's max_kill_timeout must allow it)"
  type        = string
  default     = "5m"
}

variable "warn_lag" {
  description = "blocks behind the head above which the agent reports warning (0 = the agent's default)"
  type        = number
  default     = 0
}

variable "max_lag" {
  description = "blocks behind the head above which the agent reports critical (0 = the agent's default)"
  type        = number
  default     = 0
}

job "geth" {
  id          = var.job_name
  datacenters = var.datacenters
  type        = "service"

  group "geth" {
    count = 1

    # The chain data is on this host's volume: never move the node elsewhere, restart it in place.
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
        host_network = var.rpc_host_network
      }
      port "ws" {
        host_network = var.rpc_host_network
      }
      port "metrics" {
        host_network = var.rpc_host_network
      }
      port "authrpc" {
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

    task "geth" {
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
          "--${var.network}",
          "--datadir=/data",
          "--port=${NOMAD_PORT_p2p}",
          "--discovery.port=${NOMAD_PORT_p2p}",
          "--http",
          "--http.addr=${NOMAD_IP_rpc}",
          "--http.port=${NOMAD_PORT_rpc}",
          "--http.vhosts=*",
          "--http.api=eth,net,web3,txpool",
          "--ws",
          "--ws.addr=${NOMAD_IP_ws}",
          "--ws.port=${NOMAD_PORT_ws}",
          "--ws.api=eth,net,web3",
          "--authrpc.addr=${NOMAD_IP_authrpc}",
          "--authrpc.port=${NOMAD_PORT_authrpc}",
          "--metrics",
          "--metrics.addr=${NOMAD_IP_metrics}",
          "--metrics.port=${NOMAD_PORT_metrics}",
        ], var.extra_args)
      }

      meta = merge({
        chainwarden_kind     = "ethereum"
        chainwarden_service  = var.service
        chainwarden_chain_id = "${var.chain_id}"
        chainwarden_network  = var.network
        chainwarden_rpc_port = "rpc"
        chainwarden_ws_port  = "ws"
        chainwarden_client   = "geth"
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
