#!/usr/bin/env bash
# The benchmarks (method and figures in BENCHMARKS.md). Each installs what it
# needs like the other scripts and starts its own Apache Kafka broker on
# loopback ports.
#   scripts/bench.sh          junction against the Kafka Streams peer and the
#                             pass-through ceiling, under at_least_once and
#                             exactly_once, then junction's restore, memory and
#                             failover; prints Markdown tables. Sizes:
#                             BENCH_WORKFLOWS, BENCH_OPEN_WORKFLOWS,
#                             BENCH_PARTITIONS, BENCH_LATENCY_SECONDS,
#                             BENCH_LATENCY_RATE, BENCH_ROUNDS, the broker's
#                             warm-up BENCH_WARM_UP_SECONDS (20); subsets:
#                             BENCH_GUARANTEES, BENCH_CONTENDERS; the load's
#                             partitioner: BENCH_PARTITIONER (default
#                             murmur2_random, every record on its workflow's
#                             home partition; consistent_random, librdkafka's
#                             default, puts three in four elsewhere);
#                             BENCH_LATENCY_TIMELINE=1 prints junction's and
#                             the peer's latency phases 250 ms at a time
#   scripts/bench.sh --instructions  instructions per event on the hot path,
#                             counted by callgrind on a fixed input, joined at
#                             once (exactly_once) and held for a marker
#                             (at_least_once)
#   scripts/bench.sh --lso    how long read_committed readers wait after a
#                             kill -9 under exactly_once (BENCH_LSO_RUNS runs)
#   scripts/bench.sh --restart  how long an instance restarted after a kill -9
#                             takes to process again, static and dynamic
#                             members, default settings (BENCH_RESTART_RUNS runs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh kafka
case "${1:-}" in
    --lso) cargo bench --bench lso_wait ;;
    --restart) cargo bench --bench restart ;;
    --instructions)
        if ! command -v valgrind >/dev/null 2>&1; then
            SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq valgrind >/dev/null
        fi
        program=$(cargo bench --bench hot_path --no-run --message-format=json 2>/dev/null \
            | sed -n 's/.*"executable":"\([^"]*\/hot_path-[^"]*\)".*/\1/p' | tail -1)
        out=$(mktemp -d)
        for guarantee in exactly_once at_least_once; do
            HOT_PATH_GUARANTEE=$guarantee valgrind --tool=callgrind --toggle-collect='*hot_path::interval*' \
                --callgrind-out-file="$out/callgrind.out" "$program" --bench >"$out/stdout" 2>"$out/stderr" \
                || { cat "$out/stderr"; exit 1; }
            cat "$out/stdout"
            events=$(sed -n 's/^hot path: \([0-9]*\) events.*/\1/p' "$out/stdout")
            instructions=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out/callgrind.out")
            echo "$guarantee: instructions (Ir) on the hot path: $instructions"
            echo "$guarantee: instructions per event: $((instructions / events))"
        done
        rm -rf "$out"
        ;;
    "") cargo bench --bench end_to_end ;;
    *) echo "usage: $0 [--instructions|--lso|--restart]" >&2; exit 2 ;;
esac
