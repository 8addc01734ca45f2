//! The clients' configurations: the input consumer, the restore consumer,
//! the producer, and the settings junction manages on them. Everything that
//! knows librdkafka property names lives here.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{Guarantee, KafkaConfig};

/// How long a request of the group coordinator or for watermarks may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the input consumer's and the producer's statistics come
/// (junction sets it; see [`crate::kafka::stranded::STRANDED_AFTER`], which
/// counts on it).
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// Under `at_least_once`, the records per input partition the consumer
/// fetches ahead (`queued.min.messages`), and the most one fetch brings of
/// a partition (`max.partition.fetch.bytes`): see [`consumer_config`].
const PREFETCH_RECORDS: u32 = 5_000;
const PREFETCH_PARTITION_BYTES: u32 = 256 << 10;

/// Settings shared by every client: the servers, the user's passthrough
/// properties, and a `client.id` that says which of junction's clients
/// sent a request (in the broker's logs and request metrics): the
/// configured `client.id`, or else the application ID, then `role`, as
/// Kafka Streams names its clients.
pub fn base(config: &KafkaConfig, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    let prefix = config.properties.get("client.id").unwrap_or(&config.application_id);
    c.set("client.id", format!("{prefix}-{role}"));
    c
}

/// The group consumer of the input topics and the repartition topic. Offsets are committed by junction
/// only, after the state and outputs they cover are safe. With an
/// `instance_id` it is a static member of its group (see [`group_instance_id`]).
pub fn consumer_config(config: &KafkaConfig, instance_id: Option<&str>) -> ClientConfig {
    let mut c = base(config, "consumer");
    c.set("group.id", &config.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    if let Some(id) = instance_id {
        c.set("group.instance.id", group_instance_id(config, id));
    }
    c.set_if_absent("auto.offset.reset", "earliest");
    // Incremental rebalancing: a member joining or leaving moves only the
    // partitions that change owner; the others keep being processed. (The
    // consumer protocol of KIP-848 is incremental by itself, and its broker
    // assigns.)
    if !uses_consumer_protocol(config) {
        c.set_if_absent("partition.assignment.strategy", "cooperative-sticky");
    }
    // A fetch that finds nothing waits at most this long: it bounds the delay
    // between an event's arrival and its processing on brokers that poll for
    // new data instead of waking waiting fetches (Nisshi among them).
    c.set_if_absent("fetch.wait.max.ms", "10");
    // Under load a fetch waits (at most fetch.wait.max.ms) until it can
    // bring this much: fewer, fuller fetches cost the broker and junction
    // less CPU than one per few records.
    c.set_if_absent("fetch.min.bytes", "100000");
    if config.processing_guarantee == Guarantee::AtLeastOnce {
        // A record read on its home partition waits for its marker, which
        // is read behind everything fetched before it: librdkafka's own
        // prefetch (100,000 records per partition, up to 64 MiB) would hold
        // records for a second. A few thousand records per partition keep
        // the stream thread fed, and the markers a commit interval away.
        c.set_if_absent("queued.min.messages", &PREFETCH_RECORDS.to_string());
        // librdkafka's own name for it is fetch.message.max.bytes: a user's setting under either name wins.
        if c.get("fetch.message.max.bytes").is_none() {
            c.set_if_absent("max.partition.fetch.bytes", &PREFETCH_PARTITION_BYTES.to_string());
        }
    }
    queue_backoff(&mut c);
    // Statistics feed junction_consumer_lag, and say whether the consumer
    // reaches a broker (a stranded one never does: kafka::stranded).
    c.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    c
}

/// The consumer that restores stores from the changelog, told when it
/// reaches a partition's end. It assigns itself partitions and never joins
/// its group (librdkafka assigns only in a consumer with a group ID).
pub fn restore_consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config, "restore-consumer");
    c.set("group.id", format!("{}-restore", config.application_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    queue_backoff(&mut c);
    c
}

/// Whether the group runs the consumer protocol of KIP-848 (`group.protocol = "consumer"`).
pub fn uses_consumer_protocol(config: &KafkaConfig) -> bool {
    config.properties.get("group.protocol").map(String::as_str) == Some("consumer")
}

/// Where the group has committed a partition it reads (asked of the group
/// coordinator, which waits for offsets that an open transaction holds), or,
/// when it never has, where `auto.offset.reset` starts reading it.
pub fn committed_offset<C: ConsumerContext>(
    config: &KafkaConfig,
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<i64, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
    if let Some(Offset::Offset(o)) = committed.find_partition(topic, partition).map(|e| e.offset()) {
        return Ok(o);
    }
    let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
    let from_end =
        matches!(config.properties.get("auto.offset.reset").map(String::as_str), Some("latest" | "largest" | "end"));
    Ok(if from_end { high } else { low })
}

/// A client that asks the group coordinator for the group's committed
/// offsets, as the input consumer would, without being a member: for
/// [`crate::kafka::stable_offsets`].
pub fn offsets_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config, "offsets");
    c.set("group.id", &config.application_id)
        .set("enable.auto.commit", "false")
        // Asks with `require_stable`: offsets that an open transaction holds are waited for.
        .set("isolation.level", "read_committed");
    c
}

