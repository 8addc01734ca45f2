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

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Statistics, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::commit::lease::Lease;
use crate::kafka::stranded;
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
    /// Whether the group's rebalance protocol is the cooperative one (see `rebalance`).
    pub cooperative: OnceLock<bool>,
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
        if stranded::reaches_a_broker(&statistics) {
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
    /// rdkafka's own, but for the rebalance protocol, asked once while the
    /// group is up and kept: in the consumer's close, librdkafka may end its
    /// group before it answers a request that a callback sends (librdkafka
    /// issues 4041 and 4884), and the call then waits for ever.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            e => Rebalance::Error(KafkaError::Rebalance(e.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative =
            *self.cooperative.get_or_init(|| matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative));
        let done = match (&rebalance, cooperative) {
            (Rebalance::Assign(tpl), true) => consumer.incremental_assign(tpl),
            (Rebalance::Assign(tpl), false) => consumer.assign(tpl),
            (_, true) => consumer.incremental_unassign(tpl),
            (_, false) => consumer.unassign(),
        };
        if let Err(e) = done {
            warn!(error = %e, "cannot apply the group's rebalance");
        }
        self.post_rebalance(consumer, &rebalance);
    }

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
                let mut engine = lock(&self.engine);
                if !engine.closing {
                    engine.assigned(consumer, &self.homes(tpl))
                }
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
    // after a failure: what failed must not be committed; nor while
    // closing, after the last commit).
    if !engine.commits.is_halted() && !engine.closing {
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
