//! The consumer's context: librdkafka calls it inside `poll` on a
//! rebalance, with its statistics, and with client-wide errors. A
//! rebalance reaches the stream thread's state through the engine's mutex,
//! which the loop never holds while polling.
//!
//! The group is subscribed to the repartition topic alone, so that it
//! balances the home partitions, which hold the state; each instance then
//! assigns itself the input partitions of the home partitions it holds
//! ([`crate::route::input_partitions_of`]) and gives them up with them. (Balancing
//! the input and repartition topics together, an assignor may give one
//! member every input partition and another every home partition.)

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::commit::lease::Lease;
use crate::ops::view::View;
use crate::runtime::engine::{lock, Engine};

pub struct Callbacks {
    pub engine: Arc<Mutex<Engine>>,
    pub view: Arc<View>,
    /// Renewed by an assignment and by every offset commit the coordinator accepts.
    pub lease: Arc<Lease>,
    /// The repartition topic, whose partitions are the home partitions.
    pub repartition_topic: String,
    /// Every topic read (the input topics and the repartition topic), for the lag.
    pub topics: Vec<String>,
}

impl ClientContext for Callbacks {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.view.set_unreachable(Some(reason.to_string()));
        } else {
            warn!(error = %error, reason, "Kafka client error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.view.set_unreachable(None);
        }
        for name in &self.topics {
            let Some(topic) = statistics.topics.get(name) else { continue };
            for (partition, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal unassigned queue; a lag of -1 is unknown.
                if *partition >= 0 && p.consumer_lag >= 0 && p.fetch_state == "active" {
                    self.view.metrics.set_consumer_lag(name, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if consumer.assignment_lost() {
                lock(&self.engine).give_up(consumer, &self.homes(tpl), "the group's rebalance says so");
            } else {
                on_revoke(&mut lock(&self.engine), consumer, &self.homes(tpl));
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // The coordinator has just counted this instance a member.
                self.lease.renew(Instant::now());
                lock(&self.engine).assigned(consumer, &self.homes(tpl))
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    /// The answer to an asynchronous offset commit (see
    /// [`crate::kafka::answered_commit`]): accepted, it renews the lease.
    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = &result {
            debug!(error = %e, "the group coordinator did not accept an offset commit");
        }
        self.lease.answered(result.is_ok());
    }
}

impl Callbacks {
    /// The home partitions of a rebalance's list.
    fn homes(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements().iter().filter(|e| e.topic() == self.repartition_topic).map(|e| e.partition()).collect()
    }
}

fn on_revoke(engine: &mut Engine, consumer: &BaseConsumer<Callbacks>, homes: &[i32]) {
    let inputs = engine.partitions.inputs_of(homes);
    // Finish the interval's work before the partitions are given up (not
    // after a failure: what failed must not be committed).
    if !engine.commits.is_halted() {
        engine.commit(consumer, true);
    }
    engine.partitions.close(homes);
    engine.partitions.remove_sources(consumer, &inputs);
    info!(
        revoked_homes = ?homes,
        revoked_inputs = ?inputs,
        keeping = ?engine.partitions.held(),
        "partitions revoked"
    );
    engine.partitions.publish_health(false);
}
