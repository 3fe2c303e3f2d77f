#!/usr/bin/env bash
# The fleet benchmark of head sharing: a real 3-server Consul cluster on loopback, simulated agents (the real
# internal/heads code, one Consul client each) for 100, 300 and 1,000 hosts × 3 nodes over 10 networks, before
# (every node writes, whole-prefix watches) and after (bounded publishers); see docs/BENCHMARKS.md. Flags go to
# scripts/benchfleet (e.g. -hosts 100,300 -duration 60s).
set -euo pipefail
cd "$(dirname "$0")/.."
go run ./scripts/benchfleet "$@"
