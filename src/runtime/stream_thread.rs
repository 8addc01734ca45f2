//! The stream thread's loop: it polls the input topics and the repartition
//! topic (through one consumer: the group assigns it home partitions, and
//! it reads their input partitions), hands each batch to the partitions' sources and tasks, steps the restorer, publishes outcomes every
//! [`PUBLISH_INTERVAL`], and starts a commit every `commit_interval`.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use tracing::{info, warn};

use crate::commit::lease::{self, Lease};
use crate::commit::PUBLISH_INTERVAL;
use crate::config::{Config, Guarantee};
use crate::kafka::group_state;
use crate::kafka::limits::TopicLimits;
use crate::kafka::stranded::{self, Reachability};
use crate::kafka::{clients, topics};
use crate::ops::view::View;
use crate::runtime::commits::Commits;
use crate::runtime::engine::{lock, Engine};
use crate::runtime::instance::Instance;
use crate::runtime::partitions::Partitions;
use crate::runtime::rebalance::Callbacks;
use crate::runtime::rejoin::{Rejoin, Step};
use crate::runtime::{group_watch, input_watch};
use crate::time::now_ms;

/// Records handed to the tasks per poll batch.
const MAX_BATCH: usize = 2_000;
/// The longest the loop waits in one poll, so that shutdown is prompt.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// Time given to restoring per loop turn while other partitions are active.
const RESTORE_SLICE: Duration = Duration::from_millis(20);
/// How often the loop looks at a commit in flight.
const COMMIT_CHECK: Duration = Duration::from_millis(1);
/// The pauses between attempts to reach the cluster at start-up: doubling up to the maximum.
const STARTUP_RETRY_FIRST: Duration = Duration::from_millis(500);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(10);
/// The longest the consumer waits for an input topic's partitions at start-up.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `junction_state_bytes` is refreshed.
const STATE_SIZE_REPORT: Duration = Duration::from_secs(5);
/// How long the consumer stays quiet before the shutdown leaves the group,
/// and how long it may take to (see `give_up_before_leaving`).
const CLOSE_QUIET: Duration = Duration::from_millis(100);
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Runs the processor until `view.shutdown` is set, then commits, closes
/// the stores and leaves the group. Returns an error when it cannot go on.
pub fn run(config: Arc<Config>, view: Arc<View>, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    // Held until the process ends: no other process uses this state directory, nor its instance ID.
    let instance = Instance::claim(&config)?;
    let transactional_id = clients::transactional_id(&config.kafka, &instance.id);
    let Some(layout) = prepare_topics(&config, &view, &runtime)? else { return Ok(()) };
    topics::check_record_sizes(&config, &layout.limits)?;
    let limits = Arc::new(TopicLimits::new(layout.limits));
    view.update_health(|h| h.home_partitions = layout.home_partitions);
    let metrics = Arc::clone(&view.metrics);
    metrics.register_workflow_types(config.workflows.iter().map(|w| w.workflow_type.as_str()));
    metrics.register_input_topics(config.kafka.input_topics.iter().map(|t| t.name.as_str()));
    let lease = Arc::new(membership_lease(&config, layout.session));
    let commits = Commits::new(
        Arc::clone(&config),
        metrics,
        transactional_id.clone(),
        runtime.clone(),
        Arc::clone(&lease),
        limits,
        Arc::clone(&view.shutdown),
    )?;
    let input_counts: Vec<usize> = layout.inputs.iter().map(|(_, n)| *n).collect();
    let grown =
        input_watch::spawn(Arc::clone(&config), Arc::clone(&view), input_counts.iter().copied().map(Some).collect())
            .context("starting the thread that watches the input topics")?;
    let orphans = group_watch::spawn(Arc::clone(&config), Arc::clone(&view), layout.home_partitions)
        .context("starting the thread that watches the group")?;
    let partitions = Partitions::new(
        Arc::clone(&config),
        Arc::clone(&view),
        layout.home_partitions,
        input_counts,
        layout.changelog_delete_retention,
    )?;
    let engine =
        Arc::new(Mutex::new(Engine::new(Arc::clone(&view), partitions, commits, config.state.max_pending_bytes)));
    let member_id = config.kafka.static_membership.then_some(instance.id.as_str());
    let join = || join_group(&config, &engine, &view, &lease, member_id);
    let mut consumer = join()?;
    info!(
        inputs = ?layout.inputs,
        home_partitions = layout.home_partitions,
        guarantee = config.kafka.processing_guarantee.as_str(),
        instance_id = %instance.id,
        transactional_id = if config.kafka.processing_guarantee == Guarantee::ExactlyOnce { transactional_id.as_str() } else { "" },
        "junction is running"
    );
    // A static member fenced once joins again with a new consumer; fenced
    // again soon after, another instance has its ID.
    let mut fenced_at: Option<Instant> = None;
    let result = loop {
        let rejoin =
            Rejoin::new(config.kafka.repartition_topic(), clients::max_poll_interval(&config.kafka) + layout.session.0);
        match poll_loop(&config, &view, &engine, &consumer, &grown, &orphans, rejoin) {
            Ok(Ended::Fenced) if fenced_at.is_none_or(|t| t.elapsed() > layout.session.0 * 2) => {
                warn!(
                    "the group coordinator fenced this static member, though another instance may not have its ID \
                     (a broker restart or a join that timed out can do it): giving every partition up as lost and \
                     joining the group again with a new consumer"
                );
                lock(&engine).start_over(&consumer, "the group coordinator fenced this static member");
                drop(consumer);
                consumer = join()?;
                fenced_at = Some(Instant::now());
            }
            Ok(Ended::Stranded) => {
                warn!(
                    "the input consumer reaches no broker while new clients have reached the cluster for {} s: \
                     librdkafka stranded it (issue 5301). Giving every partition up as lost, replacing the \
                     changelog's readers and the producer, and joining the group again with a new consumer",
                    stranded::STRANDED_AFTER.as_secs()
                );
                {
                    let mut e = lock(&engine);
                    e.start_over(&consumer, "librdkafka stranded the input consumer");
                    e.renew_clients();
                }
                drop(consumer);
                consumer = join()?;
            }
            Ok(Ended::Unreleased) => {
                warn!(
                    "librdkafka kept home partitions after this instance left its group to join it again: giving \
                     every partition up as lost and joining the group again with a new consumer"
                );
                lock(&engine).start_over(&consumer, "librdkafka kept home partitions after leaving the group");
                drop(consumer);
                consumer = join()?;
            }
            Ok(Ended::Fenced) => {
                let mut e = lock(&engine);
                e.fail(fatal(&consumer));
                break Err(e.take_failure().expect("a failure was just recorded"));
            }
            Ok(Ended::Shutdown) => break Ok(()),
            Err(e) => break Err(e),
        }
    };

    info!("shutting down: committing, closing stores, leaving the group");
    // Each stage says when it is done, so that a shutdown that overruns
    // its budget shows where it stopped.
    let began = Instant::now();
    let stage = |done: &str| info!(after_ms = began.elapsed().as_millis() as u64, "shutdown: {done}");
    if result.is_ok() {
        lock(&engine).commit(&consumer, true);
        stage("the last commit is done");
    }
    give_up_before_leaving(&engine, &consumer);
    stage("partitions given up");
    // Leaving the group runs the revoke callback, which asks librdkafka nothing now.
    drop(consumer);
    stage("left the group");
    let failure = {
        let mut e = lock(&engine);
        e.partitions.close_all();
        e.take_failure()
    };
    stage("stores closed");
    drop(engine);
    stage("clients closed");
    result.and(failure.map_or(Ok(()), Err))
}

