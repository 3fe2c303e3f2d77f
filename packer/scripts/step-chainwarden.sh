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
