# Sourced by the other scripts: where builds and tools are cached, outside the repo.
JUNCTION_CACHE="${JUNCTION_CACHE:-$HOME/.cache/junction}"
mkdir -p "$JUNCTION_CACHE/tools" "$JUNCTION_CACHE/target"
export JUNCTION_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$JUNCTION_CACHE/target}"
# Apache Kafka, the broker of the tests, the benchmarks and the quickstart
# (JUNCTION_BROKER_*: JUNCTION_KAFKA_* variables are junction settings):
# its jars (scripts/kafka/pom.xml) and a formatted template of its data.
KAFKA_VERSION=4.1.1
export JUNCTION_BROKER_HOME="${JUNCTION_BROKER_HOME:-$JUNCTION_CACHE/tools/kafka-$KAFKA_VERSION}"
# Nisshi, the second broker: Kafka-compatible, without transactions.
export JUNCTION_NISSHI="${JUNCTION_NISSHI:-$JUNCTION_CACHE/tools/bin/nisshi}"
NISSHI_VERSION=0.8.1
# The benchmark's Kafka Streams peer (benches/peers/kafka-streams), built by
# scripts/setup.sh: its classes and its dependencies' jars.
export JUNCTION_PEER_BUILD="${JUNCTION_PEER_BUILD:-$JUNCTION_CACHE/peer/kafka-streams}"
