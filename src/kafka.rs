//! The Kafka adapters: client configurations, topic preparation, and the
//! producer context that tracks deliveries. Everything that knows librdkafka
//! property names lives here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info};

use crate::config::{Guarantee, KafkaConfig};

/// How long a metadata or admin request may take before start-up fails.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the start-up probe waits for librdkafka's events after a failure.
const PROBE_EVENTS_WAIT: Duration = Duration::from_millis(200);
/// The first metadata request at start-up: a cluster that does not answer
/// within this is reported unreachable and tried again.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("input topic {0:?} does not exist; create it first (its partition count sets junction's parallelism)")]
    MissingInput(String),
    #[error(
        "changelog topic {topic:?} has {actual} partitions but input topic {input:?} has {expected}; \
         they must match. Delete the changelog topic (junction re-creates it and rebuilds nothing it needs) \
         or use another application_id"
    )]
    ChangelogPartitions { topic: String, input: String, expected: usize, actual: usize },
    #[error("cannot create topic {topic:?}: {source}")]
    Create { topic: String, source: KafkaError },
    #[error("cannot read topic metadata from {servers}: {source}")]
    Metadata { servers: String, source: KafkaError },
    #[error(
        "the Kafka cluster at {servers} refused the connection: {reason}; check the security settings in \
         kafka.properties (security.protocol, sasl.*, ssl.*)"
    )]
    Refused { servers: String, reason: String },
}

impl TopicError {
    /// Whether trying again may succeed: the cluster was unreachable, not
    /// misconfigured. A refused login is not retried: it needs a new configuration.
    pub fn is_transient(&self) -> bool {
        let source = match self {
            TopicError::Metadata { source, .. } | TopicError::Create { source, .. } => source,
            TopicError::MissingInput(_) | TopicError::ChangelogPartitions { .. } | TopicError::Refused { .. } => {
                return false
            }
        };
        let code = source.rdkafka_error_code();
        !refuses_connection(code)
            && !matches!(
                code,
                Some(
                    RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::InvalidConfig
                        | RDKafkaErrorCode::InvalidReplicationFactor
                        | RDKafkaErrorCode::InvalidPartitions
                        | RDKafkaErrorCode::PolicyViolation
                )
            )
    }
}

/// Whether the cluster refused the login or the TLS handshake: a matter of
/// configuration, not of waiting.
fn refuses_connection(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::SSL)
    )
}

/// Settings shared by every client: the servers and the user's passthrough properties.
fn base(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
}

/// The group consumer of the input topic. Offsets are committed by junction
/// only, after the state and outputs they cover are safe.
pub fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config);
    c.set("group.id", &config.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
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
    queue_backoff(&mut c);
    // Statistics feed junction_consumer_lag.
    c.set_if_absent("statistics.interval.ms", "5000");
    c
}

/// The consumer that restores stores from the changelog: no group, and told
/// when it reaches a partition's end.
pub fn restore_consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config);
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

/// Where the group has committed an input partition (asked of the group
/// coordinator, which waits for offsets that an open transaction holds), or,
/// when it never has, where `auto.offset.reset` starts reading it.
pub fn committed_offset<C: ConsumerContext>(
    config: &KafkaConfig,
    consumer: &BaseConsumer<C>,
    partition: i32,
) -> Result<i64, KafkaError> {
    let topic = config.input_topic.as_str();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, ADMIN_TIMEOUT)?;
    if let Some(Offset::Offset(o)) = committed.find_partition(topic, partition).map(|e| e.offset()) {
        return Ok(o);
    }
    let (low, high) = consumer.fetch_watermarks(topic, partition, ADMIN_TIMEOUT)?;
    let from_end =
        matches!(config.properties.get("auto.offset.reset").map(String::as_str), Some("latest" | "largest" | "end"));
    Ok(if from_end { high } else { low })
}

/// A client that reads the changelog's high watermarks, which count the
/// records of transactions still open (the restore consumer reads, and is
/// told the end of, committed records only): a store is restored only once
/// no transaction is open on its changelog partition.
pub fn changelog_ends_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config);
    c.set("group.id", format!("{}-restore", config.application_id)).set("isolation.level", "read_uncommitted");
    c
}

