//! Topic preparation at start-up: the input topics must exist; the
//! changelog, repartition, output and dead-letter topics are created when
//! missing. junction's own topics (the changelog and the repartition topic)
//! have N partitions, the home partitions: chosen when they are first
//! created (`kafka.home_partitions`, or the largest input topic's count) and
//! kept after that; existing ones with other counts, or the wrong cleanup
//! policy, are refused. A cluster that refuses the connection is told apart
//! from one that cannot be reached.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use tracing::{debug, info, warn};

use crate::config::KafkaConfig;
use crate::kafka::clients::base;

/// How long a metadata or admin request may take before start-up fails.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the start-up probe waits for librdkafka's events after a failure.
const PROBE_EVENTS_WAIT: Duration = Duration::from_millis(200);
/// The first metadata request at start-up: a cluster that does not answer
/// within this is reported unreachable and tried again.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("input topic {0:?} does not exist; create it first")]
    MissingInput(String),
    #[error(
        "junction's own topics must have one partition count, N, the home partitions; but {found}. \
         N is kept once the topics exist: {remedy}"
    )]
    HomePartitions { found: String, remedy: String },
    #[error(
        "topic {topic:?} has {key}={actual:?}; junction needs {expected} ({why}). Change it with \
         kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config {key}=..."
    )]
    Setting { topic: String, key: &'static str, actual: String, expected: &'static str, why: &'static str },
    #[error(
        "topic {topic:?} takes records of at most {limit} bytes (its max.message.bytes), but {what}: lower \
         state.max_payload_bytes or kafka.max_event_bytes, or raise the topic's max.message.bytes"
    )]
    TooSmall { topic: String, limit: usize, what: String },
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
            TopicError::MissingInput(_)
            | TopicError::HomePartitions { .. }
            | TopicError::Setting { .. }
            | TopicError::TooSmall { .. }
            | TopicError::Refused { .. } => return false,
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

/// The topics as junction runs on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// N: the partition count of the changelog and the repartition topic.
    /// A workflow's home is `murmur2(workflow_id) mod N`.
    pub home_partitions: usize,
    /// Each input topic and its partition count.
    pub inputs: Vec<(String, usize)>,
    /// The group session's timeout and heartbeat interval (see [`group_session`]).
    pub session: (Duration, Duration),
    /// How long the changelog keeps a tombstone (`delete.retention.ms`), when the broker says.
    pub changelog_delete_retention: Option<Duration>,
    /// The largest record each of junction's topics takes (see [`crate::kafka::limits`]).
    pub limits: [usize; 4],
}

/// Whether the cluster refused the login or the TLS handshake: a matter of
/// configuration, not of waiting.
fn refuses_connection(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::SSL)
    )
}

/// Checks the input topics, chooses or reads N, checks junction's own
/// topics, and creates the missing ones.
pub fn prepare_topics(config: &KafkaConfig, runtime: &tokio::runtime::Handle) -> Result<Layout, TopicError> {
    let metadata = cluster_metadata(config)?;
    let partitions_of = |name: &str| {
        metadata.topics().iter().find(|t| t.name() == name && t.error().is_none()).map(|t| t.partitions().len())
    };
    let mut inputs = Vec::new();
    for topic in &config.input_topics {
        let n = partitions_of(&topic.name)
            .filter(|&n| n > 0)
            .ok_or_else(|| TopicError::MissingInput(topic.name.clone()))?;
        inputs.push((topic.name.clone(), n));
    }
    let replication = metadata.brokers().len().clamp(1, 3) as i32;
    let (changelog, repartition) = (config.changelog_topic(), config.repartition_topic());
    let existing =
        [(changelog.as_str(), partitions_of(&changelog)), (repartition.as_str(), partitions_of(&repartition))];
    let home_partitions = home_partitions(config, &existing, &inputs)?;

    let mut to_create = Vec::new();
    let min_isr = wanted_min_isr(replication as usize).to_string();
    if existing[0].1.is_none() {
        to_create.push(
            NewTopic::new(&changelog, home_partitions as i32, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact")
                .set("min.compaction.lag.ms", "0")
                .set("min.insync.replicas", &min_isr),
        );
    }
    if existing[1].1.is_none() {
        // Kept until junction has committed what it read of them, and then
        // purged (see crate::kafka::purge): never lost to a time limit.
        to_create.push(
            NewTopic::new(&repartition, home_partitions as i32, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "delete")
                .set("retention.ms", "-1"),
        );
    }
    for topic in [&config.output_topic, &config.dead_letter_topic] {
        if partitions_of(topic).is_none() {
            to_create.push(NewTopic::new(topic, home_partitions as i32, TopicReplication::Fixed(replication)));
        }
    }
    let admin: AdminClient<DefaultClientContext> = base(config, "admin")
        .create()
        .map_err(|source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source })?;
    if !to_create.is_empty() {
        create(config, runtime, &admin, &to_create, home_partitions)?;
    }
    // A topic created now has the replicas asked for; an existing one, those the metadata shows.
    let changelog_replicas = metadata
        .topics()
        .iter()
        .find(|t| t.name() == changelog)
        .and_then(|t| t.partitions().first())
        .map_or(replication as usize, |p| p.replicas().len());
    let changelog_delete_retention = check_settings(config, runtime, &admin, changelog_replicas)?;
    let broker = metadata.brokers().first().map(|b| b.id());
    let session = group_session(config, runtime, &admin, broker);
    let limits = read_limits(config, runtime, &admin);
    Ok(Layout { home_partitions, inputs, session, changelog_delete_retention, limits })
}

