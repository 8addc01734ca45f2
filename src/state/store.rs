//! The state store of one input partition: a RocksDB database under
//! `state.dir/<application_id>/<partition>`.
//!
//! Three kinds of keys:
//! - `w<workflow id>`: the encoded workflow state (the same bytes as its changelog record);
//! - `t<due ms, big-endian u64><workflow id>`: a timer, so that deadlines and
//!   purges are found by a range scan. Timers are never deleted when a state
//!   changes; an entry that no longer matches its state's timer is stale and
//!   is dropped when it comes due, so that writes never read first;
//! - `m:checkpoint`: the changelog offset up to which this store is known
//!   good, written in the same batch as the data it covers;
//! - `m:synced_at`: when (wall clock, ms) the store was last known in step
//!   with its changelog: written with each checkpoint and at a clean close
//!   (see [`crate::state::trust`]);
//! - `m:clock`: the partition's clock (see [`crate::runtime::task`]) as of
//!   that commit, in the same batch;
//! - `m:timers`: what the timers were computed from (the deadlines and the
//!   retention configured), so that an edit of those re-arms them;
//! - `m:definition:<id, big-endian u64>`: a definition (steps and quorum)
//!   that states refer to by ID ([`crate::join::definition`]), written in
//!   the batch of the first state that refers to it, or before.
//!
//! Tuned for this access pattern:
//! - **No write-ahead log.** The changelog is the source of truth. Without
//!   the WAL a crash loses the memtables, but a batch and its checkpoint are
//!   always in the same memtable, and memtables are flushed in order, so the
//!   store on disk is always some earlier commit with its own checkpoint;
//!   the restore replays the changelog from there.
//! - **Bounded memory.** One block cache and one write-buffer manager,
//!   charged to that cache, are shared by every store of the process
//!   ([`StoreMemory`]): `state.memory_bytes` caps the whole.
//! - **Bloom filters**, because most reads are for workflows not yet stored,
//!   **partitioned** with the index, so that a large file's filter is read
//!   in small blocks that stay in the cache.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompactionStyle, DBCompressionType, Direction, Env, IteratorMode,
    Options, UniversalCompactOptions, WriteBatch, WriteBufferManager, WriteOptions, DB,
};
use tracing::warn;

use crate::join::{DefinitionId, Definitions};
use crate::state::codec;

const STATE_PREFIX: u8 = b'w';
const TIMER_PREFIX: u8 = b't';
const CHECKPOINT_KEY: &[u8] = b"m:checkpoint";
const CLOCK_KEY: &[u8] = b"m:clock";
const SYNCED_AT_KEY: &[u8] = b"m:synced_at";
const TIMERS_KEY: &[u8] = b"m:timers";
const DEFINITION_PREFIX: &[u8] = b"m:definition:";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at {path}: {source}{}", open_hint(.source))]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("state store at {path}: {source}")]
    Io { path: PathBuf, source: rocksdb::Error },
    #[error("cannot create the state directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot remove the state store at {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("cannot move the state store at {path} aside: {source}")]
    SetAside { path: PathBuf, source: std::io::Error },
}

impl StoreError {
    /// Whether the store's files are damaged (corrupt, truncated, missing),
    /// so that rebuilding it from the changelog is the cure. A store locked
    /// by another process is not damaged and must never be deleted.
    pub fn is_damage(&self) -> bool {
        let (StoreError::Open { source, .. } | StoreError::Io { source, .. }) = self else { return false };
        match source.kind() {
            rocksdb::ErrorKind::Corruption => true,
            rocksdb::ErrorKind::IOError => {
                let message = source.to_string();
                !message.contains("lock") && !message.contains("No space left")
            }
            _ => false,
        }
    }
}

/// What to look at when a store cannot be opened because it is locked.
fn open_hint(source: &rocksdb::Error) -> &'static str {
    if source.to_string().contains("lock") {
        " (is another junction instance using this state directory?)"
    } else {
        ""
    }
}

pub struct Store {
    db: DB,
    path: PathBuf,
    write_options: WriteOptions,
}

