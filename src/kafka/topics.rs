//! Topic preparation at start-up: the input topic must exist; the
//! changelog, output and dead-letter topics are created when missing, and
//! the changelog must have the input's partition count. A cluster that
//! refuses the connection is told apart from one that cannot be reached.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use tracing::{debug, info};

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

/// Checks the input topic, and creates the changelog, output and dead-letter
/// topics when they are missing. Returns the input partition count.
pub fn prepare_topics(config: &KafkaConfig, runtime: &tokio::runtime::Handle) -> Result<usize, TopicError> {
    let metadata = cluster_metadata(config)?;
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
        Some(n) => changelog_fits(config, input, n)?,
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
    if !to_create.is_empty() {
        create(config, runtime, &to_create, input)?;
    }
    Ok(input)
}

/// The cluster's metadata, asked with a probe that tells a refused
/// connection (authentication, TLS) apart from an unreachable cluster.
fn cluster_metadata(config: &KafkaConfig) -> Result<Metadata, TopicError> {
    let unreachable = |source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source };
    // A consumer, because its poll serves librdkafka's error and log events.
    let probe: BaseConsumer<ProbeContext> = base(config)
        .set_log_level(RDKafkaLogLevel::Error)
        .create_with_context(ProbeContext::default())
        .map_err(unreachable)?;
    probe.fetch_metadata(None, METADATA_TIMEOUT).map_err(|source| {
        // librdkafka reports a refused login or handshake as an error event;
        // the request itself only fails as a transport failure.
        let _ = probe.poll(PROBE_EVENTS_WAIT);
        match probe.context().refusal.lock().expect("refusal lock").take() {
            Some(reason) => TopicError::Refused { servers: config.bootstrap_servers.clone(), reason },
            None => unreachable(source),
        }
    })
}

/// The changelog must have one partition per input partition.
fn changelog_fits(config: &KafkaConfig, input: usize, changelog_partitions: usize) -> Result<(), TopicError> {
    if changelog_partitions == input {
        return Ok(());
    }
    Err(TopicError::ChangelogPartitions {
        topic: config.changelog_topic(),
        input: config.input_topic.clone(),
        expected: input,
        actual: changelog_partitions,
    })
}

/// Creates the missing topics; one that a peer created meanwhile is fine,
/// if it has the right shape.
fn create(
    config: &KafkaConfig,
    runtime: &tokio::runtime::Handle,
    to_create: &[NewTopic<'_>],
    input: usize,
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = base(config)
        .create()
        .map_err(|source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source })?;
    let names: Vec<String> = to_create.iter().map(|t| t.name.to_string()).collect();
    let results = runtime
        .block_on(admin.create_topics(to_create, &AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT))))
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
    let changelog = config.changelog_topic();
    if to_create.iter().any(|t| t.name == changelog) {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&changelog), ADMIN_TIMEOUT)
            .map_err(|source| TopicError::Metadata { servers: config.bootstrap_servers.clone(), source })?;
        let n = metadata.topics().first().map_or(0, |t| t.partitions().len());
        if n != 0 {
            changelog_fits(config, input, n)?;
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
