#!/usr/bin/env bash
# The end-to-end benchmark (method and figures in BENCHMARKS.md): installs
# what it needs like the other scripts, starts its own Apache Kafka broker
# on loopback ports, and prints a Markdown table of the figures.
# Sizes can be changed with BENCH_WORKFLOWS, BENCH_OPEN_WORKFLOWS,
# BENCH_PARTITIONS, BENCH_LATENCY_SECONDS and BENCH_LATENCY_RATE;
# BENCH_GUARANTEE=exactly_once measures that guarantee (default
# at_least_once), and BENCH_PARTITIONER how the load is partitioned (default
# murmur2_random, which puts every record on its workflow's home partition;
# consistent_random, librdkafka's default, puts three in four elsewhere).
#   scripts/bench.sh --lso   how long read_committed readers wait after a
#                            kill -9 under exactly_once (BENCH_LSO_RUNS runs)
#   scripts/bench.sh --restart  how long an instance restarted after a kill -9
#                            takes to process again, static and dynamic
#                            members, default settings (BENCH_RESTART_RUNS runs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh kafka
case "${1:-}" in
    --lso) cargo bench --bench lso_wait ;;
    --restart) cargo bench --bench restart ;;
    "") cargo bench --bench end_to_end ;;
    *) echo "usage: $0 [--lso|--restart]" >&2; exit 2 ;;
esac
