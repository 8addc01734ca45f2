//! Whether this instance is still the group member its partitions were
//! assigned to.
//!
//! librdkafka does not always say when it is not. A member whose session
//! ran out while its group was rebalancing (the process frozen, cut off from
//! the coordinator) has its member ID reset and joins again with a new one,
//! but the "lost" callback is skipped in a rebalance: it keeps the
//! partitions it held, and claims them as its own when it joins, though the
//! group gave them to another member meanwhile, which decided and committed
//! their records. Going on from its own stores and positions, it would
//! decide those records again, and once it is a member again its commits
//! are accepted: repeated outcomes, even under `exactly_once`.
//!
//! So the stream thread compares the member ID, at every assignment and
//! before every commit, with the one its held partitions were assigned to.
//! A change means they may have been someone else's since: they are given
//! up as lost, and the group joined again without them (Kafka Streams does
//! the same on a `TaskMigratedException`). The coordinator's refusal of a
//! commit for an unknown member means the same.
//!
//! Reading the member ID is a round trip to librdkafka's main thread: a
//! few tenths of a millisecond, more while its threads wait for a core. The
//! stream thread compares it before every commit and after every step of
//! the commit in flight, several times per poll, so a read is used again
//! for [`MEMBER_ID_FRESH`] ([`MemberId`]): a change is seen up to that much
//! (and one turn of the loop) later. What is sent to the coordinator is
//! checked against a fresh read all the same ([`crate::commit::Member`]):
//! each offset commit and each transaction's offsets, about one read per
//! commit. A transaction's offsets carry the member ID they were read
//! under, so none joins one under a new ID; an offset commit is sent by
//! librdkafka's main thread as the member it is then, so one still could
//! only when the ID changed in the moment between that read and the send.
//! Each assignment reads the member ID afresh.

use std::time::{Duration, Instant};

use crate::commit::still_assigned;

/// How long a member ID read is used again.
pub const MEMBER_ID_FRESH: Duration = Duration::from_millis(20);

/// The member ID that the partitions held now were assigned to.
#[derive(Debug, Default)]
pub struct Membership {
    assigned_to: Option<String>,
}

impl Membership {
    /// Whether partitions held under the member ID recorded at their
    /// assignment are held by another member ID `now` (a new ID, or none
    /// while librdkafka joins again), read by `now` only when that could
    /// say so. Nothing held, or nothing recorded: nothing changed.
    pub fn changed<'a>(&self, holding: bool, now: impl FnOnce() -> Option<&'a str>) -> bool {
        holding && !still_assigned(self.assigned_to.as_deref(), now)
    }

    /// Partitions were assigned to the member ID `now`.
    pub fn assigned(&mut self, now: Option<String>) {
        self.assigned_to = now;
    }

    /// Nothing is held any more.
    pub fn forget(&mut self) {
        self.assigned_to = None;
    }

    /// The member ID recorded at the assignment of the partitions held.
    pub fn assigned_to(&self) -> Option<&str> {
        self.assigned_to.as_deref()
    }
}

/// The consumer's member ID as last read, used again for [`MEMBER_ID_FRESH`].
#[derive(Debug, Default)]
pub struct MemberId {
    read: Option<(Instant, Option<String>)>,
}

impl MemberId {
    /// The member ID at `now`: the last one read, if read less than
    /// [`MEMBER_ID_FRESH`] before; otherwise `read` again.
    pub fn at(&mut self, now: Instant, read: impl FnOnce() -> Option<String>) -> Option<&str> {
        let fresh = matches!(&self.read, Some((at, _)) if now.saturating_duration_since(*at) < MEMBER_ID_FRESH);
        if !fresh {
            self.read = Some((now, read()));
        }
        self.read.as_ref().and_then(|(_, id)| id.as_deref())
    }

    /// The next [`MemberId::at`] reads it afresh.
    pub fn forget(&mut self) {
        self.read = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_id_read_is_used_again_only_while_fresh() {
        let mut id = MemberId::default();
        let t0 = Instant::now();
        assert_eq!(id.at(t0, || Some("a".into())), Some("a"));
        assert_eq!(id.at(t0 + MEMBER_ID_FRESH / 2, || Some("b".into())), Some("a"), "read again too soon");
        assert_eq!(id.at(t0 + MEMBER_ID_FRESH, || Some("b".into())), Some("b"), "read again once stale");
        assert_eq!(id.at(t0 + MEMBER_ID_FRESH, || None), Some("b"));
        id.forget();
        assert_eq!(id.at(t0 + MEMBER_ID_FRESH, || None), None, "forgotten: read afresh");
        assert_eq!(
            id.at(t0 + MEMBER_ID_FRESH * 2 - MEMBER_ID_FRESH / 4, || Some("c".into())),
            None,
            "no ID is kept too"
        );
        let mut calls = 0;
        id.at(t0 + MEMBER_ID_FRESH * 3, || {
            calls += 1;
            None
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_new_member_id_with_partitions_held_from_before_is_a_change() {
        let mut m = Membership::default();
        assert!(!m.changed(true, || Some("a")), "nothing recorded yet");
        m.assigned(Some("a".into()));
        assert!(!m.changed(true, || Some("a")));
        assert!(m.changed(true, || Some("b")), "joined again with a new ID");
        assert!(m.changed(true, || None), "the ID reset while joining again");
        assert!(!m.changed(false, || Some("b")), "nothing held, nothing to give up");
        m.forget();
        assert!(!m.changed(true, || Some("b")));
    }
}