/// The memory every store of one process shares: a block cache, and a
/// write-buffer manager whose memtables are charged to it.
#[derive(Clone)]
pub struct StoreMemory {
    /// RocksDB's environment, its compaction threads at the lowest CPU
    /// priority: a large compaction must not starve the stream thread.
    env: Option<Env>,
    cache: Cache,
    write_buffers: WriteBufferManager,
    /// One store's memtable size.
    memtable_bytes: usize,
}

impl StoreMemory {
    /// `total` bytes for the block cache and memtables together, of which
    /// at most `write_buffers` for memtables.
    pub fn new(total: usize, write_buffers: usize) -> StoreMemory {
        StoreMemory::with_cache(Cache::new_lru_cache(total), write_buffers)
    }

    /// `cache` for the block cache and memtables together, of which at most
    /// `write_buffers` for memtables.
    fn with_cache(cache: Cache, write_buffers: usize) -> StoreMemory {
        let manager = WriteBufferManager::new_write_buffer_manager_with_cache(write_buffers, false, cache.clone());
        let env = Env::new().ok().map(|mut env| {
            env.lower_thread_pool_cpu_priority();
            env
        });
        StoreMemory { env, cache, write_buffers: manager, memtable_bytes: (write_buffers / 2).clamp(1 << 20, 64 << 20) }
    }
}

/// The size of each block of a file's partitioned filter and index.
const METADATA_BLOCK_BYTES: usize = 4096;

/// What one state (its key, value and timer) and one timer deletion take in
/// a store batch, about.
const BATCH_BYTES_PER_STATE: usize = 320;
const BATCH_BYTES_PER_TIMER: usize = 48;

/// The changes of one commit, applied atomically.
#[derive(Default)]
pub struct StoreBatch {
    batch: WriteBatch,
    /// The key being written, reused from one put to the next.
    key: Vec<u8>,
}

impl StoreBatch {
    /// A batch with room for about `states` states with their timers and
    /// `timers` timer deletions, so that it is not copied over and over as
    /// it grows.
    pub fn for_states(states: usize, timers: usize) -> StoreBatch {
        let bytes = states * BATCH_BYTES_PER_STATE + timers * BATCH_BYTES_PER_TIMER;
        StoreBatch { batch: WriteBatch::with_capacity_bytes(bytes), key: Vec::new() }
    }

    pub fn put_state(&mut self, workflow_id: &str, encoded: &[u8], timer_ms: Option<i64>) {
        state_key(&mut self.key, workflow_id);
        self.batch.put(&self.key, encoded);
        if let Some(due) = timer_ms {
            timer_key(&mut self.key, due, workflow_id);
            self.batch.put(&self.key, []);
        }
    }

    pub fn put_timer(&mut self, workflow_id: &str, due_ms: i64) {
        timer_key(&mut self.key, due_ms, workflow_id);
        self.batch.put(&self.key, []);
    }

    pub fn set_timers_basis(&mut self, basis: &str) {
        self.batch.put(TIMERS_KEY, basis.as_bytes());
    }

    pub fn delete_state(&mut self, workflow_id: &str) {
        state_key(&mut self.key, workflow_id);
        self.batch.delete(&self.key);
    }

    pub fn delete_timer(&mut self, timer: &Timer) {
        timer_key(&mut self.key, timer.due_ms, &timer.workflow_id);
        self.batch.delete(&self.key);
    }

    pub fn set_checkpoint(&mut self, changelog_offset: i64) {
        self.batch.put(CHECKPOINT_KEY, changelog_offset.to_be_bytes());
    }

    pub fn set_synced_at(&mut self, now_ms: i64) {
        self.batch.put(SYNCED_AT_KEY, now_ms.to_be_bytes());
    }

    pub fn set_clock(&mut self, clock_ms: i64) {
        self.batch.put(CLOCK_KEY, clock_ms.to_be_bytes());
    }

