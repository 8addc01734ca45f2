//! The threads that write restored batches to the stores
//! (`junction-restore`), so that reading the changelog and writing the
//! stores go on at the same time.

use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::state::codec;
use crate::state::restore_batch::RestoreBatch;
use crate::state::store::{Store, StoreError};

/// Writes waiting for a writer thread: reading stops when it is this far ahead.
const WRITES_QUEUED: usize = 2;

/// One store write for a writer thread.
pub struct Write {
    pub partition: i32,
    pub generation: u64,
    pub store: Arc<Store>,
    pub batch: RestoreBatch,
    pub last: bool,
}

/// What a writer thread reports: a partition's last write, or any write that failed.
pub struct Written {
    pub partition: i32,
    pub generation: u64,
    pub result: Result<(), StoreError>,
    /// After the last write: the workflows the restored store holds open.
    pub open: i64,
}

/// The threads that write restored batches: each partition's on the same
/// thread, in the order they were read. After a failed write a thread skips
/// that restore's later writes: a later checkpoint must never cover records
/// that are not in the store.
pub struct Writer {
    writes: Vec<SyncSender<Write>>,
    pub written: Receiver<Written>,
    threads: Vec<JoinHandle<()>>,
}

impl Writer {
    pub fn start(threads: usize) -> std::io::Result<Writer> {
        let (report, written) = mpsc::channel();
        let mut writer = Writer { writes: Vec::new(), written, threads: Vec::new() };
        for _ in 0..threads {
            let (writes, queue) = mpsc::sync_channel::<Write>(WRITES_QUEUED);
            let report = report.clone();
            let thread = std::thread::Builder::new().name("junction-restore".into()).spawn(move || {
                let mut failed = HashSet::new();
                for w in queue {
                    if failed.contains(&w.generation) {
                        continue;
                    }
                    let mut result = w.store.write(w.batch.into_store_batch());
                    // A restored store's open workflows are counted here, off the stream thread.
                    let mut open = 0;
                    if w.last && result.is_ok() {
                        result = w.store.for_each_state(|_, bytes| open += i64::from(codec::is_open(bytes)));
                    }
                    if result.is_err() {
                        failed.insert(w.generation);
                    }
                    if w.last || result.is_err() {
                        // The receiver is gone only when the restorer is.
                        let written = Written { partition: w.partition, generation: w.generation, result, open };
                        let _ = report.send(written);
                    }
                }
            })?;
            writer.writes.push(writes);
            writer.threads.push(thread);
        }
        Ok(writer)
    }

    pub fn write(&self, write: Write) {
        let thread = write.partition.unsigned_abs() as usize % self.writes.len();
        self.writes[thread].send(write).expect("the restore writer threads run while the restorer does");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.writes.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
