#!/usr/bin/env bash
# demo-proxy.sh: the RPC proxy part of `make demo`.
#
#   scripts/demo-proxy.sh run CONSUL_ADDR PORT [WORKDIR]
#       consul-template + nginx in front of every Consul service tagged "chainwarden", listening on 127.0.0.1:PORT
#       (clients call http://127.0.0.1:PORT/<service>). Both run in the background of this script, which stays in
#       the foreground until it is interrupted and then stops both. Logs in WORKDIR (default
#       ${TMPDIR:-/tmp}/chainwarden-demo/proxy).
#   scripts/demo-proxy.sh client URL [SECONDS]
#       a client calling eth_blockNumber through URL in a loop, printing every second how many calls succeeded and
#       failed and the last height, for SECONDS (default 30): run it while a node is made to lag or killed.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
CACHE_BIN=${CHAINWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainwarden}/bin
export PATH=$CACHE_BIN:$PATH

run() {
	local consul=$1 port=$2 work=${3:-${TMPDIR:-/tmp}/chainwarden-demo/proxy}
	rm -rf "$work"
	mkdir -p "$work/conf/staging" "$work/prefix/logs" "$work/prefix/tmp"
	cp "$here"/consul-templates/nginx/{nginx.conf,rpc-filter.js,rpc-proxy.conf.ctmpl,consul-template.hcl,apply.sh} "$work/conf/"
	export CHAINWARDEN_PROXY_LISTEN=127.0.0.1:$port
	export CHAINWARDEN_NGINX_PREFIX=$work/prefix/
	export CHAINWARDEN_PROXY_ACCESS_LOG=$work/prefix/logs/access.log
	cd "$work/conf"
	consul-template -once -config consul-template.hcl -consul-addr "$consul" -log-level warn
	nginx -p "$work/prefix/" -c "$work/conf/nginx.conf" -g 'daemon off;' >"$work/nginx.log" 2>&1 &
	local nginx_pid=$!
	consul-template -config consul-template.hcl -consul-addr "$consul" -log-level info >"$work/consul-template.log" 2>&1 &
	local ct_pid=$!
	trap 'kill '"$ct_pid"' '"$nginx_pid"' 2>/dev/null; wait' EXIT INT TERM
	echo "demo-proxy: nginx on http://127.0.0.1:$port/<service> (config $work/conf/rpc-proxy.conf, logs $work)"
	wait -n "$nginx_pid" "$ct_pid"
	echo "demo-proxy: nginx or consul-template stopped; see $work/*.log" >&2
	exit 1
}

client() {
	local url=$1 secs=${2:-30} ok=0 failed=0 height=- end=$((SECONDS + ${2:-30}))
	local body='{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
	local tick=$SECONDS
	while [ "$SECONDS" -lt "$end" ]; do
		if out=$(curl -sf -m 5 -H 'Content-Type: application/json' -d "$body" "$url") &&
			h=$(printf '%s' "$out" | sed -n 's/.*"result":"\(0x[0-9a-f]*\)".*/\1/p') && [ -n "$h" ]; then
			ok=$((ok + 1))
			height=$((h))
		else
			failed=$((failed + 1))
		fi
		if [ "$SECONDS" -ne "$tick" ]; then
			tick=$SECONDS
			printf 'client: %4d ok %4d failed  height %s\n' "$ok" "$failed" "$height"
		fi
	done
	printf 'client: done after %ss: %d ok, %d failed\n' "$secs" "$ok" "$failed"
	[ "$failed" -eq 0 ]
}

case ${1:-} in
run) shift && run "$@" ;;
client) shift && client "$@" ;;
*)
	sed -n '2,13p' "$0" >&2
	exit 2
	;;
esac
