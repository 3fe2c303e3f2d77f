# The chainwarden RPC proxy as a Nomad job: nginx in front of every Consul service tagged "chainwarden", its
# upstreams rendered by Nomad's template block (Nomad's embedded consul-template) from the SAME source files as the
# host-level consul-template setup: consul-templates/nginx/*. The files are read when the job is submitted
# (HCL2 file()), so submit with the CLI from the repository root, or point templates_dir at an installed copy:
#
#   nomad job run jobs/rpc-proxy.nomad.hcl
#   nomad job run -var templates_dir=/etc/chainwarden/consul-templates jobs/rpc-proxy.nomad.hcl
#
# (The HTTP API's /v1/jobs/parse does not allow file(); `nomad job run` parses locally, where it does.)
# A new render lands in local/staging/ and apply.sh validates it with `nginx -t` before moving it into place and
# reloading nginx, exactly as on a host, so a bad render never replaces a good config.
# Fallback keys: put them in the Nomad variable nomad/jobs/rpc-proxy (items named like the environment variables,
# CHAINWARDEN_FALLBACK_KEY_<SERVICE>); the secrets template below exposes them to the task's environment only.

variable "templates_dir" {
  type        = string
  default     = "consul-templates"
  description = "the consul-templates/ directory of the repository (read at submit time)"
}

variable "datacenters" {
  type    = list(string)
  default = ["*"]
}

variable "count" {
  type    = number
  default = 1
}

variable "port" {
  type        = number
  default     = 8545
  description = "the proxy's static port"
}

variable "listen_ip" {
  type        = string
  default     = ""
  description = "address to listen on; empty: the host address Nomad gives the port (a private address)"
}

variable "driver" {
  type        = string
  default     = "exec"
  description = "exec (chrooted, nginx from the host's /usr) or raw_exec"
}

variable "nginx" {
  type    = string
  default = "/usr/sbin/nginx"
}

job "rpc-proxy" {
  datacenters = var.datacenters
  type        = "service"

  group "nginx" {
    count = var.count

    network {
      port "rpc" {
        static = var.port
      }
    }

    service {
      name     = "rpc-proxy"
      port     = "rpc"
      provider = "consul"
      check {
        type     = "http"
        path     = "/healthz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "nginx" {
      driver = var.driver

      config {
        command = "/bin/sh"
        # Place the first render (validated) before nginx starts, then run nginx in the foreground.
        args = ["-c", "cd \"$NOMAD_TASK_DIR\" && mkdir -p logs tmp && ./apply.sh staging/rpc-proxy.conf && exec \"$NGINX\" -p \"$NOMAD_TASK_DIR/\" -c \"$NOMAD_TASK_DIR/nginx.conf\" -g 'daemon off;'"]
      }

      env {
        NGINX                    = var.nginx
        CHAINWARDEN_NGINX_PREFIX = "${NOMAD_TASK_DIR}/"
        CHAINWARDEN_PROXY_LISTEN = var.listen_ip == "" ? "${NOMAD_ADDR_rpc}" : "${var.listen_ip}:${NOMAD_PORT_rpc}"
      }

      template {
        data        = file("${var.templates_dir}/nginx/nginx.conf")
        destination = "local/nginx.conf"
        change_mode = "noop"
      }

      template {
        data            = file("${var.templates_dir}/nginx/rpc-filter.js")
        destination     = "local/rpc-filter.js"
        left_delimiter  = "[[chainwarden-no-template["
        right_delimiter = "]chainwarden-no-template]]"
        change_mode     = "noop"
      }

      template {
        data            = file("${var.templates_dir}/nginx/apply.sh")
        destination     = "local/apply.sh"
        perms           = "755"
        left_delimiter  = "[[chainwarden-no-template["
        right_delimiter = "]chainwarden-no-template]]"
        change_mode     = "noop"
      }

      # Fallback keys from the job's Nomad variable, as environment variables of the task (never in a file the
      # template output could leak to: secrets/ is private to the task).
      template {
        data        = <<-EOT
          {{- range nomadVarList "nomad/jobs/rpc-proxy" }}{{ with nomadVar .Path }}{{ range $k, $v := . }}{{ if $k | regexMatch "^CHAINWARDEN_FALLBACK_KEY_[A-Z0-9_]+$" }}
          {{ $k }}={{ $v }}{{ end }}{{ end }}{{ end }}{{ end }}
        EOT
        destination = "secrets/fallback.env"
        env         = true
        perms       = "600"
        change_mode = "restart"
        error_on_missing_key = false
      }

      # THE template: the same file consul-template renders on hosts.
      template {
        data        = file("${var.templates_dir}/nginx/rpc-proxy.conf.ctmpl")
        destination = "local/staging/rpc-proxy.conf"
        perms       = "600"
        splay       = "0s"
        wait {
          min = "250ms"
          max = "3s"
        }
        change_mode = "script"
        change_script {
          command       = "/bin/sh"
          args          = ["-c", "cd \"$NOMAD_TASK_DIR\" && ./apply.sh staging/rpc-proxy.conf"]
          timeout       = "30s"
          fail_on_error = false
        }
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