/// The lease under which `at_least_once` writes its changelog and stores
/// (see [`crate::commit::lease`]), for a group session of `session`
/// (timeout, heartbeat interval). A `message.timeout.ms` the user set
/// beyond what goes with it is kept, with a warning: a record held that
/// long may land after the partition's next owner has written.
fn membership_lease(config: &Config, session: (Duration, Duration)) -> Lease {
    let lease = Lease::new(lease::budget(session.0, session.1));
    if config.kafka.processing_guarantee == Guarantee::AtLeastOnce {
        if let Some(set) = clients::configured_message_timeout(&config.kafka).filter(|t| *t > lease.message_timeout()) {
            warn!(
                message_timeout_ms = set.as_millis() as u64,
                within_ms = lease.message_timeout().as_millis() as u64,
                session_timeout_ms = session.0.as_millis() as u64,
                "message.timeout.ms is longer than at_least_once allows for this group session: a changelog record \
                 queued before a pause past the session timeout may land after the partition's next owner has \
                 written, and compaction would keep it; leave it unset"
            );
        }
    }
    lease
}

/// Makes the consumer look up the input topics' partitions and leaders
/// now. It subscribes to the repartition topic alone, and librdkafka looks
/// up a topic it does not know at its next scan for unknown topics, once a
/// second: the input partitions of the first assignment would otherwise
/// wait up to a second more for their leaders before their first fetch
/// (measured: 0.4 to 1.2 s from `/readyz` to the first record). A failure
/// only costs that wait.
fn learn_input_topics(config: &Config, consumer: &BaseConsumer<Callbacks>) {
    for topic in &config.kafka.input_topics {
        if let Err(e) = consumer.fetch_metadata(Some(&topic.name), METADATA_TIMEOUT) {
            warn!(topic = %topic.name, error = %e, "cannot look up an input topic's partitions yet");
        }
    }
}

