#!/bin/sh
# apply.sh [STAGED]: consul-template's exec command for nginx. It checks the freshly rendered rpc-proxy.conf with
# `nginx -t` in a scratch copy of this directory and only when nginx accepts it moves it over the live
# rpc-proxy.conf (one rename) and reloads nginx. A render nginx rejects never replaces the live config: it is kept
# as staging/rejected.conf and the script says so on stderr, exiting 0 so consul-template keeps running and the
# next good render applies.
#
# Environment: CHAINWARDEN_NGINX_PREFIX  the -p nginx runs with (default /var/lib/chainwarden/nginx/)
#              NGINX                     the nginx binary (default nginx from PATH)
set -eu
umask 077
dir=$(cd "$(dirname "$0")" && pwd)
staged=${1:-staging/rpc-proxy.conf}
case $staged in /*) ;; *) staged=$dir/$staged ;; esac
prefix=${CHAINWARDEN_NGINX_PREFIX:-/var/lib/chainwarden/nginx/}
nginx=${NGINX:-nginx}

check=$(mktemp -d "$dir/.check.XXXXXX")
trap 'rm -rf "$check"' EXIT
cp "$dir/nginx.conf" "$dir/rpc-filter.js" "$check/"
cp "$staged" "$check/rpc-proxy.conf"
if ! out=$("$nginx" -t -q -p "$prefix" -c "$check/nginx.conf" 2>&1); then
	cp "$staged" "$(dirname "$staged")/rejected.conf"
	echo "chainwarden-proxy: nginx rejected the new render, the live config stays: $out" >&2
	exit 0
fi
mv -f "$check/rpc-proxy.conf" "$dir/rpc-proxy.conf"
pid=$(cat "$prefix/nginx.pid" 2>/dev/null || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
	"$nginx" -s reload -p "$prefix" -c "$dir/nginx.conf"
	echo "chainwarden-proxy: reloaded nginx"
else
	echo "chainwarden-proxy: config in place, nginx not running yet"
fi
