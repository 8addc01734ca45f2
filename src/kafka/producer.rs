//! The producer of outcomes, dead letters, forwarded records and changelog records: it turns
//! each into its Kafka record (key, value, headers), sends it tagged with
//! its commit interval (its epoch), waits while librdkafka's queue is full,
//! and waits for deliveries. It decides nothing about commits: the commit
//! strategies ([`crate::commit`]) say what to send and when.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer as _, PurgeConfig, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::input::dead_letter::DeadLetter;
use crate::join::outcome::OutcomeRecord;
use crate::kafka::clients;
use crate::kafka::delivery::DeliveryTracker;
use crate::kafka::limits::{Topic, TopicLimits};
use crate::kafka::refusals::{Refusals, Remedy};
use crate::names;
use crate::route::Forward;
use crate::state::ChangelogRecord;

/// How long a send may wait for room in librdkafka's queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(60);

/// A changelog send stopped before its end: the writes were no longer allowed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the changelog may no longer be written: this instance cannot show that it still holds its partitions")]
pub struct SendStopped;

/// Why a changelog send did not send every record.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogSendError {
    #[error(transparent)]
    Kafka(KafkaError),
    #[error(transparent)]
    Stopped(SendStopped),
}

/// A handle on the one producer of a process (clones share it).
#[derive(Clone)]
pub struct Producer {
    /// Delivery reports are served on the producer's own thread, which
    /// `flush`, `commit_transaction` and `abort_transaction` rely on, and
    /// which lets a pipelined commit see its deliveries without polling.
    inner: Arc<ThreadedProducer<DeliveryTracker>>,
    /// Records refused for good, and what is sent instead.
    refusals: Arc<Refusals>,
    /// What each of junction's topics takes.
    limits: Arc<TopicLimits>,
    output_topic: String,
    dead_letter_topic: String,
    changelog_topic: String,
    repartition_topic: String,
}

impl Producer {
    /// Creates the producer, transactional as `transactional_id` under
    /// exactly-once; `message_timeout`: how long it may hold a record
    /// unless the user set it (see [`crate::commit::lease`]).
    pub fn new(
        config: &KafkaConfig,
        transactional_id: &str,
        message_timeout: Option<Duration>,
        limits: Arc<TopicLimits>,
    ) -> Result<Producer, KafkaError> {
        let refusals = Arc::new(Refusals::new(&config.output_topic, &config.dead_letter_topic));
        let tracker = DeliveryTracker::new(config.changelog_topic(), Arc::clone(&refusals), Arc::clone(&limits));
        let mut client = clients::producer_config(config, transactional_id, message_timeout);
        // A batch larger than a topic's own limit is refused whole.
        if !config.properties.contains_key("batch.size") {
            client.set("batch.size", limits.batch_bytes().min(clients::DEFAULT_BATCH_BYTES).to_string());
        }
        let inner: ThreadedProducer<DeliveryTracker> = client.create_with_context(tracker)?;
        Ok(Producer {
            inner: Arc::new(inner),
            refusals,
            limits,
            output_topic: config.output_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            changelog_topic: config.changelog_topic(),
            repartition_topic: config.repartition_topic(),
        })
    }

    /// The librdkafka producer, for its transactions.
    pub fn client(&self) -> &ThreadedProducer<DeliveryTracker> {
        &self.inner
    }

    /// What has been delivered, and what is still in flight.
    pub fn tracker(&self) -> &DeliveryTracker {
        self.inner.context()
    }