/// A consumer of the group, subscribed to the repartition topic.
fn join_group(
    config: &Config,
    engine: &Arc<Mutex<Engine>>,
    view: &Arc<View>,
    lease: &Arc<Lease>,
    member_id: Option<&str>,
) -> anyhow::Result<BaseConsumer<Callbacks>> {
    let mut topics: Vec<String> = config.kafka.input_topics.iter().map(|t| t.name.clone()).collect();
    topics.push(config.kafka.repartition_topic());
    let callbacks = Callbacks {
        engine: Arc::clone(engine),
        view: Arc::clone(view),
        lease: Arc::clone(lease),
        repartition_topic: config.kafka.repartition_topic(),
        topics,
        cooperative: OnceLock::new(),
    };
    let consumer: BaseConsumer<Callbacks> = clients::consumer_config(&config.kafka, member_id)
        .create_with_context(callbacks)
        .context("creating the input consumer")?;
    learn_input_topics(config, &consumer);
    // The group balances the home partitions; each instance reads the input
    // partitions of those it holds (see `runtime::rebalance`).
    consumer.subscribe(&[&config.kafka.repartition_topic()]).context("subscribing to the repartition topic")?;
    Ok(consumer)
}

/// How the poll loop ended, short of an error.
enum Ended {
    Shutdown,
    /// The group coordinator fenced this static member: the consumer cannot go on.
    Fenced,
    /// The consumer reaches no broker, though the cluster answers a new client.
    Stranded,
    /// The consumer left its group to join it again, and librdkafka never
    /// let go of its home partitions (see [`crate::runtime::rejoin`]).
    Unreleased,
}

