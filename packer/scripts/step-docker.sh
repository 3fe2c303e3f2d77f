#!/usr/bin/env bash
# Docker engine, the Nomad task driver for chain nodes: from Docker's apt repository (default), or the
# distribution's docker.io (DOCKER_SOURCE=distro, what the tests use: Docker's repository is not reachable there).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# Docker's release signing key.
DOCKER_GPG_FINGERPRINT=${DOCKER_GPG_FINGERPRINT:-9DC858229FC7DD38854AE2D88D81803C0EBFCD88}

case ${DOCKER_SOURCE:-docker} in
docker)
	id=$(os_field ID)
	add_apt_repo docker "https://download.docker.com/linux/$id/gpg" "$DOCKER_GPG_FINGERPRINT" \
		"https://download.docker.com/linux/$id $(os_field VERSION_CODENAME) stable"
	pkgs=(docker-ce docker-ce-cli containerd.io)
	if [ -n "${DOCKER_VERSION:-}" ]; then
		v=$(apt_version docker-ce "5:${DOCKER_VERSION}-")
		[ -n "$v" ] || die "docker-ce $DOCKER_VERSION is not in Docker's repository"
		pkgs=("docker-ce=$v" "docker-ce-cli=$v" containerd.io)
	fi
	apt_install "${pkgs[@]}"
	;;
distro)
	[ -z "${DOCKER_VERSION:-}" ] || log "DOCKER_VERSION=$DOCKER_VERSION ignored: the distribution's docker.io is installed"
	apt_install docker.io
	;;
*) die "DOCKER_SOURCE must be docker or distro, not ${DOCKER_SOURCE}" ;;
esac

install -d -m 0755 /etc/docker
install -m 0644 "$FILES/docker/daemon.json" /etc/docker/daemon.json
command -v dockerd >/dev/null || die "dockerd missing after install"
