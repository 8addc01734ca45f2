#!/usr/bin/env bash
# Runs a single-node Apache Kafka broker (KRaft: broker and controller in one
# process) on loopback, in the foreground, until it is killed. The tests, the
# benchmarks and the quickstart all start their brokers with this script.
#
#   scripts/kafka/broker.sh DIR PORT CONTROLLER_PORT [KEY=VALUE ...]
#
# DIR holds server.properties, the broker's data (DIR/data) and its log
# (DIR/broker.log). A new DIR is formatted, as a copy of the formatted
# template that scripts/setup.sh made once; an existing one starts as it is,
# so a restart keeps every record. KEY=VALUE pairs are broker settings that
# override the defaults below (they are read only when DIR is new).
#
# JUNCTION_BROKER_SCRAM="SCRAM-SHA-256=[name=U,password=P]" formats a new DIR
# with that SCRAM user instead (the template has none). JUNCTION_BROKER_HEAP and
# JUNCTION_BROKER_JVM_OPTS replace the heap and JVM options below.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../env.sh"
[ $# -ge 3 ] || { echo "usage: $0 DIR PORT CONTROLLER_PORT [KEY=VALUE ...]" >&2; exit 2; }
dir=$1 port=$2 controller=$3
shift 3
libs="$JUNCTION_BROKER_HOME/libs"
[ -d "$libs" ] || { echo "Apache Kafka is not installed at $JUNCTION_BROKER_HOME; run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$dir"
props="$dir/server.properties"
if [ ! -f "$props" ]; then
    cat >"$props" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Few partitions for the internal topics: they are created at the first
# group or transaction, and 50 of each take seconds on 2 cores.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
# A group's first member is assigned its partitions at once, not after 3 s.
group.initial.rebalance.delay.ms=0
# Topics exist only when they are created, never as a side effect of a read.
auto.create.topics.enable=false
# Threads for a 2-core machine (the defaults are sized for large servers).
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
PROPERTIES
    for setting in "$@"; do echo "$setting" >>"$props"; done
fi
if [ ! -f "$dir/data/meta.properties" ]; then
    if [ -n "${JUNCTION_BROKER_SCRAM:-}" ]; then
        java -cp "$libs/*" -Dlog4j2.configurationFile="$here/log4j2.properties" kafka.tools.StorageTool format \
            --config "$props" --cluster-id "$(cat "$JUNCTION_BROKER_HOME/formatted/cluster-id")" \
            --add-scram "$JUNCTION_BROKER_SCRAM" >>"$dir/broker.log" 2>&1
    else
        mkdir -p "$dir/data"
        cp -r "$JUNCTION_BROKER_HOME/formatted/data/." "$dir/data/"
    fi
fi
# The heap for a 2-core, 24 GiB machine that also runs junction and its
# load: the broker keeps records in the page cache, not on its heap.
heap=${JUNCTION_BROKER_HEAP:--Xms256m -Xmx1g}
jvm=${JUNCTION_BROKER_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}
# shellcheck disable=SC2086 # the options are lists of words
exec java $heap $jvm -Dlog4j2.configurationFile="$here/log4j2.properties" -cp "$libs/*" kafka.Kafka "$props" \
    >>"$dir/broker.log" 2>&1
