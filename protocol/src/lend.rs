//! The lender's rules (docs/design.md §4 redemption, §6 step 4) as a state machine: the order of the checks a lender makes
//! before and after its upstream call, and its bounded idempotency cache.
//!
//! For each opened request the node and the simulator both go down the same ladder:
//! 1. [`LendLadder::admit`]: a request id already answered is answered again from the cache (no second upstream
//!    call); one being served now is joined (at most `max_waiters` times, then refused as busy); beyond
//!    `max_in_flight` concurrent lends the request is refused as busy — all before any claim.
//! 2. [`headroom`]: no capacity beyond the member's reserve → refused before any claim, with the window's reset as
//!    `Retry-After`, so the token stays unspent.
//! 3. The driver redeems the token and claims it durably ([`crate::redeemer::Redeemer::redeem`]); a rejection is
//!    answered with its label, nothing claimed.
//! 4. The driver calls its upstream; [`after_upstream`] says what the answer means: 429 or 503 (no work done) or an
//!    upstream that could not be reached → **release the claim** and refuse, so the token can be spent elsewhere;
//!    any other status → served (the token is spent); a failure after the upstream started → spent, failed.
//! 5. [`LendLadder::finish`] caches the answer for `ttl_ms` and wakes the joined waiters.
//!
//! Idempotency is keyed by the **request id** (random per attempt, reused only by the borrower's own retry), not
//! by the request's content: two members sending the same prompt must not get each other's answer, nor be linked.

use std::collections::{HashMap, VecDeque};

/// How long a finished lend's answer is kept for retries.
pub const DEFAULT_TTL_MS: u64 = 5 * 60_000;
/// Answers kept at most (about five minutes of three lends a second).
pub const DEFAULT_CAPACITY: usize = 1024;
/// Lends served at once at most.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Retries of one request id that may wait for its answer at once (a borrower retries once; more is abuse).
pub const DEFAULT_MAX_WAITERS: usize = 4;

/// Ladder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LendConfig {
    /// Answer cache lifetime.
    pub ttl_ms: u64,
    /// Answer cache size.
    pub capacity: usize,
    /// Concurrent lends.
    pub max_in_flight: usize,
    /// Waiters per in-flight request id.
    pub max_waiters: usize,
}

impl Default for LendConfig {
    fn default() -> Self {
        LendConfig {
            ttl_ms: DEFAULT_TTL_MS,
            capacity: DEFAULT_CAPACITY,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_waiters: DEFAULT_MAX_WAITERS,
        }
    }
}

/// Step 1's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission<R> {
    /// Answered before: send this again.
    Replay(R),
    /// Being served: wait for its answer (the driver parks the reply channel until [`LendLadder::finish`]).
    Join,
    /// Refuse before any claim: too many lends in flight, or too many waiters on this request id.
    Busy,
    /// New: go down the ladder; call [`LendLadder::finish`] with its answer.
    Proceed,
}

#[derive(Clone, Debug)]
enum Entry<R> {
    InFlight { waiters: usize },
    Done { response: R, expires_ms: u64 },
}

/// The lender's idempotency cache and concurrency bound.
#[derive(Clone, Debug)]
pub struct LendLadder<R> {
    cfg: LendConfig,
    entries: HashMap<[u8; 16], Entry<R>>,
    /// Finished ids in finishing order, for expiry and the capacity bound.
    order: VecDeque<[u8; 16]>,
    in_flight: usize,
}

impl<R: Clone> LendLadder<R> {
    /// An empty ladder.
    pub fn new(cfg: LendConfig) -> Self {
        LendLadder {
            cfg,
            entries: HashMap::new(),
            order: VecDeque::new(),
            in_flight: 0,
        }
    }

    /// Lends being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Answers cached.
    pub fn cached(&self) -> usize {
        self.order.len()
    }

    /// Step 1 for a request id at `now`.
    pub fn admit(&mut self, request_id: [u8; 16], now_ms: u64) -> Admission<R> {
        self.expire(now_ms);
        match self.entries.get_mut(&request_id) {
            Some(Entry::Done { response, .. }) => Admission::Replay(response.clone()),
            Some(Entry::InFlight { waiters }) if *waiters < self.cfg.max_waiters => {
                *waiters += 1;
                Admission::Join
            }
            Some(Entry::InFlight { .. }) => Admission::Busy,
            None if self.in_flight >= self.cfg.max_in_flight => Admission::Busy,
            None => {
                self.in_flight += 1;
                self.entries.insert(request_id, Entry::InFlight { waiters: 0 });
                Admission::Proceed
            }
        }
    }

