#!/usr/bin/env bash
# bench-proxy.sh: the RPC proxy benchmarks (docs/BENCHMARKS.md, "RPC proxy"), against real Consul, geth (a Clique
# network; one geth --dev node for overhead), the chainwarden agent, consul-template, nginx and HAProxy:
#   overhead   CPU per call of each proxy process and the latency it adds, at a fixed open-loop rate, and
#              saturated throughput: geth direct, bare nginx and HAProxy hops, the filters before and now (same run;
#              CHAINWARDEN_BENCH_RATE calls/s, default 500; CHAINWARDEN_BENCH_ROUNDS, default 5;
#              CHAINWARDEN_BENCH_TARGETS=REGEX keeps only the targets it matches, besides direct and the bare nginx
#              hop; CHAINWARDEN_BENCH_HAPROXY_GLOBAL="nbthread 1" adds an HAProxy with that global line, to try a
#              tuning side by side)
#   drain      failed client reads during planned drains and during crashes
#   failover   time from a node stopping (SIGSTOP, peers removed) to nginx sending it no more requests
# Usage: scripts/bench-proxy.sh [overhead|drain|failover|all]   (CHAINWARDEN_BENCH_TRIALS=N for failover, default 20)
# The figures are printed as markdown and kept in ${TMPDIR:-/tmp}/bench-proxy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=${CHAINWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chainwarden}/bin:$PATH
case ${1:-all} in
overhead) run='TestBenchProxyOverhead' ;;
drain) run='TestBenchDrainAndCrash' ;;
failover) run='TestBenchFailover' ;;
all) run='TestBenchProxyOverhead|TestBenchDrainAndCrash|TestBenchFailover' ;;
*)
	sed -n '2,10p' "$0" >&2
	exit 2
	;;
esac
out=${TMPDIR:-/tmp}/bench-proxy.md
: >"$out"
CHAINWARDEN_BENCH=1 CHAINWARDEN_BENCH_OUT=$out go test -count=1 -timeout 60m -run "^($run)\$" -v ./consul-templates/ |
	grep -E '^(=== RUN|--- |\s+\w+_test\.go:|ok|FAIL)' || true
echo
cat "$out"
