//! The state stage: each partition's workflow states, kept in a local
//! RocksDB store, backed up to the compacted changelog topic, and restored
//! from it. The runtime drives it through a narrow interface:
//!
//! - [`CachedStore`] ([`cache`]): read and change states through the record
//!   cache, and stage a commit's changes ([`StateChanges`]);
//! - [`write_batches`]: save staged changes once the changelog has them;
//! - [`prepare`] and [`Restorer`] ([`restore`]): open a store, check it
//!   (whether it can be trusted is [`trust`]'s to say), and catch it up
//!   from the changelog;
//! - [`Store`] ([`store`]): the RocksDB store itself, and [`codec`], the
//!   bytes a state is kept as (the same in the store and the changelog).
//!
//! It knows the shape of a state (to encode it) but none of the join's
//! rules: which timer a state gets is the runtime's to say ([`TimerOf`]).

pub mod cache;
pub mod codec;
pub mod restore;
pub mod restore_batch;
pub mod restore_writer;
pub mod store;
pub mod trust;

use std::collections::HashMap;
use std::sync::Arc;

pub use cache::{CachedStore, ChangelogKey, ChangelogRecord, StateChanges};
pub use restore::{prepare, Prepared, RestoreError, Restored, Restorer};
pub use store::{Store, StoreBatch, StoreError, StoreMemory, Timer};

/// When a stored state's timer falls, from its summary (`None`: no timer).
pub type TimerOf = Box<dyn Fn(&codec::Summary<'_>) -> Option<i64> + Send>;

/// The stores that failed to take their batch: (partition, why).
pub type StoreFailures = Vec<(i32, StoreError)>;

/// Writes each partition's store batch, with the changelog offset it
/// reaches as checkpoint. One store's failure does not stop the others';
/// returns the failures.
pub fn write_batches(
    batches: impl IntoIterator<Item = (i32, Arc<Store>, StoreBatch)>,
    changelog_last: &HashMap<i32, i64>,
) -> StoreFailures {
    let mut failed = Vec::new();
    let now_ms = crate::time::now_ms();
    for (partition, store, mut batch) in batches {
        if let Some(last) = changelog_last.get(&partition) {
            batch.set_checkpoint(last + 1);
            batch.set_synced_at(now_ms);
        }
        if !batch.is_empty() {
            if let Err(e) = store.write(batch) {
                failed.push((partition, e));
            }
        }
    }
    failed
}
