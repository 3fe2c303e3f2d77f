#!/usr/bin/env bash
# Installs everything chainwarden's tests and demo need on a fresh Debian machine, idempotently:
# Debian packages, and pinned real components built from the Go module proxy into a cache outside the clone.
# A second run finds them in the cache and takes seconds.
set -euo pipefail

CONSUL_VERSION=v1.19.2
NOMAD_VERSION=v1.10.5
NOMAD_API_VERSION=v0.0.0-20250909143645-a3b86c697f38
GETH_VERSION=v1.16.7
GETH_CLIQUE_VERSION=v1.13.15
COMETBFT_VERSION=v0.38.19
CONSUL_TEMPLATE_VERSION=v0.41.1
PACKER_VERSION=v1.9.4
PACKER_PLUGIN_AMAZON_VERSION=v1.2.9
CHAINLINK_VERSION=v2.23.0
PLAYWRIGHT_CORE_VERSION=1.65.1

CACHE=${CHAINWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainwarden}
BIN=$CACHE/bin
mkdir -p "$BIN"

say() { printf 'deps: %s\n' "$*"; }

APT_PACKAGES=(nginx libnginx-mod-http-js haproxy lua-cjson docker.io xfsprogs iproute2 util-linux e2fsprogs shellcheck curl procps psmisc prometheus debootstrap systemd postgresql chromium fonts-liberation fonts-dejavu-core
	qemu-system-x86 qemu-utils dnsmasq-base) # the last three: the node image boot test (make image-test)
install_apt() {
	local missing=()
	for p in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		say "debian packages present"
		return
	fi
	if [ "$(id -u)" -ne 0 ]; then
		say "need root to install: ${missing[*]}"
		exit 1
	fi
	say "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# Packages must not start their services on install: tests start their own nginx/haproxy/dockerd.
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	rm -f /usr/sbin/policy-rc.d
}

# have NAME VERSION: true when the cached binary exists.
have() { [ -x "$BIN/$1-$2" ]; }

# link NAME VERSION [ALIAS]: points BIN/ALIAS (default NAME) at the versioned binary.
link() { ln -sfn "$1-$2" "$BIN/${3:-$1}"; }

# tools_module DIR: a scratch module to build a tool from; removed by the caller.
tools_module() {
	local dir
	dir=$(mktemp -d "${TMPDIR:-/tmp}/chainwarden-deps.XXXXXX")
	printf '%s' "$dir"
}

build_consul() {
	if ! have consul $CONSUL_VERSION; then
		say "building consul $CONSUL_VERSION (about 4 minutes)"
		local d
		d=$(tools_module)
		(cd "$d" && go mod init chainwarden.local/tools/consul >/dev/null 2>&1 &&
			go get github.com/hashicorp/consul@$CONSUL_VERSION >/dev/null 2>&1 &&
			CGO_ENABLED=0 go build -trimpath -o "$BIN/consul-$CONSUL_VERSION.tmp" github.com/hashicorp/consul)
		mv "$BIN/consul-$CONSUL_VERSION.tmp" "$BIN/consul-$CONSUL_VERSION"
		rm -rf "$d"
	fi
	link consul $CONSUL_VERSION
	say "consul $CONSUL_VERSION ready"
}

