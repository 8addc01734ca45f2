//! Whether a store found on disk can be caught up from its checkpoint, or
//! must be rebuilt from the changelog, or set aside. A store is a copy of
//! its changelog as of its checkpoint; catching it up replays the records
//! after that. That is right only when those records are all still there:
//!
//! - a store with state but no checkpoint was never a complete copy;
//! - a checkpoint before the changelog's first offset: the records since
//!   were deleted;
//! - a store last in step with its changelog longer ago than the
//!   changelog's `delete.retention.ms`: compaction may since have removed
//!   tombstones written after its checkpoint (a purged workflow would come
//!   back);
//! - a checkpoint beyond the changelog's end: the changelog lost records
//!   that the store holds (an unclean leader election, a topic deleted and
//!   created again). The store may be the only copy of those states, so it
//!   is never deleted: it is set aside, renamed beside the others, and the
//!   partition is rebuilt from what the changelog has. What to do with the
//!   copy is the operator's decision (the README says how to look into it).
//!
//! Pure: the caller reads the store, the changelog's ends and the clock.

use std::time::Duration;

use crate::kafka::changelog_ends::Ends;

/// What a store on disk knows of itself.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub checkpoint: Option<i64>,
    pub has_state: bool,
    /// When it was last known in step with its changelog (ms since 1970).
    pub synced_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Caught up from its checkpoint.
    Trusted,
    /// Deleted and rebuilt from the changelog, for this reason.
    Rebuild(String),
    /// Kept aside, and the partition rebuilt from the changelog, for this reason.
    SetAside(String),
}

/// The verdict on a store `found` with a changelog partition of `ends`,
/// whose tombstones are kept `delete_retention` (`None`: not known, then
/// only the offsets decide), at `now_ms`.
pub fn judge(found: Found, ends: Ends, delete_retention: Option<Duration>, now_ms: i64) -> Verdict {
    let Some(checkpoint) = found.checkpoint else {
        return if found.has_state {
            Verdict::Rebuild("it holds state but no checkpoint".into())
        } else {
            Verdict::Trusted
        };
    };
    if checkpoint > ends.all {
        return Verdict::SetAside(format!(
            "its checkpoint {checkpoint} is beyond the changelog's end {}: the changelog lost records this store \
             holds (an unclean leader election, or the topic was deleted and created again)",
            ends.all
        ));
    }
    if checkpoint < ends.low {
        return Verdict::Rebuild(format!("its checkpoint {checkpoint} is before the changelog's start {}", ends.low));
    }
    if let (Some(retention), Some(synced)) = (delete_retention, found.synced_at_ms) {
        let offline_ms = now_ms.saturating_sub(synced);
        // Records after the checkpoint: only they may have lost a tombstone.
        if checkpoint < ends.committed && offline_ms > retention.as_millis() as i64 {
            return Verdict::Rebuild(format!(
                "it was last in step with the changelog {}s ago, longer than the changelog's delete.retention.ms \
                 ({}s): compaction may have removed tombstones it never read",
                offline_ms / 1000,
                retention.as_secs()
            ));
        }
    }
    if found.has_state && found.synced_at_ms.is_none() && delete_retention.is_some() && checkpoint < ends.committed {
        // Written by a version that kept no time: how long it was away is unknown.
        return Verdict::Rebuild("it does not say when it was last in step with the changelog".into());
    }
    Verdict::Trusted
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: i64 = 1_800_000_000_000;

    fn ends(low: i64, committed: i64, all: i64) -> Ends {
        Ends { low, committed, all }
    }

    fn found(checkpoint: Option<i64>, has_state: bool, synced_ago_ms: Option<i64>) -> Found {
        Found { checkpoint, has_state, synced_at_ms: synced_ago_ms.map(|ago| NOW - ago) }
    }

    #[test]
    fn a_store_within_its_changelog_and_recently_in_step_is_caught_up() {
        assert_eq!(judge(found(Some(50), true, Some(1_000)), ends(0, 100, 100), Some(DAY), NOW), Verdict::Trusted);
        assert_eq!(judge(found(None, false, None), ends(0, 100, 100), Some(DAY), NOW), Verdict::Trusted, "empty");
        assert_eq!(
            judge(found(Some(100), true, Some(2 * DAY.as_millis() as i64)), ends(0, 100, 100), Some(DAY), NOW),
            Verdict::Trusted,
            "away long, but nothing was written since: nothing to miss"
        );
    }

    #[test]
    fn a_store_away_longer_than_the_tombstones_are_kept_is_rebuilt() {
        let away = 25 * 3_600_000;
        let v = judge(found(Some(50), true, Some(away)), ends(0, 100, 100), Some(DAY), NOW);
        assert!(matches!(&v, Verdict::Rebuild(why) if why.contains("delete.retention.ms")), "{v:?}");
        assert_eq!(judge(found(Some(50), true, Some(away)), ends(0, 100, 100), None, NOW), Verdict::Trusted);
        let unknown = judge(found(Some(50), true, None), ends(0, 100, 100), Some(DAY), NOW);
        assert!(matches!(&unknown, Verdict::Rebuild(why) if why.contains("does not say")), "{unknown:?}");
    }

    #[test]
    fn a_checkpoint_beyond_the_end_sets_the_store_aside_and_one_before_the_start_rebuilds() {
        let v = judge(found(Some(150), true, Some(0)), ends(0, 100, 100), Some(DAY), NOW);
        assert!(matches!(&v, Verdict::SetAside(why) if why.contains("beyond the changelog's end 100")), "{v:?}");
        let v = judge(found(Some(150), true, Some(0)), ends(0, 100, 160), Some(DAY), NOW);
        assert_eq!(v, Verdict::Trusted, "within the records of a transaction still open");
        let v = judge(found(Some(5), true, Some(0)), ends(10, 100, 100), Some(DAY), NOW);
        assert!(matches!(&v, Verdict::Rebuild(why) if why.contains("before the changelog's start 10")), "{v:?}");
        let v = judge(found(None, true, None), ends(0, 100, 100), Some(DAY), NOW);
        assert!(matches!(&v, Verdict::Rebuild(why) if why.contains("no checkpoint")), "{v:?}");
    }
}