/// Kafka's default `max.message.bytes` (the broker's `message.max.bytes`).
const KAFKA_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// The `max.message.bytes` of the output, dead-letter, changelog and
/// repartition topics (in [`crate::kafka::limits::Topic`] order); Kafka's
/// default for a topic the broker does not describe, with a warning.
pub fn read_limits(
    config: &KafkaConfig,
    runtime: &tokio::runtime::Handle,
    admin: &AdminClient<DefaultClientContext>,
) -> [usize; 4] {
    let (changelog, repartition) = (config.changelog_topic(), config.repartition_topic());
    let topics = [&config.output_topic, &config.dead_letter_topic, &changelog, &repartition].map(String::as_str);
    let specifiers = topics.map(ResourceSpecifier::Topic);
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let described = runtime.block_on(admin.describe_configs(&specifiers, &options));
    let mut limits = [KAFKA_MAX_MESSAGE_BYTES; 4];
    match described {
        Ok(results) => {
            for ((limit, topic), result) in limits.iter_mut().zip(topics).zip(results) {
                let read = result.ok().and_then(|r| r.get("max.message.bytes")?.value.as_deref()?.parse().ok());
                match read {
                    Some(bytes) => *limit = bytes,
                    None => warn!(topic, "cannot read the topic's max.message.bytes; assuming Kafka's default"),
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot read the topics' max.message.bytes; assuming Kafka's default"),
    }
    limits
}

/// [`read_limits`] again, with a client of its own: after a topic refused
/// a record for its size.
pub fn read_limits_again(config: &KafkaConfig, runtime: &tokio::runtime::Handle) -> Option<[usize; 4]> {
    let admin: AdminClient<DefaultClientContext> = base(config, "admin").create().ok()?;
    Some(read_limits(config, runtime, &admin))
}

/// Every changelog record and forwarded event must fit its topic's own
/// limit (`limits`, as [`read_limits`] reads them): the state of a type's
/// steps with payloads of up to `state.max_payload_bytes`, an event of up
/// to `kafka.max_event_bytes`; neither can be cut down, so a topic too small
/// is refused. An outcome record that may not fit the output topic can: it
/// is published without its payloads (see [`crate::kafka::refusals`]), and
/// a warning says so at start-up.
pub fn check_record_sizes(config: &crate::config::Config, limits: &[usize; 4]) -> Result<(), TopicError> {
    let kafka = &config.kafka;
    let payload = config.state.max_payload_bytes;
    for w in &config.workflows {
        let steps = w.steps.len();
        let per_step = |extra: usize| steps.saturating_mul(payload.saturating_add(extra));
        let outcome =
            crate::names::OUTCOME_OVERHEAD_BYTES.saturating_add(per_step(crate::names::OUTCOME_STEP_OVERHEAD_BYTES));
        // A state keeps each step's payload and up to two event IDs per step.
        let state = crate::names::OUTCOME_OVERHEAD_BYTES
            .saturating_add(per_step(2 * crate::names::MAX_EVENT_ID_BYTES + crate::names::OUTCOME_STEP_OVERHEAD_BYTES));
        let describe = |what: &str, bytes: usize| {
            format!(
                "{what} of workflow type {:?} ({steps} steps with payloads of up to state.max_payload_bytes, \
                 {payload}) take up to {bytes} bytes",
                w.workflow_type
            )
        };
        if state > limits[2] {
            return Err(TopicError::TooSmall {
                topic: kafka.changelog_topic(),
                limit: limits[2],
                what: describe("states", state),
            });
        }
        if outcome > limits[0] {
            warn!(
                topic = %kafka.output_topic,
                max_message_bytes = limits[0],
                "{}: an outcome record larger than the topic takes is published without its payloads (header \
                 junction.truncated); lower state.max_payload_bytes or raise the topic's max.message.bytes to keep \
                 them",
                describe("outcome records", outcome)
            );
        }
    }
    let event = kafka.max_event_bytes.saturating_add(4 * 1024);
    if event > limits[3] {
        return Err(TopicError::TooSmall {
            topic: kafka.repartition_topic(),
            limit: limits[3],
            what: format!(
                "forwarded events of up to kafka.max_event_bytes ({}) take up to {event} bytes",
                kafka.max_event_bytes
            ),
        });
    }
    Ok(())
}

/// The `min.insync.replicas` junction gives its changelog: with two
/// replicas or more, an acknowledged state is on two brokers.
fn wanted_min_isr(replicas: usize) -> usize {
    replicas.clamp(1, 2)
}

/// Kafka's defaults for a consumer-protocol group's session and heartbeat.
const CONSUMER_PROTOCOL_DEFAULTS: (Duration, Duration) = (Duration::from_secs(45), Duration::from_secs(5));

/// How long the group coordinator keeps a silent member, and how often a
/// member heartbeats: the classic protocol's member asks for both
/// (`session.timeout.ms`, `heartbeat.interval.ms`); under the consumer
/// protocol the broker sets them (`group.consumer.session.timeout.ms` and
/// `group.consumer.heartbeat.interval.ms`, which a group's own
/// `consumer.session.timeout.ms` and `consumer.heartbeat.interval.ms`
/// override), and they are read from it.
pub fn group_session(
    config: &KafkaConfig,
    runtime: &tokio::runtime::Handle,
    admin: &AdminClient<DefaultClientContext>,
    broker: Option<i32>,
) -> (Duration, Duration) {
    if !crate::kafka::clients::uses_consumer_protocol(config) {
        return crate::kafka::clients::classic_session(config);
    }
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let read = |resource: ResourceSpecifier<'_>, names: [&str; 2]| -> [Option<Duration>; 2] {
        let Ok(mut results) = runtime.block_on(admin.describe_configs([&resource], &options)) else {
            return [None, None];
        };
        let Some(Ok(described)) = results.pop() else { return [None, None] };
        names
            .map(|name| {
                let entry = described.get(name)?;
                // A group's own setting counts only where it was set for the group.
                let set = !matches!(entry.source, rdkafka::admin::ConfigSource::Default);
                entry.value.as_deref().filter(|_| set || name.starts_with("group.")).and_then(|v| v.parse().ok())
            })
            .map(|ms: Option<u64>| ms.map(Duration::from_millis))
    };
    let [broker_session, broker_heartbeat] = match broker {
        Some(id) => read(
            ResourceSpecifier::Broker(id),
            ["group.consumer.session.timeout.ms", "group.consumer.heartbeat.interval.ms"],
        ),
        None => [None, None],
    };
    let [group_session, group_heartbeat] = read(
        ResourceSpecifier::Group(&config.application_id),
        ["consumer.session.timeout.ms", "consumer.heartbeat.interval.ms"],
    );
    let session = group_session.or(broker_session);
    let heartbeat = group_heartbeat.or(broker_heartbeat);
    if session.is_none() {
        warn!(
            assumed_s = CONSUMER_PROTOCOL_DEFAULTS.0.as_secs(),
            "cannot read the group's session timeout from the broker; assuming Kafka's default"
        );
    }
    (session.unwrap_or(CONSUMER_PROTOCOL_DEFAULTS.0), heartbeat.unwrap_or(CONSUMER_PROTOCOL_DEFAULTS.1))
}

/// Asks the cluster for the input topics' partition counts, to notice
/// topics that grew, through one client kept for the purpose.
pub struct InputCounts {
    config: KafkaConfig,
    probe: Probe,
}

impl InputCounts {
    pub fn new(config: &KafkaConfig) -> Result<InputCounts, TopicError> {
        Ok(InputCounts { probe: probe(config)?, config: config.clone() })
    }

    /// Each input topic's partition count now, in configuration order
    /// (`None` for one the metadata does not show).
    pub fn now(&self) -> Result<Vec<Option<usize>>, TopicError> {
        let metadata = metadata(&self.config, &self.probe)?;
        let count = |name: &str| {
            metadata.topics().iter().find(|t| t.name() == name && t.error().is_none()).map(|t| t.partitions().len())
        };
        Ok(self.config.input_topics.iter().map(|topic| count(&topic.name)).collect())
    }
}

/// N: what the existing changelog and repartition topic have (they must
/// agree, and agree with `kafka.home_partitions` when it is set), or, when
/// neither exists yet, `kafka.home_partitions` or the largest input topic's count.
fn home_partitions(
    config: &KafkaConfig,
    existing: &[(&str, Option<usize>); 2],
    inputs: &[(String, usize)],
) -> Result<usize, TopicError> {
    let found: Vec<(&str, usize)> = existing.iter().filter_map(|(t, n)| Some((*t, (*n)?))).collect();
    let describe =
        |found: &[(&str, usize)]| found.iter().map(|(t, n)| format!("{t:?} has {n}")).collect::<Vec<_>>().join(" and ");
    let remedy = "delete junction's own topics and its state directories to choose another N (open workflows are then \
                  lost), or use another application_id";
    match found.as_slice() {
        [] => Ok(config.home_partitions.unwrap_or_else(|| inputs.iter().map(|(_, n)| *n).max().unwrap_or(1))),
        [(_, a), (_, b), ..] if a != b => {
            Err(TopicError::HomePartitions { found: describe(&found), remedy: remedy.to_string() })
        }
        [(_, n), ..] => match config.home_partitions {
            Some(wanted) if wanted != *n => Err(TopicError::HomePartitions {
                found: format!("kafka.home_partitions is {wanted} while {}", describe(&found)),
                remedy: format!("set kafka.home_partitions = {n} or remove it; or {remedy}"),
            }),
            _ => Ok(*n),
        },
    }
}

/// The settings junction's own topics depend on, as junction creates
/// them. The changelog: compacted (its latest record per workflow is the
/// state), nothing deleted by time or size (a workflow may stay open longer
/// than any retention), and acknowledged by `min.insync.replicas` replicas
/// (at least two when it has two or more; at most as many as it has, or no
/// write succeeds). The repartition topic: not compacted (a compaction
/// would drop forwarded events), and nothing deleted by time (junction
/// purges what it has committed). Returns the changelog's
/// `delete.retention.ms`. A broker that cannot describe topic settings is
/// trusted, with a warning.
fn check_settings(
    config: &KafkaConfig,
    runtime: &tokio::runtime::Handle,
    admin: &AdminClient<DefaultClientContext>,
    changelog_replicas: usize,
) -> Result<Option<Duration>, TopicError> {
    let (changelog, repartition) = (config.changelog_topic(), config.repartition_topic());
    let specifiers = [ResourceSpecifier::Topic(&changelog), ResourceSpecifier::Topic(&repartition)];
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = match runtime.block_on(admin.describe_configs(&specifiers, &options)) {
        Ok(results) => results,
        Err(e) => {
            warn!(error = %e, "cannot read the settings of junction's own topics; they are not checked");
            return Ok(None);
        }
    };
    let mut delete_retention = None;
    for (topic, result) in [&changelog, &repartition].into_iter().zip(results) {
        let resource = match result {
            Ok(resource) => resource,
            Err(code) => {
                warn!(topic, error = %code, "cannot read a topic's settings; they are not checked");
                continue;
            }
        };
        let setting = |key: &str| resource.get(key).and_then(|e| e.value.clone());
        let Some(policy) = setting("cleanup.policy") else {
            warn!(topic, "the broker does not say the topic's cleanup.policy; it is not checked");
            continue;
        };
        let refuse = |key: &'static str, actual: String, expected: &'static str, why: &'static str| {
            Err(TopicError::Setting { topic: topic.clone(), key, actual, expected, why })
        };
        let compacted = policy.split(',').any(|p| p.trim() == "compact");
        let deletes = policy.split(',').any(|p| p.trim() == "delete");
        let unlimited = |key: &str| setting(key).is_none_or(|v| v.trim() == "-1");
        if *topic == changelog {
            if !compacted {
                return refuse(
                    "cleanup.policy",
                    policy,
                    "\"compact\"",
                    "the changelog keeps the latest state of every workflow",
                );
            }
            for key in ["retention.ms", "retention.bytes"] {
                if deletes && !unlimited(key) {
                    return refuse(
                        if key == "retention.ms" { "retention.ms" } else { "retention.bytes" },
                        format!("{} with cleanup.policy={policy}", setting(key).unwrap_or_default()),
                        "-1, or cleanup.policy=\"compact\" alone",
                        "a workflow open longer than the retention would lose its state",
                    );
                }
            }
            if let Some(isr) = setting("min.insync.replicas").and_then(|v| v.trim().parse::<usize>().ok()) {
                let wanted = wanted_min_isr(changelog_replicas);
                if isr > changelog_replicas {
                    return refuse(
                        "min.insync.replicas",
                        format!("{isr} with {changelog_replicas} replicas"),
                        "at most the replication factor",
                        "no changelog write could be acknowledged",
                    );
                }
                if isr < wanted {
                    return refuse(
                        "min.insync.replicas",
                        format!("{isr} with {changelog_replicas} replicas"),
                        "at least 2 (with 2 replicas or more)",
                        "a state acknowledged by one broker alone is lost with it",
                    );
                }
            }
            delete_retention =
                setting("delete.retention.ms").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_millis);
        }
        if *topic == repartition {
            if compacted {
                return refuse(
                    "cleanup.policy",
                    policy,
                    "\"delete\"",
                    "compaction would drop forwarded step events of the same workflow",
                );
            }
            if !unlimited("retention.ms") {
                return refuse(
                    "retention.ms",
                    setting("retention.ms").unwrap_or_default(),
                    "-1",
                    "junction deletes what it has committed; a time limit would delete forwarded events not yet read",
                );
            }
        }
    }
    Ok(delete_retention)
}