build_nomad() {
	if ! have nomad $NOMAD_VERSION; then
		say "building nomad $NOMAD_VERSION (about 4 minutes)"
		local d src
		d=$(tools_module)
		src=$(cd "$d" && go mod download -json github.com/hashicorp/nomad@$NOMAD_VERSION | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
		# Nomad's own go.mod pins its dependencies; reuse it with the module renamed and the ./api replace pointed at
		# the published api module of the same commit.
		sed -e 's#^module github.com/hashicorp/nomad$#module chainwarden.local/tools/nomad#' \
			-e "s#^replace github.com/hashicorp/nomad/api => ./api\$#replace github.com/hashicorp/nomad/api => github.com/hashicorp/nomad/api $NOMAD_API_VERSION#" \
			"$src/go.mod" >"$d/go.mod"
		cp "$src/go.sum" "$d/go.sum"
		chmod u+w "$d/go.mod" "$d/go.sum"
		printf 'package tools\n\nimport _ "github.com/hashicorp/nomad"\n' >"$d/tools.go"
		(cd "$d" && go mod edit -require=github.com/hashicorp/nomad@$NOMAD_VERSION &&
			CGO_ENABLED=1 go build -mod=mod -trimpath -o "$BIN/nomad-$NOMAD_VERSION.tmp" github.com/hashicorp/nomad)
		mv "$BIN/nomad-$NOMAD_VERSION.tmp" "$BIN/nomad-$NOMAD_VERSION"
		rm -rf "$d"
	fi
	link nomad $NOMAD_VERSION
	say "nomad $NOMAD_VERSION ready"
}

build_chainlink() {
	# The build is named for its version and how it was built: "+v" builds carry their version (static.Version),
	# which the node reports on /v2/build_info and chainwarden shows; an older build without it is replaced.
	local build=$CHAINLINK_VERSION+v
	if ! have chainlink "$build"; then
		say "building chainlink $CHAINLINK_VERSION (about 10 minutes)"
		local d src
		d=$(tools_module)
		src=$(cd "$d" && go mod download -json github.com/smartcontractkit/chainlink/v2@$CHAINLINK_VERSION |
			sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
		# Chainlink's own go.mod pins its dependencies (and replaces); reuse it with the module renamed.
		sed -e 's#^module github.com/smartcontractkit/chainlink/v2$#module chainwarden.local/tools/chainlink#' \
			"$src/go.mod" >"$d/go.mod"
		cp "$src/go.sum" "$d/go.sum"
		chmod u+w "$d/go.mod" "$d/go.sum"
		printf 'package tools\n\nimport _ "github.com/smartcontractkit/chainlink/v2"\n' >"$d/tools.go"
		(cd "$d" && go mod edit -require=github.com/smartcontractkit/chainlink/v2@$CHAINLINK_VERSION &&
			CGO_ENABLED=1 go build -mod=mod -trimpath -o "$BIN/chainlink-$build.tmp" \
				-ldflags "-X github.com/smartcontractkit/chainlink/v2/core/static.Version=${CHAINLINK_VERSION#v}" \
				github.com/smartcontractkit/chainlink/v2)
		mv "$BIN/chainlink-$build.tmp" "$BIN/chainlink-$build"
		rm -f "$BIN/chainlink-$CHAINLINK_VERSION" # an older build of the same version, without its version stamped
		rm -rf "$d"
	fi
	link chainlink "$build"
	say "chainlink $CHAINLINK_VERSION ready"
}

# go_install NAME VERSION PKG [extra go flags...]: a static build of a main package that has no replace directives.
go_install() {
	local name=$1 version=$2 pkg=$3
	shift 3
	if ! have "$name" "$version"; then
		say "building $name $version"
		local d
		d=$(tools_module)
		GOBIN="$d" CGO_ENABLED=0 go install -trimpath "$@" "$pkg@$version"
		mv "$d/$(basename "$pkg")" "$BIN/$name-$version"
		rm -rf "$d"
	fi
	say "$name $version ready"
}

build_packer() {
	if ! have packer $PACKER_VERSION; then
		say "building packer $PACKER_VERSION (about 4 minutes)"
		local d
		d=$(tools_module)
		(cd "$d" && go mod init chainwarden.local/tools/packer >/dev/null 2>&1 &&
			go get github.com/hashicorp/packer@$PACKER_VERSION >/dev/null 2>&1 &&
			CGO_ENABLED=0 go build -trimpath -o "$BIN/packer-$PACKER_VERSION.tmp" github.com/hashicorp/packer)
		mv "$BIN/packer-$PACKER_VERSION.tmp" "$BIN/packer-$PACKER_VERSION"
		rm -rf "$d"
	fi
	link packer $PACKER_VERSION
	say "packer $PACKER_VERSION ready"
}

build_packer_plugin_amazon() {
	if ! have packer-plugin-amazon $PACKER_PLUGIN_AMAZON_VERSION; then
		say "building packer-plugin-amazon $PACKER_PLUGIN_AMAZON_VERSION"
		local d src
		d=$(tools_module)
		src=$(cd "$d" && go mod download -json github.com/hashicorp/packer-plugin-amazon@$PACKER_PLUGIN_AMAZON_VERSION |
			sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
		# Built as its own module: its go.mod replaces go-cty, which a plain `go build PKG@V` would ignore.
		cp -R "$src/." "$d/"
		chmod -R u+w "$d"
		(cd "$d" && CGO_ENABLED=0 go build -trimpath -o "$BIN/packer-plugin-amazon-$PACKER_PLUGIN_AMAZON_VERSION.tmp" .)
		mv "$BIN/packer-plugin-amazon-$PACKER_PLUGIN_AMAZON_VERSION.tmp" "$BIN/packer-plugin-amazon-$PACKER_PLUGIN_AMAZON_VERSION"
		rm -rf "$d"
	fi
	link packer-plugin-amazon $PACKER_PLUGIN_AMAZON_VERSION
	say "packer-plugin-amazon $PACKER_PLUGIN_AMAZON_VERSION ready"
}

# playwright-core (npm) drives Debian's chromium in the browser tests (internal/browsertest); it goes into the
# cache, outside the clone, and is left alone when the pinned version is there.
install_playwright() {
	local dir=$CACHE/node have_version
	have_version=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$dir/node_modules/playwright-core/package.json" 2>/dev/null || true)
	if [ "$have_version" != "$PLAYWRIGHT_CORE_VERSION" ]; then
		if ! command -v npm >/dev/null; then
			say "apt-get install nodejs npm"
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
		fi
		say "npm install playwright-core@$PLAYWRIGHT_CORE_VERSION into $dir"
		mkdir -p "$dir"
		npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null
	fi
	say "playwright-core $PLAYWRIGHT_CORE_VERSION ready"
}

main() {
	local what=${1:-all}
	install_apt
	install_playwright
	build_consul
	go_install geth $GETH_VERSION github.com/ethereum/go-ethereum/cmd/geth && link geth $GETH_VERSION
	# Clique (proof of authority) sealing was removed in geth v1.14: multi-node test networks use v1.13.
	go_install geth $GETH_CLIQUE_VERSION github.com/ethereum/go-ethereum/cmd/geth -ldflags=-checklinkname=0 &&
		link geth $GETH_CLIQUE_VERSION geth-clique
	go_install cometbft $COMETBFT_VERSION github.com/cometbft/cometbft/cmd/cometbft && link cometbft $COMETBFT_VERSION
	go_install consul-template $CONSUL_TEMPLATE_VERSION github.com/hashicorp/consul-template &&
		link consul-template $CONSUL_TEMPLATE_VERSION
	build_nomad
	build_chainlink
	if [ "$what" = "all" ]; then
		build_packer
		build_packer_plugin_amazon
	fi
	say "all components in $BIN"
}

main "$@"
