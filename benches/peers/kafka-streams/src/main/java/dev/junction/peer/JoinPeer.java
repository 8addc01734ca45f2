package dev.junction.peer;

import java.io.FileReader;
import java.io.IOException;
import java.io.Reader;
import java.time.Duration;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer of junction's benchmark: the same join, as a Kafka
 * Streams application. Run as
 * {@code java -cp <classes>:<lib>/* dev.junction.peer.JoinPeer peer.properties}.
 *
 * <p>The properties file holds Kafka Streams' settings (any
 * {@link StreamsConfig} key, client keys included) and the peer's own, which
 * start with {@code peer.}: {@code peer.input} (topics, comma-separated), {@code peer.output},
 * {@code peer.dead_letters}, {@code peer.workflows} ({@code type:step,step,...;type:...}),
 * {@code peer.deadline_ms} (default 7 days, junction's
 * {@code state.default_deadline}) and {@code peer.retention_ms} (default 24 h,
 * junction's {@code state.retention}).
 *
 * <p>It prints {@code peer: RUNNING} on standard output each time every task
 * is running (assigned and restored), the signal the benchmark waits for, as
 * it waits for junction's {@code /readyz}. SIGTERM closes it cleanly.
 */
public final class JoinPeer {
    private JoinPeer() {}

    public static void main(String[] args) throws IOException, InterruptedException {
        if (args.length != 1) {
            System.err.println("usage: JoinPeer <peer.properties>");
            System.exit(2);
        }
        Properties all = new Properties();
        try (Reader r = new FileReader(args[0])) {
            all.load(r);
        }
        Properties streams = new Properties();
        Map<String, String> peer = new HashMap<>();
        for (String key : all.stringPropertyNames()) {
            if (key.startsWith("peer.")) {
                peer.put(key.substring("peer.".length()), all.getProperty(key));
            } else {
                streams.put(key, all.getProperty(key));
            }
        }
        Topology topology = topology(
                required(peer, "input"),
                required(peer, "output"),
                required(peer, "dead_letters"),
                workflows(required(peer, "workflows")),
                Long.parseLong(peer.getOrDefault("deadline_ms", String.valueOf(7L * 86_400_000))),
                Long.parseLong(peer.getOrDefault("retention_ms", String.valueOf(86_400_000L))));

        KafkaStreams app = new KafkaStreams(topology, streams);
        CountDownLatch stopped = new CountDownLatch(1);
        app.setStateListener((now, before) -> {
            System.out.println("peer: " + now);
            System.out.flush();
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            app.close(Duration.ofSeconds(30));
            stopped.countDown();
        }));
        app.start();
        stopped.await();
    }

    /**
     * The input topic, one processor with the workflows' store (RocksDB, logged
     * to its changelog, cached), and two sinks: the outcomes and the dead
     * letters. The input is keyed by workflow ID with murmur2, so each
     * workflow's events reach one task without a repartition.
     */
    static Topology topology(String input, String output, String deadLetters, Map<String, List<String>> workflows,
            long deadlineMs, long retentionMs) {
        Topology t = new Topology();
        t.addSource("steps", Serdes.String().deserializer(), Serdes.ByteArray().deserializer(), input.split(","));
        t.addProcessor("join", () -> new WorkflowJoin(workflows, deadlineMs, retentionMs), "steps");
        t.addStateStore(
                Stores.keyValueStoreBuilder(
                                Stores.persistentKeyValueStore(WorkflowJoin.STORE), Serdes.String(), Serdes.ByteArray())
                        .withCachingEnabled(),
                "join");
        t.addSink(WorkflowJoin.OUTCOMES, output, Serdes.String().serializer(), Serdes.ByteArray().serializer(), "join");
        t.addSink(WorkflowJoin.DEAD_LETTERS, deadLetters, Serdes.String().serializer(),
                Serdes.ByteArray().serializer(), "join");
        return t;
    }

    /** {@code order:payment,inventory,fraud_check;refund:...} */
    static Map<String, List<String>> workflows(String spec) {
        Map<String, List<String>> out = new HashMap<>();
        for (String type : spec.split(";")) {
            String[] parts = type.split(":", 2);
            if (parts.length != 2 || parts[1].isBlank()) {
                throw new IllegalArgumentException("peer.workflows: expected type:step,step,..., got \"" + type + "\"");
            }
            out.put(parts[0].trim(), Arrays.stream(parts[1].split(",")).map(String::trim).toList());
        }
        return out;
    }

    private static String required(Map<String, String> peer, String key) {
        String v = peer.get(key);
        if (v == null || v.isBlank()) {
            throw new IllegalArgumentException("peer." + key + " is missing from the properties file");
        }
        return v;
    }
}
