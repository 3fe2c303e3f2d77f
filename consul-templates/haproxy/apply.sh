#!/bin/sh
# apply.sh [STAGED]: consul-template's exec command for HAProxy. It checks the freshly rendered rpc-proxy.cfg with
# `haproxy -c` together with haproxy.cfg and only when HAProxy accepts it moves it over the live rpc-proxy.cfg (one
# rename) and sends SIGUSR2 to the master (-W), which reloads its workers without dropping connections. A render
# HAProxy rejects never replaces the live config: it is kept as staging/rejected.cfg and the script says so on
# stderr, exiting 0 so consul-template keeps running and the next good render applies.
#
# Environment: CHAINWARDEN_HAPROXY_PIDFILE  the -p file of the master (default /run/chainwarden-haproxy.pid)
#              HAPROXY                      the haproxy binary (default haproxy from PATH)
set -eu
umask 077
dir=$(cd "$(dirname "$0")" && pwd)
staged=${1:-staging/rpc-proxy.cfg}
case $staged in /*) ;; *) staged=$dir/$staged ;; esac
pidfile=${CHAINWARDEN_HAPROXY_PIDFILE:-/run/chainwarden-haproxy.pid}
haproxy=${HAPROXY:-haproxy}

if ! out=$("$haproxy" -c -q -f "$dir/haproxy.cfg" -f "$staged" 2>&1); then
	cp "$staged" "$(dirname "$staged")/rejected.cfg"
	echo "chainwarden-proxy: haproxy rejected the new render, the live config stays: $out" >&2
	exit 0
fi
tmp=$(mktemp "$dir/.rpc-proxy.cfg.XXXXXX")
cp "$staged" "$tmp"
mv -f "$tmp" "$dir/rpc-proxy.cfg"
pid=$(cat "$pidfile" 2>/dev/null || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
	kill -USR2 "$pid"
	echo "chainwarden-proxy: reloaded haproxy"
else
	echo "chainwarden-proxy: config in place, haproxy not running yet"
fi
