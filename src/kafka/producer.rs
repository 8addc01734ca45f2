//! The producer of outcomes, dead letters, forwarded records and changelog records: it turns
//! each into its Kafka record (key, value, headers), sends it tagged with
//! its commit interval (its epoch), waits while librdkafka's queue is full,
//! and waits for deliveries. It decides nothing about commits: the commit
//! strategies ([`crate::commit`]) say what to send and when.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::input::dead_letter::DeadLetter;
use crate::join::outcome::OutcomeRecord;
use crate::kafka::clients;
use crate::kafka::delivery::DeliveryTracker;
use crate::names;
use crate::route::Forward;
use crate::state::ChangelogRecord;

/// How long a send may wait for room in librdkafka's queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(60);

/// A handle on the one producer of a process (clones share it).
#[derive(Clone)]
pub struct Producer {
    /// Delivery reports are served on the producer's own thread, which
    /// `flush`, `commit_transaction` and `abort_transaction` rely on, and
    /// which lets a pipelined commit see its deliveries without polling.
    inner: Arc<ThreadedProducer<DeliveryTracker>>,
    output_topic: String,
    dead_letter_topic: String,
    changelog_topic: String,
    repartition_topic: String,
}

impl Producer {
    /// Creates the producer, transactional as `transactional_id` under exactly-once.
    pub fn new(config: &KafkaConfig, transactional_id: &str) -> Result<Producer, KafkaError> {
        let tracker = DeliveryTracker::new(config.changelog_topic());
        let inner: ThreadedProducer<DeliveryTracker> =
            clients::producer_config(config, transactional_id).create_with_context(tracker)?;
        Ok(Producer {
            inner: Arc::new(inner),
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

    /// Sends outcome records, keyed by workflow ID, with their kind and ID as headers.
    pub fn send_outcomes<'a>(
        &self,
        epoch: usize,
        outcomes: impl IntoIterator<Item = &'a OutcomeRecord>,
    ) -> Result<(), KafkaError> {
        // One buffer for every record's JSON: the producer copies it.
        let mut value = Vec::with_capacity(1024);
        for o in outcomes {
            let id = o.id();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header { key: names::HEADER_OUTCOME, value: Some(o.outcome.as_str()) })
                .insert(Header { key: names::HEADER_OUTCOME_ID, value: Some(id.as_str()) });
            value.clear();
            o.write_json(&mut value);
            self.send(
                BaseRecord::with_opaque_to(&self.output_topic, epoch)
                    .key(o.workflow_id.as_bytes())
                    .payload(&value)
                    .headers(headers),
            )?;
        }
        Ok(())
    }

    /// Sends dead letters: the bad record's bytes, with why and where it
    /// came from as headers; keyed by the workflow ID when the record gave
    /// one (its own key then goes in a header), by its own key otherwise.
    pub fn send_dead_letters(&self, epoch: usize, dead_letters: &[DeadLetter]) -> Result<(), KafkaError> {
        for d in dead_letters {
            let mut headers = dead_letter_headers(d);
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
            if let Some(v) = &d.value {
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
    /// value and timestamp, and where it came from as headers.
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

    /// Sends one store's changelog records to its changelog partition, in order.
    pub fn send_changelog(
        &self,
        epoch: usize,
        partition: i32,
        changelog: &[ChangelogRecord],
    ) -> Result<(), KafkaError> {
        let mut buf = Vec::new();
        for (key, value) in changelog {
            let key = key.bytes(&mut buf);
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.changelog_topic, epoch).key(key).partition(partition);
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            self.send(record)?;
        }
        Ok(())
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
        self.await_deliveries(|| self.tracker().in_flight_total(), Instant::now() + timeout)
    }

    /// Waits until `pending()` is zero or the deadline passes, then takes what
    /// was delivered: the changelog offsets, or the first failure, or a timeout.
    pub fn await_deliveries(
        &self,
        pending: impl Fn() -> usize,
        deadline: Instant,
    ) -> Result<HashMap<i32, i64>, KafkaError> {
        while pending() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let still_pending = pending();
        let d = self.tracker().take();
        if let Some(e) = d.failures.into_iter().next() {
            return Err(e);
        }
        if still_pending > 0 {
            return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
        }
        Ok(d.changelog_last)
    }
}

/// The five headers of a dead letter: the reason code and its detail, and
/// the source topic, partition and offset.
fn dead_letter_headers(d: &DeadLetter) -> OwnedHeaders {
    let partition = d.source_partition.to_string();
    let offset = d.source_offset.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header { key: names::HEADER_ERROR, value: Some(d.error.reason.code()) })
        .insert(Header { key: names::HEADER_ERROR_DETAIL, value: Some(d.error.detail.as_str()) })
        .insert(Header { key: names::HEADER_SOURCE_TOPIC, value: Some(d.source_topic.as_str()) })
        .insert(Header { key: names::HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
        .insert(Header { key: names::HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) })
}
