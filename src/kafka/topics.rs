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
    #[error("topic {topic:?} has {key}={actual:?}; junction needs {expected} ({why})")]
    Setting { topic: String, key: &'static str, actual: String, expected: &'static str, why: &'static str },
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
    if existing[0].1.is_none() {
        to_create.push(
            NewTopic::new(&changelog, home_partitions as i32, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact")
                .set("min.compaction.lag.ms", "0"),
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
    let admin: AdminClient<DefaultClientContext> = base(config)
        .create()
        .map_err(|source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source })?;
    if !to_create.is_empty() {
        create(config, runtime, &admin, &to_create, home_partitions)?;
    }
    check_settings(config, runtime, &admin)?;
    Ok(Layout { home_partitions, inputs })
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

/// The cleanup policies junction's own topics depend on: the changelog is
/// compacted (its latest record per workflow is the state), and the
/// repartition topic is not (a compaction would drop forwarded events). A
/// broker that cannot describe topic settings is trusted, with a warning.
fn check_settings(
    config: &KafkaConfig,
    runtime: &tokio::runtime::Handle,
    admin: &AdminClient<DefaultClientContext>,
) -> Result<(), TopicError> {
    let (changelog, repartition) = (config.changelog_topic(), config.repartition_topic());
    let specifiers = [ResourceSpecifier::Topic(&changelog), ResourceSpecifier::Topic(&repartition)];
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = match runtime.block_on(admin.describe_configs(&specifiers, &options)) {
        Ok(results) => results,
        Err(e) => {
            warn!(error = %e, "cannot read the settings of junction's own topics; they are not checked");
            return Ok(());
        }
    };
    for (topic, result) in [&changelog, &repartition].into_iter().zip(results) {
        let resource = match result {
            Ok(resource) => resource,
            Err(code) => {
                warn!(topic, error = %code, "cannot read a topic's settings; they are not checked");
                continue;
            }
        };
        let Some(policy) = resource.get("cleanup.policy").and_then(|e| e.value.clone()) else {
            warn!(topic, "the broker does not say the topic's cleanup.policy; it is not checked");
            continue;
        };
        let compacted = policy.split(',').any(|p| p.trim() == "compact");
        if *topic == changelog && !compacted {
            return Err(TopicError::Setting {
                topic: topic.clone(),
                key: "cleanup.policy",
                actual: policy,
                expected: "\"compact\"",
                why: "the changelog keeps the latest state of every workflow",
            });
        }
        if *topic == repartition && compacted {
            return Err(TopicError::Setting {
                topic: topic.clone(),
                key: "cleanup.policy",
                actual: policy,
                expected: "\"delete\"",
                why: "compaction would drop forwarded step events of the same workflow",
            });
        }
    }
    Ok(())
}

/// A client that asks for metadata. A consumer, because its poll serves
/// librdkafka's error and log events.
type Probe = BaseConsumer<ProbeContext>;

fn probe(config: &KafkaConfig) -> Result<Probe, TopicError> {
    base(config)
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
