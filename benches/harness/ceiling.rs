//! The ceiling: a stateless pass-through with junction's own client
//! settings, which consumes the input and produces each record on, flushing
//! and committing every commit interval as junction does; under
//! `exactly_once` in a transaction that holds the input offsets, as
//! junction's does. What no join on this broker and these cores can beat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use junction::config::{Config, Guarantee};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// One pass-through: its own group, reading `input` from the start.
pub struct PassThrough {
    consumer: BaseConsumer,
    producer: ThreadedProducer<DefaultProducerContext>,
    input: String,
    output: String,
    transactional: bool,
    commit_interval: Duration,
}

impl PassThrough {
    pub fn new(config: &Config, group: &str, input: &str, output: &str) -> PassThrough {
        let transactional = config.kafka.processing_guarantee == Guarantee::ExactlyOnce;
        let consumer: BaseConsumer =
            junction::kafka::consumer_config(&config.kafka, None).set("group.id", group).create().unwrap();
        let producer: ThreadedProducer<DefaultProducerContext> =
            junction::kafka::producer_config(&config.kafka, &format!("{group}-tx"), None).create().unwrap();
        if transactional {
            producer.init_transactions(Duration::from_secs(30)).unwrap();
        }
        consumer.subscribe(&[input]).unwrap();
        PassThrough {
            consumer,
            producer,
            input: input.to_string(),
            output: output.to_string(),
            transactional,
            commit_interval: config.kafka.commit_interval,
        }
    }

    /// Runs until `n` records have passed, or until `stop`; returns the
    /// time from the first record to the last commit.
    pub fn run(&self, n: usize, stop: &AtomicBool) -> Duration {
        let mut offsets: HashMap<i32, i64> = HashMap::new();
        let (mut seen, mut started, mut open) = (0, None, false);
        let mut next_commit = Instant::now() + self.commit_interval;
        while seen < n && !stop.load(Ordering::Relaxed) {
            if let Some(m) = self.consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                started.get_or_insert_with(Instant::now);
                if self.transactional && !open {
                    self.producer.begin_transaction().unwrap();
                    open = true;
                }
                self.send(m.key().unwrap_or_default(), m.payload().unwrap_or_default());
                offsets.insert(m.partition(), m.offset() + 1);
                seen += 1;
            }
            if Instant::now() >= next_commit {
                self.commit(&offsets, &mut open);
                next_commit = Instant::now() + self.commit_interval;
            }
        }
        self.commit(&offsets, &mut open);
        started.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Runs in a thread until told to stop.
    pub fn in_background(self) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        (
            stop,
            std::thread::spawn(move || {
                self.run(usize::MAX, &flag);
            }),
        )
    }

    fn send(&self, key: &[u8], value: &[u8]) {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.output).key(key).payload(value);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("pass-through cannot produce: {e}"),
            }
        }
    }

    fn commit(&self, offsets: &HashMap<i32, i64>, open: &mut bool) {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.input, *p, Offset::Offset(*o)).unwrap();
        }
        if self.transactional {
            if !*open {
                return;
            }
            let group = self.consumer.group_metadata().unwrap();
            self.producer.send_offsets_to_transaction(&tpl, &group, Duration::from_secs(30)).unwrap();
            self.producer.commit_transaction(Duration::from_secs(30)).unwrap();
            *open = false;
        } else {
            self.producer.flush(Duration::from_secs(60)).unwrap();
            if tpl.count() > 0 {
                self.consumer.commit(&tpl, CommitMode::Sync).unwrap();
            }
        }
    }
}