/// A client that asks a changelog partition's leader where the partition
/// ends, as a reader of `isolation` (`read_committed`: its committed
/// records, the restore's end; `read_uncommitted`: every record, open
/// transactions' included). It reads nothing, so it joins no group.
pub fn changelog_ends_config(config: &KafkaConfig, isolation: &str) -> ClientConfig {
    let mut c = base(config, &format!("changelog-ends-{isolation}"));
    c.set("isolation.level", isolation);
    c
}

/// librdkafka stops fetching while its local queue is full and looks again
/// only after `fetch.queue.backoff.ms`, 1 s by default: a consumer that
/// drains its queue faster than that then idles. 10 ms keeps it fed.
fn queue_backoff(c: &mut ClientConfig) {
    c.set_if_absent("fetch.queue.backoff.ms", "10");
}

/// The producer of outcomes, dead letters and changelog records: idempotent
/// always, transactional under exactly-once, as `transactional_id`. A
/// record waits at most `message_timeout` (unless the user set
/// `message.timeout.ms`): see [`crate::commit::lease`].
pub fn producer_config(
    config: &KafkaConfig,
    transactional_id: &str,
    message_timeout: Option<Duration>,
) -> ClientConfig {
    let mut c = base(config, "producer");
    if let Some(timeout) = message_timeout {
        if !config.properties.contains_key("delivery.timeout.ms") {
            c.set_if_absent("message.timeout.ms", &timeout.as_millis().to_string());
        }
    }
    c.set("enable.idempotence", "true");
    // Outcomes and dead letters are keyed by workflow ID and partitioned as
    // Java clients and Kafka Streams partition, so that their consumers
    // co-partition with them (librdkafka's own default is CRC32).
    c.set("partitioner", "murmur2_random");
    c.set_if_absent("compression.type", "lz4");
    c.set_if_absent("linger.ms", "5");
    // librdkafka's own default (1 GiB) would make the producer's queue the
    // largest part of the process; see "Memory" in the README.
    c.set_if_absent("queue.buffering.max.kbytes", "65536");
    if config.processing_guarantee == Guarantee::ExactlyOnce {
        c.set("transactional.id", transactional_id);
        // A transaction left open by an instance that died is aborted by the
        // broker once it is this old; until then read_committed consumers of
        // the partitions it wrote see nothing newer (librdkafka's default is
        // 60 s; Kafka Streams uses 10 s too). A restart with the same state
        // directory aborts it at once. It must exceed the longest commit.
        c.set_if_absent("transaction.timeout.ms", &DEFAULT_TRANSACTION_TIMEOUT.as_millis().to_string());
    }
    // They say whether it reaches a broker (a stranded one never does:
    // kafka::stranded, runtime::commits).
    c.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    c
}

/// The group session that a member of the classic protocol asks for and
/// its heartbeat interval: `session.timeout.ms` and
/// `heartbeat.interval.ms`, librdkafka's defaults unless set. (Under the
/// consumer protocol the broker sets them: see
/// [`crate::kafka::topics::group_session`].)
pub fn classic_session(config: &KafkaConfig) -> (Duration, Duration) {
    (millis(config, "session.timeout.ms", 45_000), millis(config, "heartbeat.interval.ms", 3_000))
}

/// The consumer's `max.poll.interval.ms` (librdkafka's default: 300 s).
pub fn max_poll_interval(config: &KafkaConfig) -> Duration {
    millis(config, "max.poll.interval.ms", 300_000)
}

