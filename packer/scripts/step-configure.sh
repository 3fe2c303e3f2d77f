#!/usr/bin/env bash
# Users, directories, the base configs, the systemd units and the boot step. Per-host settings (datacenter,
# role, join tag, volumes) are NOT written here: chainwarden-bootstrap.service writes them at every boot from
# the instance's tags and user-data, so one image serves every host.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# system_user NAME HOME: a locked system account that cannot log in.
system_user() {
	getent group "$1" >/dev/null || groupadd --system "$1"
	getent passwd "$1" >/dev/null ||
		useradd --system --gid "$1" --home-dir "$2" --no-create-home --shell /usr/sbin/nologin "$1"
}
system_user consul /opt/consul
system_user chainwarden /var/lib/chainwarden

install -d -m 0750 -o root -g consul /etc/consul.d
install -d -m 0750 -o consul -g consul /opt/consul
install -d -m 0750 -o root -g root /etc/nomad.d
install -d -m 0700 -o root -g root /opt/nomad
install -d -m 0750 -o root -g chainwarden /etc/chainwarden /etc/chainwarden/enabled
install -d -m 0755 -o root -g root /var/lib/chainwarden /var/lib/chainwarden/nginx /var/lib/chainwarden/nginx/logs \
	/var/lib/chainwarden/nginx/tmp /var/lib/chainwarden/haproxy
install -d -m 0755 -o root -g root /etc/chainwarden/proxy /data

# The packages' own sample configs (a dev-mode server for Nomad) are replaced by ours, same names.
rm -f /etc/consul.d/*.hcl /etc/consul.d/*.json /etc/nomad.d/*.hcl /etc/nomad.d/*.json
install -m 0640 -o root -g consul "$FILES/consul.d/consul.hcl" /etc/consul.d/consul.hcl
install -m 0640 -o root -g root "$FILES/nomad.d/nomad.hcl" /etc/nomad.d/nomad.hcl
# The RPC proxy's consul-template configs, templates and apply scripts (the repository's consul-templates/),
# one directory per proxy: /etc/chainwarden/proxy/nginx, /etc/chainwarden/proxy/haproxy. Only those: the
# repository's Go tests and test data next to them are not part of the image.
if [ -d "$UPLOAD_DIR/consul-templates" ]; then
	for proxy in nginx haproxy; do
		cp -R "$UPLOAD_DIR/consul-templates/$proxy" /etc/chainwarden/proxy/
	done
	chown -R root:root /etc/chainwarden/proxy
	chmod -R go-w /etc/chainwarden/proxy
else
	log "no consul-templates uploaded: proxy hosts will have no consul-template config"
fi

install -m 0755 "$FILES/sbin/chainwarden-bootstrap" /usr/local/sbin/chainwarden-bootstrap

units=()
for f in "$FILES"/systemd/*.service "$FILES"/systemd/*.path; do
	install -m 0644 "$f" "/etc/systemd/system/$(basename "$f")"
	case $f in
	*@.service) ;; # templates: their instances are enabled below
	*) if grep -q '^\[Install\]' "$f"; then units+=("$(basename "$f")"); fi ;;
	esac
done
for d in "$FILES"/systemd/*.service.d; do
	install -d -m 0755 "/etc/systemd/system/$(basename "$d")"
	install -m 0644 "$d"/*.conf "/etc/systemd/system/$(basename "$d")/"
done
# Everything is enabled in the image; each unit's Condition on /etc/chainwarden/enabled/ (written by the boot
# step from the host's role) decides whether it starts on a given host.
systemctl enable "${units[@]}" consul-template@nginx.service consul-template@haproxy.service docker.service
# The proxies run as chainwarden-nginx / chainwarden-haproxy (started by their .path units once consul-template
# has rendered a config), never with the packages' stock configs.
systemctl disable nginx.service haproxy.service