/// The loop itself, until shutdown or an error.
fn poll_loop(
    config: &Config,
    view: &View,
    engine: &Mutex<Engine>,
    consumer: &BaseConsumer<Callbacks>,
    grown: &Receiver<input_watch::Counts>,
    orphans: &Receiver<group_watch::Orphans>,
    mut rejoin: Rejoin,
) -> anyhow::Result<Ended> {
    let interval = config.kafka.commit_interval;
    let mut next_commit = Instant::now() + interval;
    let mut next_publish = Instant::now() + PUBLISH_INTERVAL;
    let mut next_size_report = Instant::now();
    let mut reachability = Reachability::default();
    loop {
        if view.shutdown.load(Ordering::SeqCst) {
            return Ok(Ended::Shutdown);
        }
        let restoring = {
            let mut e = lock(engine);
            if let Some(f) = e.take_failure() {
                return Err(f);
            }
            if e.partitions.has_parked() {
                e.retry_parked(consumer);
            }
            e.take_opened(consumer);
            e.partitions.retry_seeks(consumer);
            e.confirm_membership(consumer);
            if let Ok(counts) = grown.try_recv() {
                e.grow_inputs(consumer, &counts);
            }
            if let Ok(o) = orphans.try_recv() {
                rejoin_for(consumer, &o, &mut rejoin);
            }
            if e.take_rejoin() {
                rejoin.begin(consumer);
            }
            if rejoin.step(consumer) == Step::Stuck {
                return Ok(Ended::Unreleased);
            }
            if e.partitions.is_restoring() {
                let budget = if e.partitions.has_active() { RESTORE_SLICE } else { MAX_POLL_WAIT };
                e.partitions.restore_step(consumer, budget);
            }
            e.partitions.is_restoring()
        };
        let committing = lock(engine).commits.is_committing();
        let wait = if restoring {
            Duration::ZERO
        } else if committing {
            // Come back soon to move the commit on as its deliveries arrive.
            COMMIT_CHECK
        } else {
            next_commit.min(next_publish).saturating_duration_since(Instant::now()).min(MAX_POLL_WAIT)
        };
        let messages = match poll_batch(consumer, wait) {
            Ok(messages) => messages,
            Err(_) if is_fenced(consumer) => return Ok(Ended::Fenced),
            Err(e) => {
                // Halted first: leaving the group commits nothing more.
                let mut e2 = lock(engine);
                e2.fail(e);
                return Err(e2.take_failure().expect("a failure was just recorded"));
            }
        };
        if !messages.is_empty() {
            view.set_unreachable(None);
            lock(engine).partitions.process(consumer, &messages, now_ms());
        }
        drop(messages);
        if lock(engine).bound_memory(consumer) {
            // Held: what waits is what the next commit frees, so it comes now.
            next_commit = next_commit.min(Instant::now());
        }
        if committing {
            lock(engine).advance_commit(consumer);
        }
        if Instant::now() >= next_publish {
            lock(engine).publish(consumer);
            next_publish = Instant::now() + PUBLISH_INTERVAL;
        }
        if Instant::now() >= next_commit && lock(engine).commit(consumer, false) {
            // A fixed rate: the time a commit takes does not stretch the
            // interval, which bounds how long an outcome waits for it.
            next_commit += interval;
            if next_commit < Instant::now() {
                next_commit = Instant::now() + interval;
            }
        }
        if Instant::now() >= next_size_report {
            lock(engine).partitions.report_state_sizes();
            next_size_report = Instant::now() + STATE_SIZE_REPORT;
            // (The consumer's statistics say whether it reaches a broker, every 5 s.)
            if reachability.stranded(view.health().unreachable.is_none(), &config.kafka) {
                return Ok(Ended::Stranded);
            }
            lock(engine).commits.replace_stranded_producer();
        }
    }
}

/// Closes the stores and stops reading the input partitions while the group
/// is still up, then serves what the consumer has queued: a rebalance's
/// assignment that arrived meanwhile is answered now. In the consumer's
/// close, librdkafka may end its group before it answers a request that a
/// callback sends, which then waits for ever (librdkafka issues 4041 and
/// 4884): the close's callbacks must have nothing left to ask.
fn give_up_before_leaving(engine: &Mutex<Engine>, consumer: &BaseConsumer<Callbacks>) {
    {
        let mut e = lock(engine);
        e.closing = true;
        let (homes, inputs) = (e.partitions.held(), e.partitions.held_sources());
        e.partitions.close(&homes);
        e.partitions.remove_sources(consumer, &inputs);
    }
    // Until a poll waits its whole time (one that serves a callback returns
    // at once). Records read now are dropped: their offsets were not committed.
    let deadline = Instant::now() + CLOSE_DRAIN;
    while Instant::now() < deadline {
        let polled = Instant::now();
        if consumer.poll(CLOSE_QUIET).is_none() && polled.elapsed() >= CLOSE_QUIET {
            break;
        }
    }
}

