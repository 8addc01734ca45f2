//! Clients stranded by librdkafka issue 5301. Told of no broker by a
//! metadata answer (a restarting broker, or one its controller has fenced,
//! answers so), a librdkafka client forgets every broker it knew and asks
//! for none again, for good: the cluster is back, the client never is. Each
//! long-lived client of junction's is replaced when that happens: the
//! changelog ends' clients ([`crate::kafka::changelog_ends`]), the restore's
//! consumer ([`crate::state::restore`]), the input consumer (the stream
//! thread, after [`Reachability`] says so) and, under `at_least_once`, the
//! producer whose records time out ([`crate::runtime::commits`]). The
//! threads that watch the input topics and the group, and the purge of the
//! repartition topic, make a new client after a failed request; each wait
//! for stable offsets has a client of its own. A fresh client starts from
//! `bootstrap.servers` again.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::KafkaConfig;
use crate::kafka::clients;

/// How long a client may reach no broker before a fresh one is asked
/// whether the cluster answers, and how often it is asked again.
pub const CHECK_AFTER: Duration = Duration::from_secs(15);
/// How long the fresh client waits for the cluster's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a fresh client of `config`'s cluster is answered with a broker.
pub fn cluster_answers(config: &KafkaConfig) -> bool {
    let Ok(probe) = clients::base(config).create::<BaseConsumer>() else { return false };
    probe.fetch_metadata(None, PROBE_TIMEOUT).is_ok_and(|m| !m.brokers().is_empty())
}

/// Follows whether one client reaches a broker, and says when it has not
/// for [`CHECK_AFTER`] while a fresh client does: it is stranded.
#[derive(Debug, Default)]
pub struct Reachability {
    /// Since when the client has reached no broker.
    unreachable_since: Option<Instant>,
    /// When a fresh client was last asked.
    asked: Option<Instant>,
}

impl Reachability {
    /// Notes whether the client reaches a broker now. Returns whether it
    /// is stranded (asking the cluster with a fresh client, which blocks
    /// up to [`PROBE_TIMEOUT`], at most once per [`CHECK_AFTER`]).
    pub fn stranded(&mut self, reaches_a_broker: bool, config: &KafkaConfig) -> bool {
        if reaches_a_broker {
            *self = Reachability::default();
            return false;
        }
        let since = *self.unreachable_since.get_or_insert_with(Instant::now);
        let due = |t: Instant| t.elapsed() >= CHECK_AFTER;
        if !due(since) || !self.asked.is_none_or(due) {
            return false;
        }
        self.asked = Some(Instant::now());
        cluster_answers(config)
    }
}
