#!/usr/bin/env bash
# Consul, Nomad and consul-template: the prebuilt binary uploaded from the build machine when there is one,
# else the pinned version from HashiCorp's apt repository. Either way the binary ends up as /usr/local/bin/NAME,
# the path the units use.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# HashiCorp's release signing key.
HASHICORP_GPG_FINGERPRINT=${HASHICORP_GPG_FINGERPRINT:-798AEC654E5C15428C8E42EEAA16FCBCA621E701}

repo_ready=
hashicorp_repo() {
	[ -z "$repo_ready" ] || return 0
	add_apt_repo hashicorp https://apt.releases.hashicorp.com/gpg "$HASHICORP_GPG_FINGERPRINT" \
		"https://apt.releases.hashicorp.com $(os_field VERSION_CODENAME) main"
	repo_ready=1
}

# install_tool NAME VERSION
install_tool() {
	local name=$1 version=$2 src v
	src=$(uploaded "$name")
	if [ -n "$src" ]; then
		log "$name: prebuilt binary uploaded from the build machine"
		install -m 0755 "$src" "$BIN_DIR/$name"
	else
		[ -n "$version" ] || die "$name: no uploaded binary and no version to install"
		hashicorp_repo
		v=$(apt_version "$name" "${version}-")
		[ -n "$v" ] || die "$name $version is not in HashiCorp's repository"
		log "$name: $v from HashiCorp's repository"
		apt_install "$name=$v"
		ln -sfn "/usr/bin/$name" "$BIN_DIR/$name"
	fi
	"$BIN_DIR/$name" version >/dev/null 2>&1 || "$BIN_DIR/$name" -version >/dev/null 2>&1 ||
		die "$name does not run"
}

install_tool consul "${CONSUL_VERSION:-}"
install_tool nomad "${NOMAD_VERSION:-}"
install_tool consul-template "${CONSUL_TEMPLATE_VERSION:-}"
