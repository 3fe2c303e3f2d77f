#!/usr/bin/env bash
# What operators expect of a host image: no password or root logins over SSH, IMDSv2 only (the AMI is marked
# imds_support=v2.0 by the template; nothing here talks IMDSv1), kernel settings against spoofing and redirects.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

install -d -m 0755 /etc/ssh/sshd_config.d
install -m 0644 "$FILES/ssh/chainwarden.conf" /etc/ssh/sshd_config.d/50-chainwarden.conf
install -m 0644 "$FILES/sysctl/chainwarden.conf" /etc/sysctl.d/60-chainwarden.conf