    /// Saves a definition states refer to: `encoded` as
    /// [`crate::state::codec::encode_definition`] writes it.
    pub fn put_definition(&mut self, id: DefinitionId, encoded: &[u8]) {
        self.key.clear();
        self.key.extend_from_slice(DEFINITION_PREFIX);
        self.key.extend_from_slice(&id.0.to_be_bytes());
        self.batch.put(&self.key, encoded);
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// A timer entry found due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub due_ms: i64,
    pub workflow_id: String,
}

impl Store {
    pub fn open(path: &Path, memory: &StoreMemory) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Create { path: path.to_path_buf(), source })?;
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&memory.cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // A file's filter and index in blocks of about 4 KiB, found through a
        // small top level kept in the cache: a store's files hold millions
        // of keys, and a filter for a whole file outgrew the room in its
        // shard of the block cache, so every read read it again from the
        // file and checked its checksum (half the stream thread's time in
        // the benchmark, which then fell behind). Files written before keep
        // theirs until a compaction rewrites them.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(METADATA_BLOCK_BYTES);
        table.set_pin_top_level_index_and_filter(true);
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_block_based_table_factory(&table);
        options.set_write_buffer_manager(&memory.write_buffers);
        if let Some(env) = &memory.env {
            options.set_env(env);
        }
        options.set_write_buffer_size(memory.memtable_bytes);
        // A full memtable waits for its flush only when this many are
        // already waiting: a restore writes faster than one flush at a time
        // (the write-buffer manager still bounds their memory).
        options.set_max_write_buffer_number(4);
        // Most reads are of new workflows (their first event), which no
        // memtable holds: a bloom filter on each memtable's keys answers
        // those without searching it.
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.02);
        options.set_compression_type(DBCompressionType::Lz4);
        // Write-heavy: every commit rewrites its workflows' states. Universal
        // compaction rewrites each byte fewer times than levels.
        options.set_compaction_style(DBCompactionStyle::Universal);
        // The newest tenth of the data (flushed memtables, compactions of
        // recent files only) is not compressed: compressing took about half
        // of a flush's CPU, and a restore flushes one memtable after another.
        let mut universal = UniversalCompactOptions::default();
        universal.set_compression_size_percent(90);
        options.set_universal_compaction_options(&universal);
        options.set_max_background_jobs(2);
        options.set_max_open_files(256);
        options.set_keep_log_file_num(2);
        let db = DB::open(&options, path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Ok(Store { db, path: path.to_path_buf(), write_options })
    }

    /// Opens a store to read it only (`junction validate`): no lock is
    /// taken, so a running junction may hold it meanwhile.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let db = DB::open_for_read_only(&Options::default(), path, false)
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        Ok(Store { db, path: path.to_path_buf(), write_options: WriteOptions::default() })
    }

    /// Deletes a store's files; it must not be open.
    pub fn destroy(path: &Path) -> Result<(), StoreError> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Remove { path: path.to_path_buf(), source }),
        }
    }

    fn io(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Io { path: self.path.clone(), source }
    }

    pub fn get_state(&self, workflow_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut key = Vec::with_capacity(1 + workflow_id.len());
        state_key(&mut key, workflow_id);
        self.db.get(key).map_err(|e| self.io(e))
    }

    pub fn checkpoint(&self) -> Result<Option<i64>, StoreError> {
        self.get_i64(CHECKPOINT_KEY)
    }

    /// When the store was last known in step with its changelog.
    pub fn synced_at(&self) -> Result<Option<i64>, StoreError> {
        self.get_i64(SYNCED_AT_KEY)
    }

    /// The store is in step with its changelog now (its partition is
    /// closed cleanly, everything committed): says so, and flushes.
    pub fn close_in_step(&self, now_ms: i64) -> Result<(), StoreError> {
        let mut batch = StoreBatch::default();
        batch.set_synced_at(now_ms);
        self.write(batch)?;
        self.flush()
    }

    /// Moves a store's files (closed) aside, beside the others, and returns
    /// where: `<dir>.set-aside-<now_ms>`. Nothing is deleted.
    pub fn set_aside(path: &Path, now_ms: i64) -> Result<PathBuf, StoreError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".set-aside-{now_ms}"));
        let aside = path.with_file_name(name);
        std::fs::rename(path, &aside).map_err(|source| StoreError::SetAside { path: path.to_path_buf(), source })?;
        Ok(aside)
    }

    /// The partition's clock as of the last commit saved, if one was.
    pub fn clock(&self) -> Result<Option<i64>, StoreError> {
        self.get_i64(CLOCK_KEY)
    }

    /// What the stored timers were computed from ([`StoreBatch::set_timers_basis`]).
    pub fn timers_basis(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(TIMERS_KEY).map_err(|e| self.io(e))
    }

    /// The definitions the stored states refer to. One that cannot be read
    /// is left out (its states take their type's configured definition),
    /// with a warning.
    pub fn definitions(&self) -> Result<Definitions, StoreError> {
        let mut out = Definitions::default();
        for item in self.db.iterator(IteratorMode::From(DEFINITION_PREFIX, Direction::Forward)) {
            let (key, value) = item.map_err(|e| self.io(e))?;
            let Some(id) = key.strip_prefix(DEFINITION_PREFIX) else { break };
            let id = <[u8; 8]>::try_from(id).ok().map(|b| DefinitionId(u64::from_be_bytes(b)));
            match (id, codec::decode_definition(&value)) {
                (Some(id), Ok(definition)) => out.insert(id, definition),
                (_, result) => warn!(
                    path = %self.path.display(),
                    error = ?result.err(),
                    "unreadable definition in the store; its workflows take their type's configured one"
                ),
            }
        }
        Ok(out)
    }

    fn get_i64(&self, key: &[u8]) -> Result<Option<i64>, StoreError> {
        let value = self.db.get(key).map_err(|e| self.io(e))?;
        Ok(value.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(i64::from_be_bytes))
    }

    /// Whether the store holds any workflow state at all.
    pub fn has_state(&self) -> bool {
        let mut it = self.db.iterator(IteratorMode::From(&[STATE_PREFIX], Direction::Forward));
        matches!(it.next(), Some(Ok((k, _))) if k.first() == Some(&STATE_PREFIX))
    }

    /// Up to `limit` timers due at or before `now_ms`, earliest first.
    pub fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let mut out = Vec::new();
        let it = self.db.iterator(IteratorMode::From(&[TIMER_PREFIX], Direction::Forward));
        for item in it {
            let (key, _) = item.map_err(|e| self.io(e))?;
            if key.first() != Some(&TIMER_PREFIX) || key.len() < 9 || out.len() >= limit {
                break;
            }
            let due = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes")) as i64;
            if due > now_ms {
                break;
            }
            out.push(Timer { due_ms: due, workflow_id: String::from_utf8_lossy(&key[9..]).into_owned() });
        }
        Ok(out)
    }

    /// Calls `f` with every workflow ID and its encoded state.
    pub fn for_each_state(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        for item in self.db.iterator(IteratorMode::From(&[STATE_PREFIX], Direction::Forward)) {
            let (key, value) = item.map_err(|e| self.io(e))?;
            if key.first() != Some(&STATE_PREFIX) {
                break;
            }
            f(&key[1..], &value);
        }
        Ok(())
    }

    /// Reads every entry, checking every block's checksum: damage that
    /// opening the store does not notice shows up here, before processing.
    /// `state` sees every encoded state on the way.
    pub fn verify(&self, mut state: impl FnMut(&[u8])) -> Result<(), StoreError> {
        for item in self.db.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.io(e))?;
            if key.first() == Some(&STATE_PREFIX) {
                state(&value);
            }
        }
        Ok(())
    }

    /// RocksDB's estimate of the store's size: live data plus memtables.
    pub fn estimated_bytes(&self) -> u64 {
        let property = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        property("rocksdb.estimate-live-data-size") + property("rocksdb.cur-size-all-mem-tables")
    }

    pub fn write(&self, batch: StoreBatch) -> Result<(), StoreError> {
        self.db.write_opt(batch.batch, &self.write_options).map_err(|e| self.io(e))
    }

    /// Flushes memtables so that a clean close leaves nothing to restore.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.io(e))
    }
}