/// librdkafka stops fetching while its local queue is full and looks again
/// only after `fetch.queue.backoff.ms`, 1 s by default: a consumer that
/// drains its queue faster than that then idles. 10 ms keeps it fed.
fn queue_backoff(c: &mut ClientConfig) {
    c.set_if_absent("fetch.queue.backoff.ms", "10");
}

/// The producer of outcomes, dead letters and changelog records: idempotent
/// always, transactional under exactly-once, as `transactional_id`.
pub fn producer_config(config: &KafkaConfig, transactional_id: &str) -> ClientConfig {
    let mut c = base(config);
    c.set("enable.idempotence", "true");
    c.set_if_absent("compression.type", "lz4");
    c.set_if_absent("linger.ms", "5");
    if config.processing_guarantee == Guarantee::ExactlyOnce {
        c.set("transactional.id", transactional_id);
        // A transaction left open by an instance that died is aborted by the
        // broker once it is this old; until then read_committed consumers of
        // the partitions it wrote see nothing newer (librdkafka's default is
        // 60 s; Kafka Streams uses 10 s too). A restart with the same state
        // directory aborts it at once. It must exceed the longest commit.
        c.set_if_absent("transaction.timeout.ms", &DEFAULT_TRANSACTION_TIMEOUT.as_millis().to_string());
    }
    c
}

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

/// The largest key or value junction copies into a dead letter: the
/// producer's `message.max.bytes` (librdkafka's default 1,000,000) less
/// room for the headers.
pub fn max_record_bytes(config: &KafkaConfig) -> usize {
    let max = config.properties.get("message.max.bytes").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1_000_000);
    max.saturating_sub(64 * 1024)
}

/// The transactional ID of the instance `instance_id` (see [`crate::instance`]).
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

/// Checks the input topic, and creates the changelog, output and dead-letter
/// topics when they are missing. Returns the input partition count.
pub fn prepare_topics(config: &KafkaConfig, runtime: &tokio::runtime::Handle) -> Result<usize, TopicError> {
    let unreachable = |source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source };
    // A consumer, because its poll serves librdkafka's error and log events.
    let probe: BaseConsumer<ProbeContext> = base(config)
        .set_log_level(RDKafkaLogLevel::Error)
        .create_with_context(ProbeContext::default())
        .map_err(unreachable)?;
    let metadata = probe.fetch_metadata(None, METADATA_TIMEOUT).map_err(|source| {
        // librdkafka reports a refused login or handshake as an error event;
        // the request itself only fails as a transport failure.
        let _ = probe.poll(PROBE_EVENTS_WAIT);
        match probe.context().refusal.lock().expect("refusal lock").take() {
            Some(reason) => TopicError::Refused { servers: config.bootstrap_servers.clone(), reason },
            None => unreachable(source),
        }
    })?;
    let admin: AdminClient<DefaultClientContext> = base(config).create().map_err(unreachable)?;
    let partitions_of = |name: &str| {
        metadata.topics().iter().find(|t| t.name() == name && t.error().is_none()).map(|t| t.partitions().len())
    };
    let input = partitions_of(&config.input_topic)
        .filter(|&n| n > 0)
        .ok_or_else(|| TopicError::MissingInput(config.input_topic.clone()))?;
    let replication = metadata.brokers().len().clamp(1, 3) as i32;
    let changelog = config.changelog_topic();

    let mut to_create = Vec::new();
    match partitions_of(&changelog) {
        Some(n) if n != input => {
            return Err(TopicError::ChangelogPartitions {
                topic: changelog,
                input: config.input_topic.clone(),
                expected: input,
                actual: n,
            })
        }
        Some(_) => {}
        None => to_create.push(
            NewTopic::new(&changelog, input as i32, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact")
                .set("min.compaction.lag.ms", "0"),
        ),
    }
    for topic in [&config.output_topic, &config.dead_letter_topic] {
        if partitions_of(topic).is_none() {
            to_create.push(NewTopic::new(topic, input as i32, TopicReplication::Fixed(replication)));
        }
    }
    if to_create.is_empty() {
        return Ok(input);
    }
    let names: Vec<String> = to_create.iter().map(|t| t.name.to_string()).collect();
    let results = runtime
        .block_on(admin.create_topics(&to_create, &AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT))))
        .map_err(|source| TopicError::Create { topic: names.join(", "), source })?;
    for result in results {
        match result {
            Ok(topic) => info!(topic, partitions = input, "created topic"),
            // Another instance created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, source: KafkaError::AdminOp(code) }),
        }
    }
    // A topic created concurrently by a peer must still have the right shape.
    if to_create.iter().any(|t| t.name == changelog) {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&changelog), ADMIN_TIMEOUT)
            .map_err(|source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source })?;
        let n = metadata.topics().first().map_or(0, |t| t.partitions().len());
        if n != 0 && n != input {
            return Err(TopicError::ChangelogPartitions {
                topic: changelog,
                input: config.input_topic.clone(),
                expected: input,
                actual: n,
            });
        }
    }
    Ok(input)
}