/// Has the leader assign home partitions that no member holds (see
/// [`group_watch`]): the member with the smallest ID leaves the group and
/// joins it again, which starts a rebalance.
fn rejoin_for(consumer: &BaseConsumer<Callbacks>, orphans: &group_watch::Orphans, rejoin: &mut Rejoin) {
    let Some(me) = group_state::member_id(consumer) else { return };
    if orphans.members.iter().min() != Some(&me) || rejoin.is_under_way() {
        return;
    }
    warn!(
        partitions = ?orphans.partitions,
        "home partitions held by no member of the group (a static member restarted in the middle of a \
         cooperative rebalance): joining the group again to have them assigned"
    );
    rejoin.begin(consumer);
}

/// Up to [`MAX_BATCH`] records: waits up to `wait` for the first, then
/// takes what is already fetched. An error: the consumer hit a fatal error.
fn poll_batch(consumer: &BaseConsumer<Callbacks>, wait: Duration) -> anyhow::Result<Vec<BorrowedMessage<'_>>> {
    let mut messages = Vec::new();
    let mut polled = consumer.poll(wait);
    while let Some(result) = polled {
        match result {
            Ok(m) => messages.push(m),
            // librdkafka hands a fatal error over as the error it was (a
            // fenced static member's, for one), marked fatal.
            Err(KafkaError::MessageConsumptionFatal(_)) => return Err(fatal(consumer)),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => return Err(fatal(consumer)),
            Err(e) => warn!(error = %e, "input consumer error"),
        }
        if messages.len() >= MAX_BATCH {
            break;
        }
        polled = consumer.poll(Duration::ZERO);
    }
    Ok(messages)
}

/// Whether the consumer's fatal error is the group's fence of its static member.
fn is_fenced(consumer: &BaseConsumer<Callbacks>) -> bool {
    matches!(consumer.client().fatal_error(), Some((RDKafkaErrorCode::FencedInstanceId, _)))
}

/// The input consumer's fatal error, said so that the user can act on it.
fn fatal(consumer: &BaseConsumer<Callbacks>) -> anyhow::Error {
    match consumer.client().fatal_error() {
        Some((RDKafkaErrorCode::FencedInstanceId, reason)) => anyhow::anyhow!(
            "the group coordinator fenced this instance ({reason}): another process joined the group as the same \
             static member, so two instances were given the same kafka.instance_id. Give each instance its own, or \
             leave kafka.instance_id unset (each state directory then keeps an ID of its own)"
        ),
        Some((code, reason)) => anyhow::anyhow!("the input consumer hit a fatal error: {code:?}: {reason}"),
        None => anyhow::anyhow!("the input consumer hit a fatal error"),
    }
}

/// Checks and creates the topics, trying again with a growing pause while
/// the cluster cannot be reached (`/readyz` says so meanwhile). `None`: shut
/// down before the cluster answered.
fn prepare_topics(
    config: &Config,
    view: &View,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<topics::Layout>, topics::TopicError> {
    let mut pause = STARTUP_RETRY_FIRST;
    loop {
        match topics::prepare_topics(&config.kafka, runtime) {
            Ok(layout) => {
                view.set_unreachable(None);
                return Ok(Some(layout));
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot reach the Kafka cluster at start-up");
                view.set_unreachable(Some(e.to_string()));
            }
            Err(e) => return Err(e),
        }
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if view.shutdown.load(Ordering::SeqCst) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pause = (pause * 2).min(STARTUP_RETRY_MAX);
    }
}
