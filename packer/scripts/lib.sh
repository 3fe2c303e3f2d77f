# shellcheck shell=bash
# Shared by the provisioning steps: logging, apt, and where the build machine's uploads are.
# The steps run as root on the machine being imaged (a Packer build instance, or a chroot in the tests).

set -euo pipefail

# UPLOAD_DIR holds what Packer's file provisioners uploaded: bin/ (chainwarden and any prebuilt
# consul, nomad, consul-template), files/ (configs, units) and scripts/.
UPLOAD_DIR=${UPLOAD_DIR:-/tmp/chainwarden-upload}
# shellcheck disable=SC2034 # FILES and BIN_DIR are for the steps that source this file.
FILES=$UPLOAD_DIR/files
# shellcheck disable=SC2034
BIN_DIR=/usr/local/bin

log() { printf 'provision[%s]: %s\n' "${STEP:-main}" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

apt_install() {
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

# os_field NAME: a field of /etc/os-release (ID, VERSION_CODENAME, ...).
os_field() {
	sed -n "s/^$1=//p" /etc/os-release | tr -d '"'
}

# uploaded NAME: the path of a prebuilt binary uploaded from the build machine, or nothing.
uploaded() {
	local p=$UPLOAD_DIR/bin/$1
	if [ -f "$p" ]; then printf '%s' "$p"; fi
}

# apt_version PACKAGE PREFIX: the newest version of PACKAGE in the configured repositories that starts with PREFIX.
apt_version() {
	apt-cache madison "$1" | awk -v p="$2" '$3 ~ "^" p {print $3; exit}'
}

# add_apt_repo NAME KEY_URL FINGERPRINT LINE: a third-party repository whose signing key must have FINGERPRINT.
add_apt_repo() {
	local name=$1 key_url=$2 fpr=$3 line=$4 keyring=/usr/share/keyrings/$1-archive-keyring.gpg tmp
	tmp=$(mktemp -d)
	curl -fsSL --retry 5 "$key_url" -o "$tmp/key"
	gpg --batch --yes --dearmor -o "$tmp/key.gpg" "$tmp/key"
	if ! gpg --batch --show-keys --with-colons "$tmp/key.gpg" | awk -F: '$1 == "fpr" {print $10}' | grep -qx "$fpr"; then
		rm -rf "$tmp"
		die "$name signing key from $key_url does not have fingerprint $fpr"
	fi
	install -m 0644 "$tmp/key.gpg" "$keyring"
	rm -rf "$tmp"
	printf 'deb [signed-by=%s] %s\n' "$keyring" "$line" >"/etc/apt/sources.list.d/$name.list"
	apt-get update -q
}
