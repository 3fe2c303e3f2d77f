# consul-template for the chainwarden HAProxy RPC proxy. Run it from this directory (the systemd unit's
# WorkingDirectory), e.g. `consul-template -config consul-template.hcl`; -consul-addr overrides the address.
# The template renders into staging/; apply.sh validates with `haproxy -c` and only then moves it into place and
# reloads the HAProxy master with SIGUSR2.
# Exit cleanly on SIGTERM (systemd's and Nomad's stop signal); consul-template's default is SIGINT.
kill_signal = "SIGTERM"

consul {
  address = "127.0.0.1:8500"
  retry {
    enabled     = true
    attempts    = 0 # forever: a Consul restart must not end the proxy's updates
    backoff     = "250ms"
    max_backoff = "5s"
  }
}

# Quiescence: render once the catalog has been quiet for min, and at least every max while it keeps changing, so a
# flapping node reloads HAProxy at most once per max.
wait {
  min = "250ms"
  max = "3s"
}

template {
  source      = "rpc-proxy.cfg.ctmpl"
  destination = "staging/rpc-proxy.cfg"
  perms       = 0600
  exec {
    command = ["./apply.sh", "staging/rpc-proxy.cfg"]
    timeout = "30s"
  }
}
