#!/usr/bin/env bash
# The whole test suite: unit, property, end-to-end, crash and recovery, and
# exactly-once tests, against a real local broker that each test starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh

cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo build --release --all-targets
# Each integration test starts its own broker and junction processes: one at a
# time, or on 2 cores they starve each other. (An environment variable, not
# --test-threads, which the criterion harness, run here in test mode, refuses.)
RUST_TEST_THREADS=1 cargo test --release --all-targets
