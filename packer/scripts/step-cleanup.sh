#!/usr/bin/env bash
# Leaves nothing host-specific or secret in the image: machine ID, SSH host keys (cloud-init makes new ones on
# first boot), the build's SSH key, agent state, package caches, the uploads.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

apt-get clean
rm -rf /var/lib/apt/lists/*
rm -rf /opt/consul/* /var/lib/chainwarden-agent
# Nomad's state goes, its host volume plugins stay.
find /opt/nomad -mindepth 1 -maxdepth 1 ! -name host_volume_plugins -exec rm -rf {} +
rm -f /etc/consul.d/host.hcl /etc/nomad.d/host.hcl /etc/nomad.d/chainwarden-volume-*.hcl /etc/chainwarden/enabled/* \
	/etc/chainwarden/aws.env
rm -f /etc/ssh/ssh_host_*
# The build's temporary SSH key: instances get their own key pair's key from cloud-init.
rm -f /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
if command -v cloud-init >/dev/null; then cloud-init clean --logs; fi
rm -f /root/.bash_history
rm -rf "$UPLOAD_DIR"
