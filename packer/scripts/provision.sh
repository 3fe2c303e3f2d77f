#!/usr/bin/env bash
# Turns a Debian 12 (or Ubuntu LTS) machine into a chainwarden node image. Packer runs it as root on the build
# instance; the tests run it in a chroot of a debootstrapped Debian 12. It runs the steps beside it in order.
#
# Environment (all optional):
#   UPLOAD_DIR               what the build machine uploaded (default /tmp/chainwarden-upload)
#   CONSUL_VERSION, NOMAD_VERSION, CONSUL_TEMPLATE_VERSION
#                            versions installed from HashiCorp's apt repository when no prebuilt binary was uploaded
#   DOCKER_SOURCE            docker (Docker's apt repository, default) or distro (the distribution's docker.io)
#   DOCKER_VERSION           docker-ce version from Docker's repository (default: newest)
#   CHAINWARDEN_VERSION      the version the uploaded chainwarden binary must report (default: not checked)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root"

# No daemon starts while the image is built: a Consul or Nomad that ran here would bake its node ID and state
# into every host made from the image.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi

for step in base docker hashicorp proxy chainwarden configure harden cleanup; do
	log "step $step"
	STEP=$step bash "$here/step-$step.sh"
done
log "done"
