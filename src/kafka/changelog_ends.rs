//! Where a changelog partition starts and ends, as the restore sees it:
//! its committed records (what a `read_committed` reader, and so the
//! restore, reads up to) and every record, those of transactions still open
//! included. A store counts as restored only once the two meet: a
//! transaction open on its changelog may yet commit (see
//! [`crate::state::restore`]).
//!
//! The two clients are replaced when a request of one of them fails: it
//! may have been stranded ([`crate::kafka::stranded`]; a fenced broker's
//! answer leaves it with no broker, or with partitions whose leader it does
//! not know), and a store waiting on it would never open.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tracing::warn;

use crate::config::KafkaConfig;
use crate::kafka::clients;

/// How long one watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);

/// A changelog partition's offsets, as [`ChangelogEnds::of`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// The first offset still in the log.
    pub low: i64,
    /// The end of the committed records (the last stable offset).
    pub committed: i64,
    /// The end of every record, open transactions' included.
    pub all: i64,
}

/// Two clients, one for each end; shared by the threads that open stores.
pub struct ChangelogEnds {
    topic: String,
    configs: [ClientConfig; 2],
    clients: RwLock<Arc<Clients>>,
    timeout: Duration,
}

/// The clients in use, replaced whole.
struct Clients {
    committed: BaseConsumer,
    all: BaseConsumer,
}

impl ChangelogEnds {
    pub fn new(config: &KafkaConfig) -> Result<ChangelogEnds, KafkaError> {
        ChangelogEnds::with(
            config.changelog_topic(),
            [
                clients::changelog_ends_config(config, "read_committed"),
                clients::changelog_ends_config(config, "read_uncommitted"),
            ],
            WATERMARK_TIMEOUT,
        )
    }

    fn with(topic: String, configs: [ClientConfig; 2], timeout: Duration) -> Result<ChangelogEnds, KafkaError> {
        let clients = RwLock::new(Arc::new(create(&configs)?));
        Ok(ChangelogEnds { topic, configs, clients, timeout })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Both ends of `partition`, asked of its leader.
    pub fn of(&self, partition: i32) -> Result<Ends, KafkaError> {
        self.with_all(partition, self.all_end(partition)?)
    }

    /// The end of every record of `partition`, open transactions' included.
    pub fn all_end(&self, partition: i32) -> Result<i64, KafkaError> {
        let clients = self.current();
        Ok(self.ask(&clients, &clients.all, partition)?.1)
    }

    /// The ends of `partition` when the end of every record is known
    /// already: one request, for the committed records' end. (A
    /// transaction committed since `all` was read moves the committed end
    /// past it: every record's end is then at least that.)
    pub fn with_all(&self, partition: i32, all: i64) -> Result<Ends, KafkaError> {
        let clients = self.current();
        let (low, committed) = self.ask(&clients, &clients.committed, partition)?;
        Ok(Ends { low, committed, all: all.max(committed) })
    }

    fn current(&self) -> Arc<Clients> {
        Arc::clone(&self.clients.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// One client's watermarks of `partition`; the clients are replaced
    /// when it fails.
    fn ask(&self, clients: &Arc<Clients>, client: &BaseConsumer, partition: i32) -> Result<(i64, i64), KafkaError> {
        let result = client.fetch_watermarks(&self.topic, partition, self.timeout);
        if let Err(e) = &result {
            self.replace(clients, e);
        }
        result
    }

    /// Replaces `failed` with new clients, unless another thread already has.
    fn replace(&self, failed: &Arc<Clients>, error: &KafkaError) {
        let mut current = self.clients.write().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        warn!(
            error = %error,
            "a client that reads the changelog's ends failed a request: replacing them, to start again from \
             bootstrap.servers"
        );
        self.create_into(&mut current);
    }

    /// Replaces the clients now: another client of this process was found
    /// stranded (see [`crate::kafka::stranded`]), and these, made before the
    /// same broker restart, may be too; a request of theirs would wait its
    /// whole timeout before failing.
    pub fn renew(&self) {
        let mut current = self.clients.write().unwrap_or_else(|p| p.into_inner());
        self.create_into(&mut current);
    }

    fn create_into(&self, current: &mut Arc<Clients>) {
        match create(&self.configs) {
            Ok(fresh) => *current = Arc::new(fresh),
            Err(e) => warn!(error = %e, "cannot create new clients to read the changelog's ends"),
        }
    }
}

fn create(configs: &[ClientConfig; 2]) -> Result<Clients, KafkaError> {
    Ok(Clients { committed: configs[0].create()?, all: configs[1].create()? })
}

#[cfg(test)]
mod tests {
    use rdkafka::error::RDKafkaErrorCode;

    use super::*;

    /// A client config for a port nothing listens on (as in `runtime::partitions`' tests).
    fn nowhere(isolation: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1").set("isolation.level", isolation);
        c
    }

    #[test]
    fn clients_that_reach_no_broker_are_replaced_by_fresh_ones() {
        let ends = ChangelogEnds::with(
            "changelog".into(),
            [nowhere("read_committed"), nowhere("read_uncommitted")],
            Duration::from_millis(500),
        )
        .unwrap();
        let before = ends.current();
        let error = ends.of(0).unwrap_err();
        assert_eq!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown), "{error}");
        let after = ends.current();
        assert!(!Arc::ptr_eq(&before, &after), "the clients that reached no broker are still in use");
        // A thread that failed on the old clients meanwhile does not replace the new ones.
        ends.replace(&before, &error);
        assert!(Arc::ptr_eq(&after, &ends.current()));
    }
}
