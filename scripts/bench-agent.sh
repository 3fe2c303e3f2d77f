#!/usr/bin/env bash
# The agent benchmark: one agent, 1,000 nodes, 1 s interval, against a real Consul, heads by push (12 s and 1 s
# blocks) and by polling only, one run each (-scenarios; see docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./scripts/benchagent -agent bin/chainwarden "$@"
