#!/usr/bin/env bash
# Installs what building, testing and running junction needs, once, and
# skips what is already there:
#   scripts/setup.sh         everything the tests need (what .ci/run uses)
#   scripts/setup.sh kafka   only what the quickstart and the benchmarks need
#
# - from Debian: libclang (RocksDB's bindings), a C toolchain, OpenSSL (TLS
#   and SASL in librdkafka; the tests make certificates with the CLI), a JDK
#   when `java` 17 or newer is missing, and Maven when `mvn` is;
# - Apache Kafka's jars, through Maven from scripts/kafka/pom.xml, into the
#   cache directory, with a formatted template of a single-node broker's data;
# - the benchmark's Kafka Streams peer (benches/peers/kafka-streams), built
#   by Maven into the cache whenever its sources change (the tests run the
#   benchmark small, peer included);
# - and, for the tests only: gdb (stalls a stream thread in tests/lost.rs),
#   Prometheus and promtool (the observability
#   tests), and the Nisshi broker, compiled into the cache (about 15 minutes,
#   the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
what=${1:-all}
case "$what" in all | kafka) ;; *) echo "usage: $0 [all|kafka]" >&2; exit 2 ;; esac

java_major() {
    command -v java >/dev/null 2>&1 || { echo 0; return; }
    java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -1
}

need_apt=()
packages=(libclang-dev build-essential pkg-config curl libssl-dev openssl)
[ "$what" = all ] && packages+=(prometheus gdb)
for pkg in "${packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
[ "$(java_major)" -ge 17 ] 2>/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -f "$JUNCTION_BROKER_HOME/formatted/cluster-id" ]; then
    echo "setup: fetching Apache Kafka $KAFKA_VERSION's jars into $JUNCTION_BROKER_HOME (through Maven, once)"
    rm -rf "$JUNCTION_BROKER_HOME/libs" "$JUNCTION_BROKER_HOME/formatted"
    mkdir -p "$JUNCTION_BROKER_HOME"
    mvn -B -f scripts/kafka/pom.xml -Dkafka.version="$KAFKA_VERSION" -Dmaven.repo.local="$JUNCTION_CACHE/m2" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$JUNCTION_BROKER_HOME/libs" \
        >"$JUNCTION_BROKER_HOME/maven.log" 2>&1 || { cat "$JUNCTION_BROKER_HOME/maven.log"; exit 1; }
    # Formatting a log directory takes a JVM start: done once here, and
    # every new broker copies the result (see scripts/kafka/broker.sh).
    template="$JUNCTION_BROKER_HOME/formatted"
    mkdir -p "$template"
    cat >"$template/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
controller.listener.names=CONTROLLER
log.dirs=$template/data
PROPERTIES
    cluster_id=$(java -cp "$JUNCTION_BROKER_HOME/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null)
    java -cp "$JUNCTION_BROKER_HOME/libs/*" -Dlog4j2.configurationFile=scripts/kafka/log4j2.properties \
        kafka.tools.StorageTool format --config "$template/server.properties" --cluster-id "$cluster_id" \
        >"$template/format.log" 2>&1 || { cat "$template/format.log"; exit 1; }
    echo "$cluster_id" >"$template/cluster-id"
fi

# The Kafka Streams peer, built again when its sources change.
peer_sources=benches/peers/kafka-streams
peer_stamp="$KAFKA_VERSION $(find "$peer_sources" -type f -not -path '*/target/*' | sort | xargs cat | sha256sum | cut -c1-16)"
if [ "$(cat "$JUNCTION_PEER_BUILD/stamp" 2>/dev/null)" != "$peer_stamp" ]; then
    echo "setup: building the Kafka Streams peer into $JUNCTION_PEER_BUILD (through Maven)"
    rm -rf "$JUNCTION_PEER_BUILD"
    mkdir -p "$JUNCTION_PEER_BUILD"
    mvn -B -f "$peer_sources/pom.xml" -Dkafka.version="$KAFKA_VERSION" -Dpeer.build="$JUNCTION_PEER_BUILD" \
        -Dmaven.repo.local="$JUNCTION_CACHE/m2" package >"$JUNCTION_PEER_BUILD.log" 2>&1 \
        || { cat "$JUNCTION_PEER_BUILD.log"; exit 1; }
    echo "$peer_stamp" >"$JUNCTION_PEER_BUILD/stamp"
fi

# cargo install records what it installed in the root's .crates.toml.
if [ "$what" = all ] && { [ ! -x "$JUNCTION_NISSHI" ] || ! grep -q "^\"nisshi $NISSHI_VERSION " "$JUNCTION_CACHE/tools/.crates.toml" 2>/dev/null; }; then
    echo "setup: installing the Nisshi broker $NISSHI_VERSION into $JUNCTION_CACHE/tools (about 15 minutes, once)"
    # Nisshi's own target dir, so that it never evicts junction's build cache.
    CARGO_TARGET_DIR="$JUNCTION_CACHE/nisshi-target" \
        cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version --root "$JUNCTION_CACHE/tools"
fi
echo "setup: ready (Apache Kafka: $JUNCTION_BROKER_HOME$([ "$what" = all ] && echo ", Nisshi: $JUNCTION_NISSHI"), builds: $CARGO_TARGET_DIR)"
