#!/usr/bin/env bash
# The chainwarden binary, uploaded from the local build (`make build`).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

src=$(uploaded chainwarden)
[ -n "$src" ] || die "no chainwarden binary in $UPLOAD_DIR/bin (build it with make build)"
install -m 0755 "$src" "$BIN_DIR/chainwarden"
got=$("$BIN_DIR/chainwarden" version) || die "chainwarden does not run"
log "installed $got"
if [ -n "${CHAINWARDEN_VERSION:-}" ] && [ "$got" != "chainwarden $CHAINWARDEN_VERSION" ]; then
	die "the uploaded binary reports \"$got\", the build asked for chainwarden $CHAINWARDEN_VERSION"
fi

# Nomad dynamic host volume plugin (`nomad volume create` with plugin_id = "chainwarden-ebs"), in the client's
# host_volume_plugin_dir; the wrapper comes from the binary itself (docs/VOLUMES.md).
plugins=/opt/nomad/host_volume_plugins
install -d -m 0700 /opt/nomad
install -d -m 0755 "$plugins"
"$BIN_DIR/chainwarden" volume plugin script >"$plugins/chainwarden-ebs.tmp"
chmod 0755 "$plugins/chainwarden-ebs.tmp"
mv -f "$plugins/chainwarden-ebs.tmp" "$plugins/chainwarden-ebs"
