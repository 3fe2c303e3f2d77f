#!/usr/bin/env bash
# demo-nomad.sh start|stop|status: the Nomad part of `make demo`.
#
# start: the project's dockerd (scripts/dockerd.sh), local FROM-scratch images of the Go-built static geth and
# cometbft (no registry here), a single-node Nomad agent (server + client, docker driver, host volumes under .demo/)
# registered with the demo's Consul, and the geth (a --dev chain) and cometbft (a one-validator chain) jobs from
# jobs/, submitted with `chainwarden job run`. `nomad status` and the Nomad UI (http://127.0.0.1:4646) show them;
# an agent with `nomad { address = "http://127.0.0.1:4646" }` discovers and registers them in Consul.
# stop: stops the jobs, the Nomad agent and the dockerd it started.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CHAINWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainwarden}
BIN=$CACHE/bin
export PATH=$BIN:$PATH
DEMO=${DEMO_DIR:-$PWD/.demo}/nomad
NOMAD_HTTP_PORT=${NOMAD_HTTP_PORT:-4646}
export NOMAD_ADDR=http://127.0.0.1:$NOMAD_HTTP_PORT
CONSUL_ADDR=${CONSUL_HTTP_ADDR:-127.0.0.1:8500}
GETH_P2P_PORT=${GETH_P2P_PORT:-30393}
COMETBFT_P2P_PORT=${COMETBFT_P2P_PORT:-26696}
COMETBFT_CHAIN_ID=${COMETBFT_CHAIN_ID:-demo-cometbft}
DOCKER_USERS=${DOCKERD_ROOT:-$CACHE/docker}/users
GETH_VERSION=v1.16.7
COMETBFT_VERSION=v0.38.19

say() { printf 'demo-nomad: %s\n' "$*"; }

chainwarden() {
	if [ -x bin/chainwarden ]; then bin/chainwarden "$@"; else go run ./cmd/chainwarden "$@"; fi
}

eval "$(scripts/dockerd.sh env)"

# image NAME TAG SRC DEST: a FROM-scratch image holding one static binary, by `docker import` of a tarball.
image() {
	local name=$1 tag=$2 src=$3 dest=$4 root
	if docker image inspect "local/$name:$tag" >/dev/null 2>&1; then
		return
	fi
	root=$(mktemp -d)
	mkdir -p "$root$(dirname "$dest")" "$root/tmp"
	chmod 1777 "$root/tmp"
	cp -L "$src" "$root$dest"
	tar -C "$root" -c . | docker import -c "ENTRYPOINT [\"$dest\"]" - "local/$name:$tag" >/dev/null
	rm -rf "$root"
	say "built image local/$name:$tag"
}

nomad_up() { curl -sf "$NOMAD_ADDR/v1/status/leader" 2>/dev/null | grep -q ':'; }

