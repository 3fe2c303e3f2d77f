#!/usr/bin/env bash
# dockerd.sh start|stop|status|env: the project's own Docker engine, for tests and the demo.
#
# No engine runs when the machine boots and chainwarden never touches a system one: this starts dockerd with its
# own data root, exec root, pidfile and socket under DOCKERD_ROOT, with no bridge and no iptables rules (the
# chain-node jobs use host networking), so it changes nothing on the host's network. Images built here (local/geth,
# local/cometbft, FROM scratch) stay in the data root between runs.
#
#   eval "$(scripts/dockerd.sh env)"   # DOCKER_HOST for the docker CLI
set -euo pipefail

CACHE=${CHAINWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainwarden}
DOCKERD_ROOT=${DOCKERD_ROOT:-$CACHE/docker}
# containerd's socket lives under the exec root: unix socket paths must stay short.
EXEC_ROOT=${DOCKERD_EXEC_ROOT:-/run/chainwarden-docker}
SOCK=$DOCKERD_ROOT/docker.sock
PIDFILE=$DOCKERD_ROOT/dockerd.pid
LOG=$DOCKERD_ROOT/dockerd.log

running() {
	[ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && [ -S "$SOCK" ] &&
		curl -sf --unix-socket "$SOCK" http://docker/_ping >/dev/null 2>&1
}

start() {
	if running; then
		echo "dockerd: running (pid $(cat "$PIDFILE"), unix://$SOCK)"
		return 0
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "dockerd: root is needed" >&2
		exit 1
	fi
	command -v dockerd >/dev/null || { echo "dockerd: not installed (make deps installs docker.io)" >&2; exit 1; }
	mkdir -p "$DOCKERD_ROOT/data" "$EXEC_ROOT"
	rm -f "$SOCK" "$PIDFILE"
	# setsid: the engine outlives this script; stop it with `dockerd.sh stop`.
	setsid dockerd \
		--data-root "$DOCKERD_ROOT/data" \
		--exec-root "$EXEC_ROOT" \
		--pidfile "$PIDFILE" \
		-H "unix://$SOCK" \
		--bridge=none --iptables=false --ip-forward=false --ip-masq=false \
		--storage-driver=overlay2 \
		--log-level=warn \
		>"$LOG" 2>&1 </dev/null &
	for _ in $(seq 1 300); do
		if running; then
			echo "dockerd: started (pid $(cat "$PIDFILE"), unix://$SOCK)"
			return 0
		fi
		sleep 0.1
	done
	echo "dockerd: did not come up; log:" >&2
	tail -n 30 "$LOG" >&2
	exit 1
}

stop() {
	if [ ! -f "$PIDFILE" ]; then
		echo "dockerd: not running"
		return 0
	fi
	local pid
	pid=$(cat "$PIDFILE")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 1 150); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
	fi
	rm -f "$PIDFILE" "$SOCK"
	echo "dockerd: stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) if running; then echo "running unix://$SOCK"; else echo "stopped"; exit 1; fi ;;
env) echo "export DOCKER_HOST=unix://$SOCK" ;;
*)
	echo "usage: $0 start|stop|status|env" >&2
	exit 2
	;;
esac
