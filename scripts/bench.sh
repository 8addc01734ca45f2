#!/usr/bin/env bash
# The end-to-end benchmark (method and figures in BENCHMARKS.md): installs
# what it needs like the other scripts, starts its own Apache Kafka broker
# on loopback ports, and prints a Markdown table of the figures.
# Sizes can be changed with BENCH_WORKFLOWS, BENCH_OPEN_WORKFLOWS,
# BENCH_PARTITIONS, BENCH_LATENCY_SECONDS and BENCH_LATENCY_RATE.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh kafka
cargo bench --bench end_to_end