start() {
	for b in nomad geth cometbft; do
		[ -x "$BIN/$b" ] || { say "$BIN/$b missing: run make deps"; exit 1; }
	done
	scripts/dockerd.sh start
	# A named user of the shared engine: tests running meanwhile won't stop it (internal/testenv/docker.go).
	mkdir -p "$DOCKER_USERS" && touch "$DOCKER_USERS/demo-nomad"
	image geth $GETH_VERSION "$BIN/geth" /usr/local/bin/geth
	image cometbft $COMETBFT_VERSION "$BIN/cometbft" /usr/bin/cometbft

	mkdir -p "$DEMO/data" "$DEMO/volumes/geth-dev" "$DEMO/volumes/cometbft-dev"
	if ! nomad_up; then
		cat >"$DEMO/nomad.hcl" <<HCL
data_dir = "$DEMO/data"
bind_addr = "127.0.0.1"
disable_update_check = true
ports {
  http = $NOMAD_HTTP_PORT
}
advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}
server {
  enabled = true
  bootstrap_expect = 1
}
client {
  enabled = true
  network_interface = "lo"
  max_kill_timeout = "5m"
  options {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }
  host_volume "geth-dev" {
    path = "$DEMO/volumes/geth-dev"
    read_only = false
  }
  host_volume "cometbft-dev" {
    path = "$DEMO/volumes/cometbft-dev"
    read_only = false
  }
}
consul {
  address = "$CONSUL_ADDR"
}
plugin "docker" {
  config {
    endpoint = "$DOCKER_HOST"
    volumes {
      enabled = true
    }
    gc {
      image = false
      # Other Nomad agents (tests, the demo) share this engine: never reap their containers as dangling.
      dangling_containers {
        enabled = false
      }
    }
  }
}
HCL
		setsid nomad agent -config "$DEMO/nomad.hcl" >"$DEMO/nomad.log" 2>&1 </dev/null &
		echo $! >"$DEMO/nomad.pid"
		for _ in $(seq 1 120); do
			if nomad_up && nomad node status 2>/dev/null | grep -q ready; then break; fi
			sleep 0.5
		done
		nomad_up || { say "nomad did not come up:"; tail -n 30 "$DEMO/nomad.log"; exit 1; }
		say "nomad agent running ($NOMAD_ADDR, log $DEMO/nomad.log)"
	fi

	# The CometBFT chain's genesis and validator key, made once, kept in a Nomad Variable.
	if [ ! -f "$DEMO/cometbft-keys/config/genesis.json" ]; then
		cometbft init --home "$DEMO/cometbft-keys" >/dev/null 2>&1
		sed -i "s/\"chain_id\": \"[^\"]*\"/\"chain_id\": \"$COMETBFT_CHAIN_ID\"/" "$DEMO/cometbft-keys/config/genesis.json"
	fi
	# Retried: a fresh server takes a moment to initialize its keyring.
	for i in $(seq 1 30); do
		if nomad var put -force nomad/jobs/cometbft \
			genesis=@"$DEMO/cometbft-keys/config/genesis.json" \
			node_key=@"$DEMO/cometbft-keys/config/node_key.json" \
			priv_validator_key=@"$DEMO/cometbft-keys/config/priv_validator_key.json" >/dev/null 2>"$DEMO/var.err"; then
			break
		fi
		[ "$i" = 30 ] && { cat "$DEMO/var.err" >&2; exit 1; }
		sleep 1
	done

	chainwarden job run geth -var image=local/geth:$GETH_VERSION -var host_volume=geth-dev -var network=dev \
		-var chain_id=1337 -var service=eth-dev -var p2p_port="$GETH_P2P_PORT" -var cpu=500 -var memory=1024 \
		-var min_healthy_time=5s -var kill_timeout=30s -var min_peers=0 -var 'extra_args=["--dev.period=1"]' \
		-var agent_port="${CHAINWARDEN_AGENT_PORT:-9464}"
	chainwarden job run cometbft -var image=local/cometbft:$COMETBFT_VERSION -var host_volume=cometbft-dev \
		-var chain_id="$COMETBFT_CHAIN_ID" -var service=cometbft-demo -var proxy_app=persistent_kvstore \
		-var p2p_port="$COMETBFT_P2P_PORT" -var cpu=500 -var memory=512 -var min_healthy_time=5s -var min_peers=0 \
		-var agent_port="${CHAINWARDEN_AGENT_PORT:-9464}"
	nomad job status
	say "up: Nomad UI $NOMAD_ADDR/ui; agent config: nomad { address = \"$NOMAD_ADDR\" }"
}

stop() {
	if nomad_up; then
		nomad job stop -yes geth >/dev/null 2>&1 || true
		nomad job stop -yes cometbft >/dev/null 2>&1 || true
		for _ in $(seq 1 60); do
			nomad job status 2>/dev/null | grep -q running || break
			sleep 1
		done
		curl -sf -X PUT "$NOMAD_ADDR/v1/system/gc" >/dev/null || true
		curl -sf "$NOMAD_ADDR/v1/client/gc" >/dev/null || true
		sleep 1
	fi
	if [ -f "$DEMO/nomad.pid" ]; then
		kill "$(cat "$DEMO/nomad.pid")" 2>/dev/null || true
		rm -f "$DEMO/nomad.pid"
	fi
	# Whatever the client didn't unmount (secrets dirs of killed allocations).
	{ grep -o " $DEMO/data[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
	rm -f "$DOCKER_USERS/demo-nomad"
	if [ -z "$(ls -A "$DOCKER_USERS" 2>/dev/null)" ]; then
		scripts/dockerd.sh stop
	fi
	say "stopped"
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
status) nomad job status ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
