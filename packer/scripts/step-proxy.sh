#!/usr/bin/env bash
# nginx and HAProxy from the distribution's repository, for proxy hosts. Installed on every image (one image for
# every host); they run only on proxy hosts, as chainwarden-nginx or chainwarden-haproxy with the configs
# consul-template renders (the packages' own services, serving the stock configs, are disabled).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# The nginx proxy's JSON-RPC filter is an njs module; HAProxy's is Lua with cjson.
apt_install nginx libnginx-mod-http-js haproxy lua-cjson