/// A client that asks for metadata. A consumer, because its poll serves
/// librdkafka's error and log events.
type Probe = BaseConsumer<ProbeContext>;

fn probe(config: &KafkaConfig) -> Result<Probe, TopicError> {
    base(config, "metadata")
        .set_log_level(RDKafkaLogLevel::Error)
        .create_with_context(ProbeContext::default())
        .map_err(|source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source })
}

/// The cluster's metadata, asked with a probe that tells a refused
/// connection (authentication, TLS) apart from an unreachable cluster.
fn cluster_metadata(config: &KafkaConfig) -> Result<Metadata, TopicError> {
    metadata(config, &probe(config)?)
}

fn metadata(config: &KafkaConfig, probe: &Probe) -> Result<Metadata, TopicError> {
    probe.fetch_metadata(None, METADATA_TIMEOUT).map_err(|source| {
        // librdkafka reports a refused login or handshake as an error event;
        // the request itself only fails as a transport failure.
        let _ = probe.poll(PROBE_EVENTS_WAIT);
        match probe.context().refusal.lock().expect("refusal lock").take() {
            Some(reason) => TopicError::Refused { servers: config.bootstrap_servers.clone(), reason },
            None => TopicError::Metadata { servers: config.bootstrap_servers.clone(), source },
        }
    })
}

