#!/usr/bin/env bash
# The agent benchmark: one agent, 1,000 nodes, 1 s interval, against a real Consul (see docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./scripts/benchagent -agent bin/chainwarden "$@"
