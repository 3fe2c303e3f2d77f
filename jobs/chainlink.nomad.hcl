# chainlink: a Chainlink node as an active/standby pair: two allocations on distinct hosts sharing one Postgres.
# Chainlink's database lease lock lets one node be active; the other waits for the lock without serving its API,
# and takes over when the active one dies. The agent registers both (role "active-standby"), so the standby shows
# in Consul as the member that doesn't answer while the active one does.
#
# Secrets come from the Nomad Variable nomad/jobs/<job_name> and are rendered only into the task's secrets/
# directory (a per-allocation tmpfs, gone with the allocation), never into env files left on disk:
#
#   nomad var put nomad/jobs/chainlink database_url='postgresql://...' keystore_password=... \
#       api_email=ops@example.com api_password=...
#
# The EVM RPC endpoints are the passing nodes of the Consul service eth_service (the chainwarden agent keeps
# those checks), rendered into config.toml, so Chainlink follows the fleet's health; rpc_fallback_http/_ws (the
# local rpc proxy or an external provider) are added when set.

variable "job_name" {
  type    = string
  default = "chainlink"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "image" {
  type    = string
  default = "smartcontract/chainlink:2.19.0"
}

variable "nodes" {
  description = "nodes in the active/standby set (on distinct hosts)"
  type        = number
  default     = 2
}

variable "evm_chain_id" {
  type    = number
  default = 1
}

variable "eth_service" {
  description = "Consul service of the Ethereum nodes Chainlink uses (registered by the chainwarden agent)"
  type        = string
  default     = "eth-mainnet"
}

variable "rpc_fallback_http" {
  description = "extra EVM node HTTP URL (e.g. the local rpc proxy); empty = none"
  type        = string
  default     = ""
}

variable "rpc_fallback_ws" {
  type    = string
  default = ""
}

variable "service" {
  description = "Consul service the Chainlink nodes are registered under by the agent"
  type        = string
  default     = "chainlink"
}

variable "network" {
  type    = string
  default = "mainnet"
}

variable "api_host_network" {
  type    = string
  default = "default"
}

variable "p2p_port" {
  type    = number
  default = 6690
}

variable "min_healthy_time" {
  description = "how long the agent's verdict must stay healthy before a deployment counts the allocation healthy"
  type        = string
  default     = "1m"
}

variable "healthy_deadline" {
  description = "how long a new allocation has to become healthy (start, migrate the database, pass /health) before the deployment fails"
  type        = string
  default     = "10m"
}

variable "progress_deadline" {
  description = "how long a deployment may go without an allocation becoming healthy (longer than healthy_deadline)"
  type        = string
  default     = "15m"
}

variable "health_check" {
  description = "how Nomad judges a deployment: \"checks\" (the chainwarden agent's verdict) or \"task_states\" (running is enough)"
  type        = string
  default     = "checks"
}

variable "warning_ok" {
  description = "a warning node (lagging but serving) counts as healthy for a deployment; true here because the standby of the active/standby pair is warning by design"
  type        = bool
  default     = true
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

variable "cpu" {
  type    = number
  default = 2000
}

variable "memory" {
  type    = number
  default = 2048
}

job "chainlink" {
  id          = var.job_name
  datacenters = var.datacenters
  type        = "service"

  group "chainlink" {
    count = var.nodes

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    # No local state (the database holds it): moving a failed node to another host is fine.
    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    restart {
      attempts = 5
      interval = "10m"
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

    network {
      port "api" {
        host_network = var.api_host_network
      }
      port "p2p" {
        static = var.p2p_port
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

    task "chainlink" {
      driver       = "docker"
      kill_timeout = "30s"

      config {
        image        = var.image
        network_mode = "host"
        args = [
          "node",
          "-config", "/local/config.toml",
          "-secrets", "/secrets/secrets.toml",
          "start",
          "-a", "/secrets/apicredentials",
        ]
      }

      template {
        destination = "secrets/secrets.toml"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/${var.job_name}" }}
        [Database]
        URL = {{ .database_url.Value | toJSON }}

        [Password]
        Keystore = {{ .keystore_password.Value | toJSON }}
        {{- end }}
        EOT
      }

      template {
        destination = "secrets/apicredentials"
        perms       = "0400"
        change_mode = "restart"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/${var.job_name}" }}{{ .api_email.Value }}
        {{ .api_password.Value }}{{ end }}
        EOT
      }

      # The EVM nodes: the passing instances of eth_service. The agent tags a node with its WS port
      # ("ws_port=N") when the job declares chainwarden_ws_port.
      template {
        destination = "local/config.toml"
        change_mode = "restart"
        wait {
          min = "10s"
          max = "1m"
        }
        data = <<-EOT
        [Log]
        Level = 'info'
        JSONConsole = true

        [WebServer]
        HTTPPort = {{ env "NOMAD_PORT_api" }}
        ListenIP = '{{ env "NOMAD_IP_api" }}'
        SecureCookies = false

        [WebServer.TLS]
        HTTPSPort = 0

        [Database.Lock]
        Enabled = true

        [P2P.V2]
        ListenAddresses = ['0.0.0.0:{{ env "NOMAD_PORT_p2p" }}']

        [[EVM]]
        ChainID = '${var.evm_chain_id}'
        {{ range service "${var.eth_service}" }}
        {{- $ws := "" }}{{ range .Tags }}{{ if . | regexMatch "^ws_port=[0-9]+$" }}{{ $ws = . | trimPrefix "ws_port=" }}{{ end }}{{ end }}
        [[EVM.Nodes]]
        Name = '{{ .ID }}'
        HTTPURL = 'http://{{ .Address }}:{{ .Port }}'
        {{- if $ws }}
        WSURL = 'ws://{{ .Address }}:{{ $ws }}'
        {{- end }}
        {{ end }}
        {{- if "${var.rpc_fallback_http}" }}
        [[EVM.Nodes]]
        Name = 'fallback'
        HTTPURL = '${var.rpc_fallback_http}'
        {{- if "${var.rpc_fallback_ws}" }}
        WSURL = '${var.rpc_fallback_ws}'
        {{- end }}
        {{- end }}
        EOT
      }

      meta {
        chainwarden_kind     = "chainlink"
        chainwarden_service  = var.service
        chainwarden_network  = var.network
        chainwarden_chain_id = "${var.evm_chain_id}"
        chainwarden_rpc_port = "api"
        chainwarden_client   = "chainlink"
        chainwarden_role     = "active-standby"
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