/// Creates the missing topics; one that a peer created meanwhile is fine,
/// if it has the right shape.
fn create(
    config: &KafkaConfig,
    runtime: &tokio::runtime::Handle,
    admin: &AdminClient<DefaultClientContext>,
    to_create: &[NewTopic<'_>],
    home_partitions: usize,
) -> Result<(), TopicError> {
    let names: Vec<String> = to_create.iter().map(|t| t.name.to_string()).collect();
    let results = runtime
        .block_on(admin.create_topics(to_create, &AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT))))
        .map_err(|source| TopicError::Create { topic: names.join(", "), source })?;
    for result in results {
        match result {
            Ok(topic) => info!(topic, partitions = home_partitions, "created topic"),
            // Another instance created it first.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicError::Create { topic, source: KafkaError::AdminOp(code) }),
        }
    }
    // A topic created concurrently by a peer must still have the right shape.
    for own in [config.changelog_topic(), config.repartition_topic()] {
        if !names.contains(&own) {
            continue;
        }
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&own), ADMIN_TIMEOUT)
            .map_err(|source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source })?;
        let n = metadata.topics().first().map_or(0, |t| t.partitions().len());
        if n != 0 && n != home_partitions {
            return Err(TopicError::HomePartitions {
                found: format!("{own:?} was created with {n} partitions by another instance, where this one chose {home_partitions}"),
                remedy: "give every instance the same kafka.home_partitions".to_string(),
            });
        }
    }
    Ok(())
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
