//! Input topics that gain partitions while junction runs. The group is
//! subscribed to the repartition topic alone (see [`crate::runtime::rebalance`]),
//! so nothing tells the consumer that an input topic grew: this thread asks
//! the cluster for the input topics' partition counts every
//! `topic.metadata.refresh.interval.ms` (librdkafka's own setting for its
//! metadata, 5 minutes unless set) and hands each change to the stream
//! thread, which then reads the new partitions of the home partitions it
//! holds ([`crate::runtime::partitions::Partitions::grow_inputs`]).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::Config;
use crate::kafka::topics;
use crate::ops::view::View;

/// Each input topic's partition count, in configuration order (`None`: not
/// in the metadata).
pub type Counts = Vec<Option<usize>>;

/// The shortest pause between two checks, whatever the setting.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often the thread looks at the shutdown flag while it waits.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

/// Starts the thread, which sends the counts each time they differ from
/// the last seen (`first`: those of start-up). It ends at shutdown or when
/// the receiver is dropped; none starts when the interval is negative.
pub fn spawn(config: Arc<Config>, view: Arc<View>, first: Counts) -> std::io::Result<Receiver<Counts>> {
    let (tx, rx) = mpsc::channel();
    let Some(interval) = config.kafka.metadata_refresh_interval() else { return Ok(rx) };
    let interval = interval.max(MIN_INTERVAL);
    std::thread::Builder::new().name("junction-inputs".into()).spawn(move || {
        let mut last = first;
        let mut client = None;
        loop {
            let until = Instant::now() + interval;
            while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                if view.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(left.min(SHUTDOWN_CHECK));
            }
            if client.is_none() {
                client = topics::InputCounts::new(&config.kafka)
                    .map_err(
                        |e| warn!(error = %e, "cannot make a client to watch the input topics; trying again later"),
                    )
                    .ok();
            }
            let Some(watcher) = &client else { continue };
            match watcher.now() {
                Ok(counts) if counts != last => {
                    if tx.send(counts.clone()).is_err() {
                        return;
                    }
                    last = counts;
                }
                Ok(_) => {}
                Err(e) => {
                    // With a new client: librdkafka may have stranded this one (`kafka::stranded`).
                    warn!(error = %e, "cannot check the input topics for new partitions; trying again later");
                    client = None;
                }
            }
        }
    })?;
    Ok(rx)
}
