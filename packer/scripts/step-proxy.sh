#!/usr/bin/env bash
# nginx and HAProxy from the distribution's repository, for proxy hosts. Installed on every image (one image for
# every host); they only start on hosts whose role says proxy (see the units' drop-ins).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

apt_install nginx haproxy

# The stock site serves a welcome page on every address: a proxy host serves only what consul-template renders.
rm -f /etc/nginx/sites-enabled/default
install -m 0644 "$FILES/nginx/chainwarden-status.conf" /etc/nginx/conf.d/chainwarden-status.conf
