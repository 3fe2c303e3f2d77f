#!/usr/bin/env bash
# Base packages every host needs: TLS roots, curl and gpg for the repositories and the boot step, filesystem
# tools for the EBS volumes, systemd (present on the AMIs; a bare root filesystem may lack it).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

case $(os_field ID) in
debian | ubuntu) ;;
*) die "unsupported distribution $(os_field ID): Debian 12 or Ubuntu LTS expected" ;;
esac

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt_install ca-certificates curl gnupg xfsprogs e2fsprogs nvme-cli systemd systemd-sysv iproute2 procps
apt-get upgrade -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
