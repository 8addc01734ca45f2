#!/usr/bin/env bash
# The quickstart: builds junction, installs and starts a local Apache Kafka
# broker, creates the input topic, runs junction with config/junction.toml,
# feeds it sample workflows, and prints the outcome records and dead letters
# it publishes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh kafka

echo "demo: building junction (the first build compiles RocksDB and librdkafka: ~18 minutes on 2 cores)"
cargo build --release --bin junction --example demo_client
BIN="$CARGO_TARGET_DIR/release"
DEMO="$(mktemp -d "$JUNCTION_CACHE/demo.XXXXXX")"
PORT=19092
CONTROLLER_PORT=19093
BOOTSTRAP="127.0.0.1:$PORT"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

for port in "$PORT" "$CONTROLLER_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "demo: port $port is in use; stop what listens there (an earlier demo?) and retry" >&2
        exit 1
    fi
done
echo "demo: starting Apache Kafka on $BOOTSTRAP (log: $DEMO/kafka/broker.log)"
bash scripts/kafka/broker.sh "$DEMO/kafka" "$PORT" "$CONTROLLER_PORT" &
pids+=($!)
for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.2
done

"$BIN/examples/demo_client" create-topic "$BOOTSTRAP" workflow-steps 3
JUNCTION_KAFKA_PROCESSING_GUARANTEE=exactly_once "$BIN/junction" validate --config config/junction.toml

# Apache Kafka has transactions: the demo runs the exactly_once guarantee
# (validated above), and the watcher reads the outcomes as read_committed
# consumers do.
echo "demo: starting junction, exactly_once (log: $DEMO/junction.log)"
JUNCTION_KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" JUNCTION_STATE_DIR="$DEMO/state" \
    JUNCTION_KAFKA_PROCESSING_GUARANTEE=exactly_once \
    "$BIN/junction" run --config config/junction.toml >"$DEMO/junction.log" 2>&1 &
JPID=$!
pids+=($JPID)
for _ in $(seq 1 300); do
    curl -fs http://127.0.0.1:9464/readyz >/dev/null 2>&1 && break
    kill -0 "$JPID" 2>/dev/null || { cat "$DEMO/junction.log"; exit 1; }
    sleep 0.2
done
curl -fs http://127.0.0.1:9464/readyz && echo

"$BIN/examples/demo_client" feed "$BOOTSTRAP" workflow-steps
echo "demo: waiting for the outcomes (signup-8 times out after its 10s deadline)"
"$BIN/examples/demo_client" watch "$BOOTSTRAP" workflow-outcomes workflow-dead-letters 5 1

echo
echo "demo: a few of junction's metrics (http://127.0.0.1:9464/metrics):"
curl -fs http://127.0.0.1:9464/metrics | grep -E '^junction_(events|outcomes|dead_letters)_total' | grep -v ' 0$'
kill -TERM "$JPID"
wait "$JPID" && echo "demo: junction stopped cleanly on SIGTERM (exit 0). Logs: $DEMO"