    /// The records refused for good, and their remedies.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Sends outcome records, keyed by workflow ID, with their kind and ID
    /// as headers. One too large for the output topic goes without its
    /// payloads, or to the dead-letter topic; one refused for good before
    /// goes as its remedy says (see [`crate::kafka::refusals`]). An error
    /// for one that no topic takes.
    pub fn send_outcomes<'a>(
        &self,
        epoch: usize,
        outcomes: impl IntoIterator<Item = &'a OutcomeRecord>,
    ) -> Result<(), KafkaError> {
        // One buffer for every record's JSON: the producer copies it.
        let mut value = Vec::with_capacity(1024);
        for o in outcomes {
            let id = o.id();
            let key = o.workflow_id.as_bytes();
            let kind = o.outcome.as_str();
            let base = [(names::HEADER_OUTCOME, kind.as_bytes()), (names::HEADER_OUTCOME_ID, id.as_bytes())];
            value.clear();
            o.write_json(&mut value);
            let mut truncated = None;
            if !self.limits.fits(Topic::Output, key.len(), value.len(), &base) {
                truncated = Some(format!(
                    "payloads: the record of {} bytes is larger than the output topic takes ({} bytes, its \
                     max.message.bytes)",
                    value.len(),
                    self.limits.of(Topic::Output)
                ));
                value.clear();
                o.write_json_with(&mut value, false);
            }
            let mut to_dead_letters =
                self.refusals.remedy(&id).map(|Remedy::DeadLetter { detail }| detail).or_else(|| {
                    let why = self.refusals.output_refused()?;
                    Some(format!(
                        "the output topic {} refuses junction's writes ({why}); here is the outcome",
                        self.output_topic
                    ))
                });
            let detail_bytes = truncated.as_ref().map_or(0, String::len);
            if to_dead_letters.is_none()
                && !self.limits.fits(Topic::Output, key.len(), value.len() + detail_bytes, &base)
            {
                to_dead_letters = Some(format!(
                    "the outcome record is larger than the output topic takes ({} bytes) even without its \
                     payloads; here it is, without them",
                    self.limits.of(Topic::Output)
                ));
            }
            let mut headers = OwnedHeaders::new_with_capacity(6)
                .insert(Header { key: names::HEADER_OUTCOME, value: Some(kind) })
                .insert(Header { key: names::HEADER_OUTCOME_ID, value: Some(id.as_str()) });
            if let Some(why) = &truncated {
                headers = headers.insert(Header { key: names::HEADER_TRUNCATED, value: Some(why.as_str()) });
            }
            let topic = match &to_dead_letters {
                None => &self.output_topic,
                Some(detail) => {
                    if !self.limits.fits(Topic::DeadLetter, key.len(), value.len() + detail.len(), &base) {
                        let why = format!(
                            "outcome {id} is larger than both the output topic and the dead-letter topic take, even \
                             without its payloads"
                        );
                        self.refusals.unplaceable(o.workflow_id.clone(), why);
                        return Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
                    }
                    headers = headers
                        .insert(Header { key: names::HEADER_ERROR, value: Some(names::REASON_OUTCOME_REFUSED) })
                        .insert(Header { key: names::HEADER_ERROR_DETAIL, value: Some(detail.as_str()) })
                        .insert(Header { key: names::HEADER_SOURCE_TOPIC, value: Some(self.output_topic.as_str()) });
                    &self.dead_letter_topic
                }
            };
            self.send(BaseRecord::with_opaque_to(topic, epoch).key(key).payload(&value).headers(headers))?;
        }
        Ok(())
    }

    /// Sends dead letters: the bad record's bytes, with why and where it
    /// came from as headers; keyed by the workflow ID when the record gave
    /// one (its own key then goes in a header), by its own key otherwise.
    pub fn send_dead_letters(&self, epoch: usize, dead_letters: &[DeadLetter]) -> Result<(), KafkaError> {
        for d in dead_letters {
            let value_bytes = d.value.as_ref().map_or(0, Vec::len);
            let key_bytes = d.error.workflow_id.as_ref().map_or(0, String::len) + d.key.as_ref().map_or(0, Vec::len);
            // The headers: the detail and the source, about.
            let framing = d.error.detail.len() + d.source_topic.len() + 256;
            let without_value = (!self.limits.fits(Topic::DeadLetter, key_bytes, value_bytes + framing, &[])).then(|| {
                format!(
                    "the value was not copied: larger than the dead-letter topic takes ({} bytes, its max.message.bytes)",
                    self.limits.of(Topic::DeadLetter)
                )
            });
            let mut headers = dead_letter_headers(d, without_value.as_deref());
            let key = match (&d.error.workflow_id, &d.key) {
                (Some(id), own) => {
                    if let Some(k) = own {
                        headers = headers.insert(Header { key: names::HEADER_SOURCE_KEY, value: Some(k.as_slice()) });
                    }
                    Some(id.as_bytes())
                }
                (None, own) => own.as_deref(),
            };
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.dead_letter_topic, epoch).headers(headers);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(v) = d.value.as_ref().filter(|_| without_value.is_none()) {
                record = record.payload(v.as_slice());
            }
            if let Some(ts) = d.timestamp_ms {
                record = record.timestamp(ts);
            }
            self.send(record)?;
        }
        Ok(())
    }

    /// Sends records read off their workflow's home partition to it, on the
    /// repartition topic: keyed by workflow ID, with the source record's
    /// value and timestamp, and where it came from as headers; and the
    /// ticks and markers of home partitions, without a key.
    pub fn send_forwards(&self, epoch: usize, forwards: &[Forward]) -> Result<(), KafkaError> {
        for f in forwards {
            if f.is_tick() {
                let headers = OwnedHeaders::new().insert(Header { key: names::HEADER_TICK, value: Some("") });
                let record: BaseRecord<'_, [u8], [u8], usize> =
                    BaseRecord::with_opaque_to(&self.repartition_topic, epoch)
                        .partition(f.home)
                        .payload(&[][..])
                        .timestamp(f.timestamp_ms.unwrap_or_default())
                        .headers(headers);
                self.send(record)?;
                continue;
            }
            let partition = f.source_partition.to_string();
            let offset = f.source_offset.to_string();
            let mut headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header { key: names::HEADER_SOURCE_TOPIC, value: Some(f.source_topic.as_str()) })
                .insert(Header { key: names::HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
                .insert(Header { key: names::HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) });
            if f.is_marker() {
                headers = headers.insert(Header { key: names::HEADER_MARKER, value: Some("") });
                let record: BaseRecord<'_, [u8], [u8], usize> =
                    BaseRecord::with_opaque_to(&self.repartition_topic, epoch)
                        .partition(f.home)
                        .payload(&[][..])
                        .headers(headers);
                self.send(record)?;
                continue;
            }
            if let Some(k) = &f.key {
                headers = headers.insert(Header { key: names::HEADER_SOURCE_KEY, value: Some(k.as_slice()) });
            }
            let mut record: BaseRecord<'_, str, [u8], usize> =
                BaseRecord::with_opaque_to(&self.repartition_topic, epoch)
                    .key(f.workflow_id.as_str())
                    .partition(f.home)
                    .payload(f.value.as_slice())
                    .headers(headers);
            if let Some(ts) = f.timestamp_ms {
                record = record.timestamp(ts);
            }
            self.send(record)?;
        }
        Ok(())
    }

    /// Sends one store's changelog records to its changelog partition, in
    /// order, each only once `allowed()` says it may go (see
    /// [`crate::commit::lease`]); at the first `false` it stops with
    /// [`SendStopped`].
    pub fn send_changelog(
        &self,
        epoch: usize,
        partition: i32,
        changelog: &[ChangelogRecord],
        allowed: impl Fn() -> bool,
    ) -> Result<(), ChangelogSendError> {
        let mut buf = Vec::new();
        for (key, value) in changelog {
            if !allowed() {
                return Err(ChangelogSendError::Stopped(SendStopped));
            }
            let key = key.bytes(&mut buf);
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.changelog_topic, epoch).key(key).partition(partition);
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            self.send(record).map_err(ChangelogSendError::Kafka)?;
        }
        Ok(())
    }

    /// Drops every record still waiting in librdkafka's queues: their
    /// delivery reports fail (as purged). Records already on their way to
    /// a broker are not recalled.
    pub fn purge_queued(&self) {
        self.inner.purge(PurgeConfig::default().queue());
    }

    /// Sends one record, waiting while librdkafka's queue is full.
    fn send<K: ToBytes + ?Sized, P: ToBytes + ?Sized>(
        &self,
        mut record: BaseRecord<'_, K, P, usize>,
    ) -> Result<(), KafkaError> {
        let mut deadline = None;
        let epoch = record.delivery_opaque;
        loop {
            // Counted before the send: its delivery report may come before `send` returns.
            self.tracker().sent(epoch);
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((e, r)) => {
                    self.tracker().unsent(epoch);
                    match e {
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            if *deadline.get_or_insert_with(|| Instant::now() + QUEUE_FULL_WAIT) > Instant::now() =>
                        {
                            record = r;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        e => return Err(e),
                    }
                }
            }
        }
    }

    /// Waits for every record in flight; fails if any was not delivered.
    /// Returns the changelog offsets delivered since the last time.
    pub fn flush(&self, timeout: Duration) -> Result<HashMap<i32, i64>, KafkaError> {
        self.inner.flush(timeout)?;
        self.drain_deliveries(timeout)
    }

    /// Waits (without flushing) until nothing is in flight, then takes what
    /// was delivered, as [`Producer::await_deliveries`].
    pub fn drain_deliveries(&self, timeout: Duration) -> Result<HashMap<i32, i64>, KafkaError> {
        let deadline = Instant::now() + timeout;
        while self.tracker().in_flight_total() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let still_pending = self.tracker().in_flight_total();
        let d = self.tracker().take();
        if let Some(f) = d.failures.into_iter().next() {
            return Err(f.error);
        }
        if still_pending > 0 {
            return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
        }
        Ok(d.changelog_last)
    }

    /// Waits until nothing of `epoch` is in flight, or the deadline passes,
    /// or `stop` is set, then takes what was delivered: the changelog
    /// offsets, or the first failure of `epoch` (or an earlier one), or a
    /// timeout. `None`: stopped.
    pub fn await_epoch(
        &self,
        epoch: usize,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Option<Result<HashMap<i32, i64>, KafkaError>> {
        let tracker = self.tracker();
        while tracker.in_flight(epoch) > 0 && Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let still_pending = tracker.in_flight(epoch);
        let d = tracker.take_up_to(epoch);
        if let Some(f) = d.failures.into_iter().next() {
            return Some(Err(f.error));
        }
        if still_pending > 0 {
            return Some(Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
        }
        Some(Ok(d.changelog_last))
    }
}

/// The five headers of a dead letter: the reason code and its detail (with
/// why its value was not copied, if it was not), and the source topic,
/// partition and offset.
fn dead_letter_headers(d: &DeadLetter, without_value: Option<&str>) -> OwnedHeaders {
    let partition = d.source_partition.to_string();
    let offset = d.source_offset.to_string();
    let detail = match without_value {
        Some(why) => format!("{}; {why}", d.error.detail),
        None => d.error.detail.clone(),
    };
    OwnedHeaders::new_with_capacity(5)
        .insert(Header { key: names::HEADER_ERROR, value: Some(d.error.reason.code()) })
        .insert(Header { key: names::HEADER_ERROR_DETAIL, value: Some(detail.as_str()) })
        .insert(Header { key: names::HEADER_SOURCE_TOPIC, value: Some(d.source_topic.as_str()) })
        .insert(Header { key: names::HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
        .insert(Header { key: names::HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) })
}
