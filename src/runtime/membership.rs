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

/// The member ID that the partitions held now were assigned to.
#[derive(Debug, Default)]
pub struct Membership {
    assigned_to: Option<String>,
}

impl Membership {
    /// Whether partitions held under the member ID recorded at their
    /// assignment are held by another member ID `now` (a new ID, or none
    /// while librdkafka joins again). Nothing held: nothing changed.
    pub fn changed(&self, holding: bool, now: Option<&str>) -> bool {
        holding && self.assigned_to.is_some() && self.assigned_to.as_deref() != now
    }

    /// Partitions were assigned to the member ID `now`.
    pub fn assigned(&mut self, now: Option<String>) {
        self.assigned_to = now;
    }

    /// Nothing is held any more.
    pub fn forget(&mut self) {
        self.assigned_to = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_member_id_with_partitions_held_from_before_is_a_change() {
        let mut m = Membership::default();
        assert!(!m.changed(true, Some("a")), "nothing recorded yet");
        m.assigned(Some("a".into()));
        assert!(!m.changed(true, Some("a")));
        assert!(m.changed(true, Some("b")), "joined again with a new ID");
        assert!(m.changed(true, None), "the ID reset while joining again");
        assert!(!m.changed(false, Some("b")), "nothing held, nothing to give up");
        m.forget();
        assert!(!m.changed(true, Some("b")));
    }
}
