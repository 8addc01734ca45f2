//! The membership lease: how long this instance may still write what no
//! broker fences, its changelog and its stores under `at_least_once`.
//!
//! Under `exactly_once` a transaction carries the input offsets, and the
//! group coordinator refuses them from a member it no longer knows, so an
//! instance that lost its partitions commits nothing. Under
//! `at_least_once` nothing fences the changelog: an instance paused past
//! its session timeout (SIGSTOP, a stalled VM, a long GC of its host) or
//! cut off from the coordinator goes on where it stopped, and a changelog
//! record it sends then lands after its successor's, where compaction keeps
//! it. So the changelog and the stores are written only while the lease
//! holds: the coordinator accepted an offset commit sent less than
//! [`Lease::term`] ago (or assigned the partitions that recently). Every
//! commit of the pipeline renews it; after a pause, a writer waits until a
//! commit sent since (which the stream thread sends when asked,
//! [`Lease::is_wanted`]) is accepted, or the assignment is lost.
//!
//! The term and the producer's `message.timeout.ms` share what the session
//! leaves ([`budget`], [`split`]): a record queued just before a pause
//! either goes out before the coordinator can have given its partition
//! away, or expires in librdkafka's queue when the process goes on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a writer waiting for the lease looks again.
const WAIT_STEP: Duration = Duration::from_millis(1);

pub struct Lease {
    origin: Instant,
    /// Until when writes are allowed, in nanoseconds since `origin` (0: not now).
    until_ns: AtomicU64,
    term: Duration,
    /// How long the producer may hold a record before it gives up on it.
    message_timeout: Duration,
    /// When each offset commit still unanswered was sent, oldest first.
    sent: Mutex<VecDeque<Instant>>,
    /// A writer waits for a renewal.
    wanted: AtomicBool,
}

impl Lease {
    /// A lease for a member whose session leaves `budget` (see [`budget`]);
    /// it starts expired.
    pub fn new(budget: Duration) -> Lease {
        let (term, message_timeout) = split(budget);
        Lease::with_term(term, message_timeout)
    }

    fn with_term(term: Duration, message_timeout: Duration) -> Lease {
        Lease {
            origin: Instant::now(),
            until_ns: AtomicU64::new(0),
            term,
            message_timeout,
            sent: Mutex::new(VecDeque::new()),
            wanted: AtomicBool::new(false),
        }
    }

    pub fn term(&self) -> Duration {
        self.term
    }

    /// The producer's `message.timeout.ms` that goes with the term.
    pub fn message_timeout(&self) -> Duration {
        self.message_timeout
    }

    /// The membership held at `at` (an assignment, an accepted commit sent then).
    pub fn renew(&self, at: Instant) {
        let until = (at.saturating_duration_since(self.origin) + self.term).as_nanos() as u64;
        self.until_ns.fetch_max(until.max(1), Ordering::SeqCst);
        self.wanted.store(false, Ordering::SeqCst);
    }

    /// The membership is gone (the assignment was lost): nothing more until an assignment.
    pub fn end(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
        self.sent.lock().expect("lease lock").clear();
    }

    /// An offset commit is sent now; its answer comes with [`Lease::answered`].
    pub fn commit_sent(&self) {
        self.sent.lock().expect("lease lock").push_back(Instant::now());
    }

    /// The coordinator answered an offset commit. Answers may come in
    /// another order than their commits, so an accepted one renews the
    /// lease from the oldest commit still unanswered: never later than the
    /// commit it answers was sent.
    pub fn answered(&self, accepted: bool) {
        let oldest = self.sent.lock().expect("lease lock").pop_front();
        if let (true, Some(sent)) = (accepted, oldest) {
            self.renew(sent);
        }
    }

    /// Whether writes are allowed now.
    pub fn holds(&self) -> bool {
        let now = self.origin.elapsed().as_nanos() as u64;
        now < self.until_ns.load(Ordering::SeqCst)
    }

    /// Waits until the lease holds, asking for a renewal, or until
    /// `cancelled` is set or `deadline` passes. Whether it holds.
    pub fn wait(&self, cancelled: &AtomicBool, deadline: Instant) -> bool {
        loop {
            if self.holds() {
                return true;
            }
            if cancelled.load(Ordering::SeqCst) || Instant::now() >= deadline {
                return false;
            }
            self.wanted.store(true, Ordering::SeqCst);
            std::thread::sleep(WAIT_STEP);
        }
    }

    /// Whether a writer waits for a renewal: the stream thread then sends
    /// an offset commit (of offsets already committed) to renew it.
    pub fn is_wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst) && !self.holds()
    }

    /// Whether an offset commit is on its way, which may renew the lease.
    pub fn is_renewing(&self) -> bool {
        !self.sent.lock().expect("lease lock").is_empty()
    }
}

/// How long a member frozen from its last heartbeat stays known to the
/// coordinator: its session timeout less a heartbeat interval. The lease's
/// term and the producer's message timeout must fit in it together.
pub fn budget(session_timeout: Duration, heartbeat_interval: Duration) -> Duration {
    session_timeout.saturating_sub(heartbeat_interval)
}

/// The lease's term and the producer's `message.timeout.ms` for a
/// session of `budget`: a fifth and seven tenths of it. The message timeout
/// gets the larger share: a record that waits longer than it in the
/// producer's queue fails its commit, which a slow broker must not make
/// the rule; a short term only means that an idle instance confirms its
/// membership (one offset commit) before it writes again.
pub fn split(budget: Duration) -> (Duration, Duration) {
    (budget.mul_f64(0.2), budget.mul_f64(0.7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_for_its_term_from_the_commit_the_coordinator_accepted() {
        let lease = Lease::with_term(Duration::from_millis(200), Duration::from_millis(200));
        assert!(!lease.holds(), "a new lease starts expired");
        lease.commit_sent();
        lease.commit_sent();
        assert!(lease.is_renewing());
        lease.answered(false);
        assert!(!lease.holds(), "a refused commit renews nothing");
        lease.answered(true);
        assert!(lease.holds());
        assert!(!lease.is_renewing());
        std::thread::sleep(Duration::from_millis(250));
        assert!(!lease.holds(), "the term is counted from when the commit was sent");
        let cancelled = AtomicBool::new(false);
        assert!(!lease.wait(&cancelled, Instant::now() + Duration::from_millis(20)));
        assert!(lease.is_wanted(), "a writer that waited asks for a renewal");
        lease.renew(Instant::now());
        assert!(!lease.is_wanted() && lease.holds());
        lease.end();
        assert!(!lease.holds(), "a lost assignment ends it at once");
        cancelled.store(true, Ordering::SeqCst);
        assert!(!lease.wait(&cancelled, Instant::now() + Duration::from_secs(60)), "a cancelled wait ends");
    }

    #[test]
    fn an_older_renewal_never_shortens_a_newer_one() {
        let lease = Lease::with_term(Duration::from_millis(500), Duration::from_millis(500));
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        lease.renew(Instant::now());
        lease.renew(before);
        std::thread::sleep(Duration::from_millis(250));
        assert!(lease.holds());
    }

    #[test]
    fn the_term_and_the_message_timeout_fit_the_session_together() {
        let budget = budget(Duration::from_secs(6), Duration::from_secs(1));
        assert_eq!(budget, Duration::from_secs(5));
        let (term, message_timeout) = split(budget);
        assert!(term + message_timeout < budget, "{term:?} + {message_timeout:?} within {budget:?}");
        assert_eq!(split(Duration::from_secs(42)), (Duration::from_millis(8_400), Duration::from_millis(29_400)));
    }
}