fn state_key(k: &mut Vec<u8>, workflow_id: &str) {
    k.clear();
    k.push(STATE_PREFIX);
    k.extend_from_slice(workflow_id.as_bytes());
}

fn timer_key(k: &mut Vec<u8>, due_ms: i64, workflow_id: &str) {
    k.clear();
    k.push(TIMER_PREFIX);
    k.extend_from_slice(&(due_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(workflow_id.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_timers_and_checkpoint_are_written_together_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreMemory::new(8 << 20, 2 << 20)).unwrap();
        assert_eq!(store.checkpoint().unwrap(), None);
        assert_eq!(store.clock().unwrap(), None);
        assert!(!store.has_state());
        let mut b = StoreBatch::default();
        b.put_state("a", b"1", Some(300));
        b.put_state("b", b"2", Some(100));
        b.put_state("c", b"3", None);
        b.set_checkpoint(17);
        b.set_clock(-5);
        let definition = crate::join::Definition { steps: vec!["x".into()], quorum: 1, deadline_ms: None };
        b.put_definition(DefinitionId(u64::MAX), &codec::encode_definition(&definition));
        b.put_definition(DefinitionId(3), b"garbage");
        store.write(b).unwrap();
        assert_eq!(store.checkpoint().unwrap(), Some(17));
        assert_eq!(store.clock().unwrap(), Some(-5));
        let definitions = store.definitions().unwrap();
        assert_eq!((definitions.len(), definitions.get(DefinitionId(u64::MAX))), (1, Some(&definition)));
        assert_eq!(store.get_state("b").unwrap().as_deref(), Some(&b"2"[..]));
        let due: Vec<String> = store.due_timers(300, 10).unwrap().into_iter().map(|t| t.workflow_id).collect();
        assert_eq!(due, ["b", "a"]);
        assert_eq!(store.due_timers(299, 10).unwrap().len(), 1);
        assert_eq!(store.due_timers(300, 1).unwrap().len(), 1);
        assert_eq!(store.get_state("c").unwrap().as_deref(), Some(&b"3"[..]));
        drop(store);
        Store::destroy(dir.path()).unwrap();
        assert!(!dir.path().exists());
    }

    /// A store compacted into one file larger than a block-cache shard
    /// holds (8 MiB in 16 shards of 512 KiB): a filter for the whole file
    /// (about 750 KB for 600,000 keys) could not stay cached, and every
    /// read of it went to the file again, checksum and all (seen in the
    /// benchmark: half the stream thread's time after a compaction). The
    /// filter and the index are cut into blocks that each fit.
    #[test]
    fn a_file_larger_than_a_cache_shard_is_read_without_reading_its_filter_again_each_time() {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        use rocksdb::LruCacheOptions;
        let mut cache = LruCacheOptions::default();
        cache.set_capacity(8 << 20);
        // Sharded here, not as RocksDB would choose for this capacity.
        cache.set_num_shard_bits(4);
        let memory = StoreMemory::with_cache(Cache::new_lru_cache_opts(&cache), 2 << 20);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &memory).unwrap();
        let mut b = StoreBatch::default();
        for i in 0..300_000 {
            b.put_state(&format!("workflow-{i}"), b"state", Some(i));
        }
        store.write(b).unwrap();
        store.flush().unwrap();
        store.db.compact_range(None::<&[u8]>, None::<&[u8]>);
        // Spread through the states' keys, so that they meet every part of the filter.
        let absent: Vec<String> = (0..1_000).map(|i| format!("workflow-{}-absent", i * 300)).collect();
        let read_all = || absent.iter().for_each(|id| assert_eq!(store.get_state(id).unwrap(), None));
        // The first reads bring what they need into the cache.
        read_all();
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut perf = PerfContext::default();
        perf.reset();
        read_all();
        let (blocks, bytes) = (perf.metric(PerfMetric::BlockReadCount), perf.metric(PerfMetric::BlockReadByte));
        assert!(blocks < 50, "{blocks} blocks ({bytes} bytes) read from the file for 1,000 reads of absent workflows");
    }

    #[test]
    fn a_second_open_of_the_same_store_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), &StoreMemory::new(8 << 20, 2 << 20)).unwrap();
        let second = Store::open(dir.path(), &StoreMemory::new(8 << 20, 2 << 20));
        let Err(e @ StoreError::Open { .. }) = second else { panic!("the second open must fail") };
        assert!(e.to_string().contains("is another junction instance using this state directory?"), "{e}");
        assert!(!e.is_damage(), "a locked store is never deleted");
    }
}