    /// Step 5: the answer to a request admitted with [`Admission::Proceed`]. Returns how many joined waiters to
    /// answer with it too.
    pub fn finish(&mut self, request_id: [u8; 16], response: R, now_ms: u64) -> usize {
        let waiters = match self.entries.get(&request_id) {
            Some(Entry::InFlight { waiters }) => *waiters,
            _ => return 0,
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        self.entries.insert(
            request_id,
            Entry::Done {
                response,
                expires_ms: now_ms.saturating_add(self.cfg.ttl_ms),
            },
        );
        self.order.push_back(request_id);
        while self.order.len() > self.cfg.capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
        waiters
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(id) = self.order.front() {
            match self.entries.get(id) {
                Some(Entry::Done { expires_ms, .. }) if *expires_ms > now_ms => break,
                Some(Entry::InFlight { .. }) => break,
                _ => {
                    let id = *id;
                    self.order.pop_front();
                    self.entries.remove(&id);
                }
            }
        }
    }
}

/// Step 2: the lender's own capacity after its reserve. `Err(retry_after_ms)` refuses before any claim.
pub fn headroom(remaining: u64, reserve: u64, resets_at_ms: u64, now_ms: u64) -> Result<(), u64> {
    if remaining > reserve {
        Ok(())
    } else {
        Err(resets_at_ms.saturating_sub(now_ms).max(1_000))
    }
}

/// What the upstream said, as far as the ladder cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// An HTTP answer with this status.
    Status(u16),
    /// Nothing reached the upstream (connect error, bad address).
    Unreachable,
    /// It failed after the request reached it (reset, timeout mid-answer).
    Failed,
}

/// Step 4's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamVerdict {
    /// Return the upstream's answer; the token is spent.
    Served,
    /// No work was done: release the claim and refuse with this status (the borrower tries elsewhere, same token).
    ReleaseAndRefuse {
        /// The status to report (`502` for an unreachable upstream).
        status: u16,
    },
    /// The upstream failed after it got the request: the token stays spent.
    Failed,
}

/// Step 4: what an upstream outcome means for the claim.
pub fn after_upstream(outcome: UpstreamOutcome) -> UpstreamVerdict {
    match outcome {
        // Rate limited, unavailable, overloaded (Anthropic's 529): refused before any work.
        UpstreamOutcome::Status(s @ (429 | 503 | 529)) => UpstreamVerdict::ReleaseAndRefuse { status: s },
        UpstreamOutcome::Status(_) => UpstreamVerdict::Served,
        UpstreamOutcome::Unreachable => UpstreamVerdict::ReleaseAndRefuse { status: 502 },
        UpstreamOutcome::Failed => UpstreamVerdict::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> LendLadder<&'static str> {
        LendLadder::new(LendConfig {
            ttl_ms: 1_000,
            capacity: 2,
            max_in_flight: 2,
            max_waiters: 1,
        })
    }

    #[test]
    fn a_request_id_is_served_once_and_replayed_until_it_expires() {
        let mut l = ladder();
        assert_eq!(l.admit([1; 16], 0), Admission::Proceed);
        assert_eq!(
            l.admit([1; 16], 10),
            Admission::Join,
            "a retry joins the one in flight"
        );
        assert_eq!(l.admit([1; 16], 10), Admission::Busy, "waiters are bounded");
        assert_eq!(l.finish([1; 16], "answer", 100), 1, "one waiter to wake");
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.admit([1; 16], 500), Admission::Replay("answer"));
        assert_eq!(
            l.admit([1; 16], 1_100),
            Admission::Proceed,
            "expired: served anew"
        );
    }

    #[test]
    fn concurrency_and_the_cache_are_bounded() {
        let mut l = ladder();
        assert_eq!(l.admit([1; 16], 0), Admission::Proceed);
        assert_eq!(l.admit([2; 16], 0), Admission::Proceed);
        assert_eq!(l.admit([3; 16], 0), Admission::Busy, "two in flight at most");
        l.finish([1; 16], "a", 0);
        l.finish([2; 16], "b", 0);
        assert_eq!(l.admit([3; 16], 0), Admission::Proceed);
        l.finish([3; 16], "c", 0);
        assert_eq!(l.cached(), 2, "the oldest answer left the cache");
        assert_eq!(l.admit([1; 16], 0), Admission::Proceed);
        assert_eq!(l.finish([9; 16], "never admitted", 0), 0);
    }

    #[test]
    fn headroom_keeps_the_reserve_and_says_when_to_retry() {
        assert_eq!(headroom(5, 2, 60_000, 0), Ok(()));
        assert_eq!(headroom(2, 2, 60_000, 10_000), Err(50_000));
        assert_eq!(headroom(0, 0, 0, 10_000), Err(1_000), "at least a second");
    }

    #[test]
    fn only_work_done_spends_the_token() {
        assert_eq!(
            after_upstream(UpstreamOutcome::Status(200)),
            UpstreamVerdict::Served
        );
        assert_eq!(
            after_upstream(UpstreamOutcome::Status(500)),
            UpstreamVerdict::Served
        );
        assert_eq!(
            after_upstream(UpstreamOutcome::Status(429)),
            UpstreamVerdict::ReleaseAndRefuse { status: 429 }
        );
        assert_eq!(
            after_upstream(UpstreamOutcome::Status(503)),
            UpstreamVerdict::ReleaseAndRefuse { status: 503 }
        );
        assert_eq!(
            after_upstream(UpstreamOutcome::Unreachable),
            UpstreamVerdict::ReleaseAndRefuse { status: 502 }
        );
        assert_eq!(after_upstream(UpstreamOutcome::Failed), UpstreamVerdict::Failed);
    }
}
