#!/usr/bin/env bash
# fuzz.sh: runs every Go fuzz target (func FuzzXxx(f *testing.F) in a _test.go file) for FUZZTIME each, one after
# another. A crasher is written by go test to the package's testdata/fuzz/FuzzXxx/; fix it and commit that file as a
# seed, so plain `go test` replays it.
# Usage: scripts/fuzz.sh [FuzzXxx ...]   (no names: all targets)
#   FUZZTIME   how long each target runs, as go test -fuzztime takes it (default 30s; 10000x counts runs)
#   FUZZMINIMIZETIME  how long to minimize each new input or crasher (default 10s; go test's own 60s would spend most
#              of a short run minimizing)
#   FUZZFLAGS  extra go test flags, e.g. "-parallel 1" on a small machine
# go test drops a fuzz worker's own output: a panic while it minimizes shows only as "fuzzing process hung or
# terminated unexpectedly while minimizing" (golang/go#52569), and the input written then need not be the one that
# crashed. Run that target again with FUZZMINIMIZETIME=0: a crash then leaves the very input it crashed on, which
# `go test -run=FuzzXxx/<file>` replays with the panic.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}
failed=()
while IFS=: read -r file decl; do
	name=${decl#func }
	name=${name%%(*}
	if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then
		continue
	fi
	pkg=./$(dirname "$file")
	echo "== $name ($pkg) for $fuzztime"
	# shellcheck disable=SC2086 # FUZZFLAGS is a list of flags
	if ! go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime "${FUZZMINIMIZETIME:-10s}" \
		${FUZZFLAGS:-} "$pkg"; then
		failed+=("$name")
	fi
done < <(grep -rEo --include='*_test.go' --exclude-dir=.git '^func Fuzz[A-Za-z0-9_]*\(' . | sed 's|^\./||' | sort)
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: failed: ${failed[*]}" >&2
	exit 1
fi
