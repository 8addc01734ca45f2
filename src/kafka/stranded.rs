//! Clients stranded by librdkafka issue 5301. Told of no broker by a
//! metadata answer (a restarting broker, or one its controller has fenced,
//! answers so when no other broker is up), a librdkafka client forgets every broker it knew and asks
//! for none again, for good: the cluster is back, the client never is. Each
//! long-lived client of junction's is replaced when that happens: the
//! changelog ends' clients ([`crate::kafka::changelog_ends`]), the restore's
//! consumer ([`crate::state::restore`]), the input consumer (the stream
//! thread, after [`Reachability`] says so, and with it the changelog's
//! readers and the producer, made before the same restart), and the
//! producer: under `exactly_once` after [`Reachability`] says so of it
//! too, under `at_least_once` once its records time out
//! ([`crate::runtime::commits`]). The
//! threads that watch the input topics and the group, and the purge of the
//! repartition topic, make a new client after a failed request; each wait
//! for stable offsets has a client of its own. A fresh client starts from
//! `bootstrap.servers` again.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::statistics::Statistics;
use tracing::warn;

use crate::config::KafkaConfig;
use crate::kafka::clients;

/// How long a client may reach no broker before fresh clients are asked
/// whether the cluster answers, and how often they are asked.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long the cluster must have answered fresh clients while the client
/// still reaches no broker: longer than one that is only reconnecting
/// takes to say it is back (librdkafka waits up to
/// `reconnect.backoff.max.ms`, 10 s, between attempts, and the consumer's
/// statistics, which say so, come every 5 s).
pub const STRANDED_AFTER: Duration = Duration::from_secs(20);
/// How long a fresh client waits for the cluster's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a client's statistics say it reaches a broker: one it knows as
/// a broker of the cluster (from `bootstrap.servers` or the metadata) is
/// up. A stranded client may still keep the connection of a coordinator
/// it had looked up (a "logical" broker of librdkafka's), yet has no
/// broker to ask anything else of, a coordinator's address among them.
pub fn reaches_a_broker(statistics: &Statistics) -> bool {
    statistics.brokers.values().any(|b| b.state == "UP" && matches!(b.source.as_str(), "learned" | "configured"))
}

/// Whether a fresh client of `config`'s cluster is answered with a broker.
pub fn cluster_answers(config: &ClientConfig) -> bool {
    let Ok(probe) = config.create::<BaseConsumer>() else { return false };
    probe.fetch_metadata(None, PROBE_TIMEOUT).is_ok_and(|m| !m.brokers().is_empty())
}

/// Follows whether one client reaches a broker, and says when it has not
/// while fresh clients have reached the cluster for [`STRANDED_AFTER`]: it
/// is stranded. The fresh clients ask on a thread of their own, so that
/// the caller never waits for them.
#[derive(Debug, Default)]
pub struct Reachability {
    /// Since when the client has reached no broker.
    unreachable_since: Option<Instant>,
    /// When a fresh client last asked, and its answer to come.
    asked: Option<Instant>,
    /// The answer, and when it came.
    probe: Option<Receiver<(bool, Instant)>>,
    /// Since when fresh clients have reached the cluster (when the first of
    /// an unbroken run of them was answered).
    answered_since: Option<Instant>,
}

impl Reachability {
    /// Notes whether the client reaches a broker now; returns whether it is stranded.
    pub fn stranded(&mut self, reaches_a_broker: bool, config: &KafkaConfig) -> bool {
        if reaches_a_broker {
            *self = Reachability::default();
            return false;
        }
        let since = *self.unreachable_since.get_or_insert_with(Instant::now);
        if let Some(probe) = &self.probe {
            match probe.try_recv() {
                Err(TryRecvError::Empty) => return false,
                Ok((true, answered)) => {
                    // Dated when answered (by the probe's thread): a probe
                    // asked while the broker was still down may wait
                    // PROBE_TIMEOUT for it to come back, and this is read
                    // only every few seconds.
                    self.answered_since = self.answered_since.or(Some(answered));
                    self.probe = None;
                }
                Ok((false, _)) | Err(TryRecvError::Disconnected) => {
                    self.answered_since = None;
                    self.probe = None;
                }
            }
        }
        if self.answered_since.is_some_and(|t| t.elapsed() >= STRANDED_AFTER) {
            return true;
        }
        let due = |t: Instant| t.elapsed() >= CHECK_EVERY;
        if due(since) && self.asked.is_none_or(due) {
            self.asked = Some(Instant::now());
            let (tx, rx) = mpsc::channel();
            let config = clients::base(config, "probe");
            let spawned = std::thread::Builder::new().name("junction-probe".into()).spawn(move || {
                let answers = cluster_answers(&config);
                let _ = tx.send((answers, Instant::now()));
            });
            match spawned {
                Ok(_) => self.probe = Some(rx),
                Err(e) => warn!(error = %e, "cannot start a thread to ask the cluster whether it answers"),
            }
        }
        false
    }
}