/// The client property `name`, in milliseconds, or `default` where unset.
fn millis(config: &KafkaConfig, name: &str, default: u64) -> Duration {
    Duration::from_millis(config.properties.get(name).and_then(|v| v.trim().parse().ok()).unwrap_or(default))
}

/// The `message.timeout.ms` the user set (or its alias `delivery.timeout.ms`), if any.
pub fn configured_message_timeout(config: &KafkaConfig) -> Option<Duration> {
    ["message.timeout.ms", "delivery.timeout.ms"]
        .iter()
        .find_map(|name| config.properties.get(*name)?.trim().parse().ok())
        .map(Duration::from_millis)
}

/// librdkafka's default `batch.size`.
pub const DEFAULT_BATCH_BYTES: usize = 1_000_000;

/// See [`producer_config`].
const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

/// How old a transaction may grow before the broker aborts it (and fences
/// its producer): `transaction.timeout.ms`.
pub fn transaction_timeout(config: &KafkaConfig) -> Duration {
    config
        .properties
        .get("transaction.timeout.ms")
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_TRANSACTION_TIMEOUT, Duration::from_millis)
}

/// The static group membership of the instance `instance_id` (KIP-345;
/// the consumer protocol of KIP-848 has it too): a restart with the same
/// state directory, a `kill -9` or a rolling deploy, takes its partitions
/// back at once, without waiting for its old session to time out and
/// without moving the other instances' partitions. The cost: a member that
/// stops for good (scaled down) keeps its partitions until its session
/// times out, as static members do not leave their group.
pub fn group_instance_id(config: &KafkaConfig, instance_id: &str) -> String {
    format!("{}-{}", config.application_id, instance_id)
}

/// The transactional ID of the instance `instance_id` (see [`crate::runtime::instance`]).
pub fn transactional_id(config: &KafkaConfig, instance_id: &str) -> String {
    format!("{}-{}", config.application_id, instance_id)
}

trait SetIfAbsent {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self;
}

impl SetIfAbsent for ClientConfig {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn kafka(properties: &str) -> KafkaConfig {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\napplication_id = \"app\"\ninput_topic = \"in\"\n\
             output_topic = \"out\"\ndead_letter_topic = \"dlq\"\n[kafka.properties]\n{properties}\n\
             [[workflows]]\ntype = \"t\"\nsteps = [\"a\"]\n"
        );
        crate::config::parse(Path::new("t.toml"), &text, Vec::new()).unwrap().kafka
    }

    #[test]
    fn each_client_is_named_by_its_role_after_the_configured_client_id() {
        let config = kafka("");
        assert_eq!(producer_config(&config, "t", None).get("client.id"), Some("app-producer"));
        assert_eq!(consumer_config(&config, None).get("client.id"), Some("app-consumer"));
        let named = kafka("\"client.id\" = \"orders\"");
        assert_eq!(restore_consumer_config(&named).get("client.id"), Some("orders-restore-consumer"));
    }

    #[test]
    fn the_at_least_once_prefetch_gives_way_to_the_users_own_under_either_name() {
        let alo = |properties: &str| {
            let mut k = kafka(properties);
            k.processing_guarantee = Guarantee::AtLeastOnce;
            consumer_config(&k, None)
        };
        let defaults = alo("");
        assert_eq!(defaults.get("queued.min.messages"), Some("5000"));
        assert_eq!(defaults.get("max.partition.fetch.bytes"), Some("262144"));
        let own = alo("\"fetch.message.max.bytes\" = \"1048576\"");
        assert_eq!(own.get("max.partition.fetch.bytes"), None, "one name only, the user's");
        assert_eq!(own.get("fetch.message.max.bytes"), Some("1048576"));
        let own = alo("\"max.partition.fetch.bytes\" = \"65536\"\n\"queued.min.messages\" = \"100\"");
        assert_eq!(own.get("max.partition.fetch.bytes"), Some("65536"));
        assert_eq!(own.get("queued.min.messages"), Some("100"));
        let mut eos = kafka("");
        eos.processing_guarantee = Guarantee::ExactlyOnce;
        assert_eq!(consumer_config(&eos, None).get("queued.min.messages"), None, "librdkafka's own");
    }
}