/// The start-up probe's context: remembers why the cluster refused a
/// connection (authentication, TLS), which no request result carries.
#[derive(Default)]
struct ProbeContext {
    refusal: Mutex<Option<String>>,
}

impl ConsumerContext for ProbeContext {}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        debug!(?level, fac, message, "librdkafka");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(error = %error, reason, "start-up probe error");
        if refuses_connection(error.rdkafka_error_code()) {
            *self.refusal.lock().expect("refusal lock") = Some(reason.to_string());
        }
    }
}

/// What the producer has delivered since the last `take`.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub failures: Vec<KafkaError>,
    /// Changelog partition → the highest offset delivered to it.
    pub changelog_last: HashMap<i32, i64>,
}

/// The producer context: counts the records in flight by epoch (the commit
/// interval they belong to), and remembers failures and changelog offsets,
/// which become the stores' checkpoints.
pub struct DeliveryTracker {
    changelog_topic: String,
    /// Records in flight, by epoch modulo the slots: at most two epochs,
    /// the interval being committed and the current one, have records in flight.
    in_flight: [AtomicUsize; EPOCH_SLOTS],
    deliveries: Mutex<Deliveries>,
}

const EPOCH_SLOTS: usize = 4;

impl DeliveryTracker {
    pub fn new(changelog_topic: String) -> DeliveryTracker {
        DeliveryTracker {
            changelog_topic,
            in_flight: std::array::from_fn(|_| AtomicUsize::new(0)),
            deliveries: Mutex::new(Deliveries::default()),
        }
    }

    /// Counts a record of `epoch` about to be sent.
    pub fn sent(&self, epoch: usize) {
        self.in_flight[epoch % EPOCH_SLOTS].fetch_add(1, Ordering::SeqCst);
    }

    /// Takes back a `sent` whose record the producer refused.
    pub fn unsent(&self, epoch: usize) {
        self.in_flight[epoch % EPOCH_SLOTS].fetch_sub(1, Ordering::SeqCst);
    }

    pub fn in_flight(&self, epoch: usize) -> usize {
        self.in_flight[epoch % EPOCH_SLOTS].load(Ordering::SeqCst)
    }

    pub fn in_flight_total(&self) -> usize {
        self.in_flight.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    }

    /// The first delivery that failed since the last `take`, if any.
    pub fn first_failure(&self) -> Option<KafkaError> {
        self.deliveries.lock().expect("tracker lock").failures.first().cloned()
    }

    /// Takes the failures and changelog offsets recorded so far.
    pub fn take(&self) -> Deliveries {
        std::mem::take(&mut *self.deliveries.lock().expect("tracker lock"))
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let mut d = self.deliveries.lock().expect("tracker lock");
                let last = d.changelog_last.entry(m.partition()).or_insert(m.offset());
                *last = (*last).max(m.offset());
            }
            Ok(_) => {}
            Err((e, _)) => self.deliveries.lock().expect("tracker lock").failures.push(e.clone()),
        }
        // Last: once nothing is in flight, everything delivered is recorded.
        self.in_flight[epoch % EPOCH_SLOTS].fetch_sub(1, Ordering::SeqCst);
    }
}
