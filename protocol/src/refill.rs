//! Refill planning (docs/design.md §4, member side): which epoch to ask the issuer for next, and how many tokens.
//!
//! A member keeps at least `low_water` tokens for every epoch the issuer signs for (the current one and, once it is
//! announced, the next, so the switch finds tokens ready). It never asks for more than its quota has left: the
//! issuer says how many are left in every answer (and in an over-quota refusal), and before any answer the roster's
//! quota is the bound. An epoch whose quota is spent is not asked for again; the next epoch brings a fresh quota.
//! A failed refill (issuer unreachable, busy) is retried with exponential backoff and jitter
//! ([`REFILL_BACKOFF_BASE_MS`] doubling to [`REFILL_BACKOFF_MAX_MS`]); a success resets it, and so does the issuer
//! becoming reachable after a refill could not reach it ([`RefillPlanner::issuer_reachable`]) — not after a
//! refusal, which a new connection does not change. A spend never resets it, and an over-quota answer is not a
//! failure: the member asks for what is left, or nothing until the next epoch ([`refusal_backs_off`]). Pure: the
//! node's member actor and the simulator drive it.
//!
//! **Constant-rate issuance** ([`Issuance::Schedule`], docs/design.md §9, issue 13). Refilling below the low-water
//! mark tells the issuer who spends: the heaviest borrower draws the most, and right after it spends. On the
//! schedule, a member instead draws the *whole* quota of every epoch it can, in batches at fixed times that do not
//! depend on what it spends: over the announcement lead before the epoch starts ([`crate::epoch::announce_lead_ms`]
//! of its length), step `k` of `n = ⌈quota / batch⌉` at `start − lead + (k + phase) · lead / n`, where the phase is
//! drawn once per member so a hundred members do not ask in the same instant. An epoch already running (the
//! group's first, a member that joins or restarts late, a rotation) is due whole at once, drawn at one batch per
//! [`SCHEDULE_PACE_MS`] from when the planner first saw it, within the issuer's per-member rate. Tokens left unspent
//! expire with their epoch; the cost is the issuer signing every quota in full.

use std::collections::BTreeMap;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::borrow::NoToken;
use crate::issuer::IssueError;

/// First wait after a failed refill.
pub const REFILL_BACKOFF_BASE_MS: u64 = 2_000;
/// Longest wait between refill attempts.
pub const REFILL_BACKOFF_MAX_MS: u64 = 60_000;

/// When a member draws tokens (`issuance` in `[privacy]`; see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Issuance {
    /// Below the low-water mark, as tokens are spent.
    #[default]
    Demand,
    /// The whole quota of every epoch, on a schedule that does not depend on spending.
    Schedule,
}

/// One epoch the member may draw tokens for, as [`RefillPlanner::next_at`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefillEpoch {
    /// The epoch.
    pub epoch: u32,
    /// This member's quota in it.
    pub quota: u32,
    /// Its start.
    pub starts_at_ms: u64,
    /// Its end (effective: a rotation may end it early).
    pub ends_at_ms: u64,
}

/// What happens to a pending batch the issuer refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchFate {
    /// It will never be signed: forget it (nothing was charged).
    Drop,
    /// Send it again later, unchanged.
    Keep,
}

/// One request to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefillStep {
    /// The epoch to ask for.
    pub epoch: u32,
    /// Tokens to ask for (1..=batch).
    pub count: u32,
}

/// What the member knows of its quota, per epoch, and when it may try again after a failure.
#[derive(Clone, Debug)]
pub struct RefillPlanner {
    low_water: u32,
    batch: u32,
    remaining: BTreeMap<u32, u32>,
    backoff: Backoff,
    /// The backoff runs because the last refill got no answer (rather than a refusal).
    unreachable: bool,
    issuance: Issuance,
    /// This member's place in the schedule's steps, in [0, 1).
    phase: f64,
    /// On the schedule: when this planner first saw each epoch (paces a catch-up, [`SCHEDULE_PACE_MS`]).
    first_seen: BTreeMap<u32, u64>,
}

/// On the schedule, an epoch already running (or announced late) is drawn [`SCHEDULE_BURST`] batches at once, then
/// one batch each this long from when the planner first saw it, not all at once. Two signable epochs at a time so
/// make at most 2 × 8 requests at once and 2 a second after, within the issuer's per-member rate
/// (`limits::Limits::issue`: 20 at once, 2 a second), which a member catching up therefore never trips.
pub const SCHEDULE_PACE_MS: u64 = 1_000;
/// Batches of one epoch a catching-up member draws at once before the pace applies (enough to borrow at once).
pub const SCHEDULE_BURST: u64 = 8;

/// Whether a refusal ends the refill with a backoff (true) or lets the member go on at once (false). An over-quota
/// refusal is an answer, not a failure: the member asks for what is left, or for nothing until the next epoch —
/// unless the issuer refused no more than it says is left, which would have the member ask again and again
/// without a pause. Every other refusal backs off (docs/design.md §4.4 step 7).
pub fn refusal_backs_off(err: &IssueError) -> bool {
    !matches!(err, IssueError::OverQuota { requested, remaining } if remaining < requested)
}

impl RefillPlanner {
    /// Refill below `low_water` tokens, at most `batch` per request (at least 1).
    pub fn new(low_water: u32, batch: u32) -> Self {
        RefillPlanner {
            low_water,
            batch: batch.max(1),
            remaining: BTreeMap::new(),
            backoff: Backoff::new(REFILL_BACKOFF_BASE_MS, REFILL_BACKOFF_MAX_MS),
            unreachable: false,
            issuance: Issuance::Demand,
            phase: 0.0,
            first_seen: BTreeMap::new(),
        }
    }

    /// Draws tokens as `issuance` says; the schedule's phase comes from `rng` (once).
    pub fn with_issuance(mut self, issuance: Issuance, rng: &mut impl RngCore) -> Self {
        self.issuance = issuance;
        self.phase = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self
    }

    /// How this planner draws tokens.
    pub fn issuance(&self) -> Issuance {
        self.issuance
    }

    /// The next request to make at `now`, by this planner's [`Issuance`]: on demand, [`RefillPlanner::next`];
    /// on the schedule, what the schedule has made due and the member has not drawn yet, current epoch first.
    pub fn next_at(
        &mut self,
        now_ms: u64,
        epochs: &[RefillEpoch],
        balance: impl Fn(u32) -> usize,
    ) -> Option<RefillStep> {
        if self.issuance == Issuance::Demand {
            let plain: Vec<(u32, u32)> = epochs.iter().map(|e| (e.epoch, e.quota)).collect();
            return self.next(&plain, balance);
        }
        for e in epochs {
            self.first_seen.entry(e.epoch).or_insert(now_ms);
        }
        epochs.iter().find_map(|e| {
            let left = self.remaining(e.epoch, e.quota);
            let drawn = e.quota - left;
            let due = self.scheduled(e, now_ms);
            (due > drawn && left > 0).then(|| RefillStep {
                epoch: e.epoch,
                count: self.batch.min(due - drawn).min(left),
            })
        })
    }

    /// On the schedule: when the next step of any of `epochs` falls due after `now` (for a caller that wakes up
    /// only when something changes, like the simulator). `None` on demand or when nothing more will fall due.
    pub fn next_due_ms(&self, now_ms: u64, epochs: &[RefillEpoch]) -> Option<u64> {
        if self.issuance == Issuance::Demand {
            return None;
        }
        epochs
            .iter()
            .filter_map(|e| {
                let (open, lead, steps) = self.steps(e);
                let k = self.steps_due(e, now_ms).min(self.paced(e, now_ms));
                let seen = self.first_seen.get(&e.epoch).copied().unwrap_or(now_ms);
                (k < steps)
                    .then(|| (open + step_offset(k, self.phase, lead, steps)).max(Self::paced_at(seen, k)))
            })
            .min()
    }

    /// Tokens of `e` the schedule has made due by `now` (all of them once it has started), at the pace.
    fn scheduled(&self, e: &RefillEpoch, now_ms: u64) -> u32 {
        let done = self.steps_due(e, now_ms).min(self.paced(e, now_ms));
        (done.saturating_mul(u64::from(self.batch))).min(u64::from(e.quota)) as u32
    }

    /// How many steps of `e` the pace allows by `now`: [`SCHEDULE_BURST`] at first sight, one more each
    /// [`SCHEDULE_PACE_MS`].
    fn paced(&self, e: &RefillEpoch, now_ms: u64) -> u64 {
        match self.first_seen.get(&e.epoch) {
            Some(&seen) if now_ms >= seen => (now_ms - seen) / SCHEDULE_PACE_MS + SCHEDULE_BURST,
            Some(_) => 0,
            None => SCHEDULE_BURST,
        }
    }

    /// When the pace allows step `k` of an epoch first seen at `seen`.
    fn paced_at(seen: u64, k: u64) -> u64 {
        seen.saturating_add(
            k.saturating_sub(SCHEDULE_BURST - 1)
                .saturating_mul(SCHEDULE_PACE_MS),
        )
    }

    /// How many steps of `e`'s schedule are due at `now`: the count of `k` with `open + offset(k) ≤ now`.
    fn steps_due(&self, e: &RefillEpoch, now_ms: u64) -> u64 {
        let (open, lead, steps) = self.steps(e);
        if now_ms < open {
            return 0;
        }
        let since = now_ms - open;
        if since >= lead {
            return steps;
        }
        // Estimate from the inverse, then settle on the exact count (the offsets are truncated).
        let x = since as f64 * steps as f64 / lead as f64 - self.phase;
        let mut k = if x < 0.0 {
            0
        } else {
            (x.floor() as u64 + 1).min(steps)
        };
        while k > 0 && step_offset(k - 1, self.phase, lead, steps) > since {
            k -= 1;
        }
        while k < steps && step_offset(k, self.phase, lead, steps) <= since {
            k += 1;
        }
        k
    }

    /// The schedule of `e`: when it opens, over how long (it closes at the epoch's start), in how many steps.
    fn steps(&self, e: &RefillEpoch) -> (u64, u64, u64) {
        let lead = crate::epoch::announce_lead_ms(e.ends_at_ms.saturating_sub(e.starts_at_ms));
        let open = e.starts_at_ms.saturating_sub(lead);
        let steps = u64::from(e.quota).div_ceil(u64::from(self.batch));
        (open, e.starts_at_ms - open, steps)
    }

    /// Whether a refill may be attempted at `now` (not backing off).
    pub fn due(&self, now_ms: u64) -> bool {
        self.backoff.ready(now_ms)
    }

    /// When a refill may be attempted next (0 or a past time: now).
    pub fn due_at_ms(&self) -> u64 {
        self.backoff.next_at_ms()
    }

    /// A refill failed at `now` with an answer (a refusal, an answer that cannot be used); returns the wait before
    /// the next try.
    pub fn failed(&mut self, now_ms: u64, rng: &mut impl RngCore) -> u64 {
        self.unreachable = false;
        self.backoff.failed(now_ms, rng)
    }

    /// A refill got no answer at `now` (the issuer unreachable, the request timed out or its connection closed);
    /// returns the wait before the next try. Unlike [`RefillPlanner::failed`], the issuer becoming reachable ends
    /// this backoff.
    pub fn unreachable(&mut self, now_ms: u64, rng: &mut impl RngCore) -> u64 {
        self.unreachable = true;
        self.backoff.failed(now_ms, rng)
    }

    /// A refill succeeded: no more backing off.
    pub fn reset_backoff(&mut self) {
        self.unreachable = false;
        self.backoff.succeeded();
    }

    /// The issuer became reachable (a connection to it opened). Ends the backoff only when the last refill got no
    /// answer: a refusal (busy, over quota, wrong epoch) is not changed by a new connection, and a spent quota is
    /// never asked for again anyway. Returns whether it ended a backoff, i.e. whether a refill may go at once.
    pub fn issuer_reachable(&mut self) -> bool {
        if !self.unreachable {
            return false;
        }
        self.reset_backoff();
        true
    }

    /// The next request to make, if any. `epochs` are the signable epochs with this member's quota in each
    /// (oldest first); `balance(epoch)` is the wallet's count for an epoch.
    pub fn next(&self, epochs: &[(u32, u32)], balance: impl Fn(u32) -> usize) -> Option<RefillStep> {
        epochs.iter().find_map(|&(epoch, quota)| {
            if balance(epoch) >= self.low_water as usize {
                return None;
            }
            let left = self.remaining(epoch, quota);
            (left > 0).then(|| RefillStep {
                epoch,
                count: self.batch.min(left),
            })
        })
    }

    /// Tokens left this epoch as far as the member knows (the roster's quota before the issuer has answered).
    pub fn remaining(&self, epoch: u32, quota: u32) -> u32 {
        self.remaining.get(&epoch).copied().unwrap_or(quota).min(quota)
    }

    /// Whether the quota of `epoch` is spent.
    pub fn exhausted(&self, epoch: u32, quota: u32) -> bool {
        self.remaining(epoch, quota) == 0
    }

    /// The issuer's answer (granted or over quota) said how many are left.
    pub fn record_remaining(&mut self, epoch: u32, remaining: u32) {
        self.remaining.insert(epoch, remaining);
    }

    /// The issuer refused a batch of `epoch`: records how many tokens it says are left, and says whether the
    /// pending batch can ever be signed. A refusal about this batch (over quota, wrong epoch or key, not a member,
    /// malformed) drops it — nothing was charged; a refusal about the issuer's state (busy, signing or storage
    /// failed, asked the wrong node) keeps it, to be sent again unchanged with the same request id.
    pub fn refused(&mut self, epoch: u32, err: &IssueError) -> BatchFate {
        match err {
            IssueError::OverQuota { remaining, .. } => {
                self.record_remaining(epoch, *remaining);
                BatchFate::Drop
            }
            IssueError::Busy
            | IssueError::SigningFailed
            | IssueError::StoreFailed
            | IssueError::NotIssuer => BatchFate::Keep,
            IssueError::UnknownMember
            | IssueError::MemberExpired { .. }
            | IssueError::WrongEpoch { .. }
            | IssueError::WrongKey
            | IssueError::EmptyBatch
            | IssueError::BatchTooLarge { .. }
            | IssueError::MalformedBlindedMessage { .. }
            | IssueError::RequestIdReused => BatchFate::Drop,
        }
    }

    /// Why the wallet has no token to spend: the current epoch's quota is spent (or no epoch runs), or it is merely
    /// empty until the next refill.
    pub fn no_token(
        &self,
        current_epoch: Option<u32>,
        quota: u32,
        next_epoch_starts_at_ms: Option<u64>,
    ) -> NoToken {
        match current_epoch {
            Some(e) if !self.exhausted(e, quota) => NoToken::Empty {
                refill_at_ms: Some(self.backoff.next_at_ms()),
            },
            _ => NoToken::QuotaExhausted {
                next_epoch_starts_at_ms,
            },
        }
    }

    /// Forgets epochs that are no longer signable.
    pub fn retain(&mut self, live: impl Fn(u32) -> bool) {
        self.remaining.retain(|e, _| live(*e));
        self.first_seen.retain(|e, _| live(*e));
    }
}

/// When step `k` of `steps` falls due after the schedule opens: `(k + phase) · lead / steps`, before `lead`.
fn step_offset(k: u64, phase: f64, lead: u64, steps: u64) -> u64 {
    ((k as f64 + phase) * lead as f64 / steps as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn never_asks_beyond_the_quota_and_stops_at_zero() {
        let mut p = RefillPlanner::new(5, 16);
        let epochs = [(1, 5)];
        // A quota below the batch: ask for exactly the quota.
        assert_eq!(p.next(&epochs, |_| 0), Some(RefillStep { epoch: 1, count: 5 }));
        p.record_remaining(1, 0);
        assert!(p.exhausted(1, 5));
        assert_eq!(p.next(&epochs, |_| 0), None, "quota spent: no more asking");
        // The issuer said 3 left: ask for 3.
        p.record_remaining(1, 3);
        assert_eq!(p.next(&epochs, |_| 1), Some(RefillStep { epoch: 1, count: 3 }));
        // A roster quota lowered below what the issuer last said bounds it.
        assert_eq!(p.remaining(1, 2), 2);
    }

    #[test]
    fn refusals_decide_the_batch_and_the_empty_wallet_reason() {
        let mut p = RefillPlanner::new(5, 16);
        let over = IssueError::OverQuota {
            requested: 16,
            remaining: 3,
        };
        assert_eq!(p.refused(1, &over), BatchFate::Drop);
        assert_eq!(p.remaining(1, 200), 3);
        assert_eq!(p.refused(1, &IssueError::Busy), BatchFate::Keep);
        assert_eq!(p.refused(1, &IssueError::StoreFailed), BatchFate::Keep);
        assert_eq!(
            p.refused(
                1,
                &IssueError::WrongEpoch {
                    requested: 1,
                    current: 2
                }
            ),
            BatchFate::Drop
        );
        assert_eq!(
            p.no_token(Some(1), 200, Some(9)),
            NoToken::Empty {
                refill_at_ms: Some(0)
            },
            "no failure yet: a refill is due at once"
        );
        let wait = p.failed(100, &mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
        assert_eq!(
            p.no_token(Some(1), 200, Some(9)),
            NoToken::Empty {
                refill_at_ms: Some(100 + wait)
            },
            "after a failure: when the backoff ends"
        );
        p.reset_backoff();
        p.record_remaining(1, 0);
        assert_eq!(
            p.no_token(Some(1), 200, Some(9)),
            NoToken::QuotaExhausted {
                next_epoch_starts_at_ms: Some(9)
            }
        );
        assert!(matches!(
            p.no_token(None, 200, None),
            NoToken::QuotaExhausted { .. }
        ));
    }

    #[test]
    fn failures_back_off_with_jitter_and_a_success_resets() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mut p = RefillPlanner::new(5, 8);
        assert!(p.due(0));
        let first = p.failed(0, &mut rng);
        assert!((1_000..=2_000).contains(&first));
        assert!(!p.due(first - 1) && p.due(first));
        let second = p.failed(first, &mut rng);
        assert!((2_000..=4_000).contains(&second));
        for _ in 0..10 {
            assert!(p.failed(0, &mut rng) <= REFILL_BACKOFF_MAX_MS);
        }
        p.reset_backoff();
        assert!(p.due(0));
    }

    #[test]
    fn only_an_unanswered_refill_ends_its_backoff_when_the_issuer_connects() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let mut p = RefillPlanner::new(5, 8);
        assert!(!p.issuer_reachable(), "nothing to end");
        assert!(p.due(0));
        // Busy (or any refusal): a connection changes nothing.
        let wait = p.failed(1_000, &mut rng);
        assert!(!p.issuer_reachable());
        assert!(!p.due(1_000 + wait - 1), "still backing off");
        assert_eq!(p.due_at_ms(), 1_000 + wait);
        // No answer: the issuer connecting ends the backoff, once.
        let wait = p.unreachable(5_000, &mut rng);
        assert!(!p.due(5_000 + wait - 1));
        assert!(p.issuer_reachable());
        assert!(p.due(5_000));
        assert!(
            !p.issuer_reachable(),
            "a second connection does not end anything more"
        );
        // A refusal after an unanswered try: the refusal is what counts.
        p.unreachable(6_000, &mut rng);
        let wait = p.failed(7_000, &mut rng);
        assert!(!p.issuer_reachable());
        assert!(!p.due(7_000 + wait - 1));
        // A success forgets an unanswered try.
        p.unreachable(9_000, &mut rng);
        p.reset_backoff();
        assert!(!p.issuer_reachable());
    }

    #[test]
    fn an_unreachable_issuer_is_asked_about_log2_times_in_a_minute() {
        // The node asks when the backoff ends and every gateway request in between leaves it alone: over 60 s of
        // an issuer that never answers, tries at 0, then after 1–2, 2–4, 4–8, 8–16, 16–32 s: 5 or 6.
        for seed in 0..50 {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let mut p = RefillPlanner::new(5, 8);
            let mut tries = 0;
            let mut waits = Vec::new();
            for now in (0..60_000).step_by(50) {
                // 20 gateway requests a second: each only asks whether a refill is due.
                if p.due(now) {
                    tries += 1;
                    waits.push(p.unreachable(now, &mut rng));
                }
            }
            assert!(
                (5..=6).contains(&tries),
                "seed {seed}: {tries} tries, waits {waits:?}"
            );
            assert!((REFILL_BACKOFF_BASE_MS / 2..=REFILL_BACKOFF_BASE_MS).contains(&waits[0]));
            // Below the cap each wait is at least the previous one's ceiling: the waits never shrink.
            for pair in waits[..5].windows(2) {
                assert!(pair[1] >= pair[0], "seed {seed}: {waits:?}");
            }
        }
        // Capped at a minute however long the outage.
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut p = RefillPlanner::new(5, 8);
        for _ in 0..30 {
            let w = p.unreachable(0, &mut rng);
            assert!(w <= REFILL_BACKOFF_MAX_MS);
        }
        assert!(p.unreachable(0, &mut rng) >= REFILL_BACKOFF_MAX_MS / 2);
    }

    #[test]
    fn a_spent_quota_is_not_asked_for_again_until_the_next_epoch() {
        let mut p = RefillPlanner::new(8, 16);
        let current = [(1, 4)];
        // Before any answer the roster's quota (4) bounds the ask.
        assert_eq!(p.next(&current, |_| 0), Some(RefillStep { epoch: 1, count: 4 }));
        // Granted with 0 left (or refused as over quota with 0 left, after a restart): not a failure, no backoff,
        // and nothing more to ask however often the wallet is found empty.
        p.record_remaining(1, 0);
        let over = IssueError::OverQuota {
            requested: 4,
            remaining: 0,
        };
        assert_eq!(p.refused(1, &over), BatchFate::Drop);
        assert!(!refusal_backs_off(&over));
        assert!(p.due(0));
        for _ in 0..100 {
            assert_eq!(p.next(&current, |_| 0), None);
        }
        assert_eq!(
            p.no_token(Some(1), 4, Some(60_000)),
            NoToken::QuotaExhausted {
                next_epoch_starts_at_ms: Some(60_000)
            }
        );
        // The next epoch, once announced, has a fresh quota; the spent one still asks for nothing.
        let both = [(1, 4), (2, 4)];
        assert_eq!(p.next(&both, |_| 0), Some(RefillStep { epoch: 2, count: 4 }));
        // Once epoch 1 is no longer signable it is forgotten, and epoch 2 is the current one.
        p.retain(|e| e == 2);
        assert_eq!(p.next(&[(2, 4)], |_| 0), Some(RefillStep { epoch: 2, count: 4 }));
    }

    #[test]
    fn which_refusals_back_off() {
        let over = |requested, remaining| IssueError::OverQuota { requested, remaining };
        assert!(
            !refusal_backs_off(&over(16, 0)),
            "quota spent: wait for the epoch, no backoff"
        );
        assert!(!refusal_backs_off(&over(16, 3)), "ask for the 3 left at once");
        assert!(
            refusal_backs_off(&over(3, 3)),
            "refused what it says is left: asking again at once would loop"
        );
        assert!(refusal_backs_off(&over(3, 7)));
        for e in [
            IssueError::Busy,
            IssueError::StoreFailed,
            IssueError::SigningFailed,
            IssueError::NotIssuer,
            IssueError::UnknownMember,
            IssueError::WrongKey,
            IssueError::RequestIdReused,
        ] {
            assert!(refusal_backs_off(&e), "{e}");
        }
    }

    #[test]
    fn fills_the_current_epoch_first_then_the_next() {
        let mut p = RefillPlanner::new(5, 8);
        let epochs = [(1, 200), (2, 200)];
        assert_eq!(p.next(&epochs, |_| 0), Some(RefillStep { epoch: 1, count: 8 }));
        assert_eq!(
            p.next(&epochs, |e| if e == 1 { 8 } else { 0 }),
            Some(RefillStep { epoch: 2, count: 8 })
        );
        assert_eq!(p.next(&epochs, |_| 5), None, "both at the low-water mark");
        // Epoch 1's quota is spent: the next epoch still fills.
        p.record_remaining(1, 0);
        assert_eq!(p.next(&epochs, |_| 0), Some(RefillStep { epoch: 2, count: 8 }));
        p.retain(|e| e == 2);
        assert_eq!(p.remaining(1, 200), 200, "forgotten once retired");
    }

    /// Draws like the member actor and the simulator: takes each step, the issuer granting it.
    fn drain(p: &mut RefillPlanner, now: u64, epochs: &[RefillEpoch], balance: usize) -> Vec<RefillStep> {
        let mut got = vec![];
        while let Some(step) = p.next_at(now, epochs, |_| balance) {
            let e = epochs.iter().find(|e| e.epoch == step.epoch).unwrap();
            let left = p.remaining(step.epoch, e.quota) - step.count;
            p.record_remaining(step.epoch, left);
            got.push(step);
        }
        got
    }

    #[test]
    fn on_the_schedule_the_whole_quota_is_drawn_over_the_lead_whatever_is_spent() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        // Epoch 2 runs 3 000 s from t = 3 000 s: its lead is 1 000 s, from 2 000 s. Quota 100 in batches of 16: 7
        // steps, 16 · 6 + 4.
        let next = RefillEpoch {
            epoch: 2,
            quota: 100,
            starts_at_ms: 3_000_000,
            ends_at_ms: 6_000_000,
        };
        let mut p = RefillPlanner::new(5, 16).with_issuance(Issuance::Schedule, &mut rng);
        assert_eq!(p.issuance(), Issuance::Schedule);
        assert!(drain(&mut p, 1_999_999, &[next], 0).is_empty(), "not open yet");
        let mut drawn = 0;
        let mut at = 1_999_999;
        let mut times = vec![];
        // The same draws whatever the wallet holds: 0 tokens or 10 000.
        let mut twin = RefillPlanner::new(5, 16).with_issuance(Issuance::Schedule, &mut rng);
        twin.phase = p.phase;
        while let Some(due) = p.next_due_ms(at, &[next]) {
            assert!(due > at && due < 3_000_000, "{due}");
            at = due;
            let got = drain(&mut p, at, &[next], 0);
            assert_eq!(got, drain(&mut twin, at, &[next], 10_000));
            assert_eq!(got.len(), 1, "one batch per step");
            drawn += got[0].count;
            times.push(at);
        }
        assert_eq!(drawn, 100);
        assert_eq!(times.len(), 7);
        // Evenly spaced: one step every lead / 7.
        for w in times.windows(2) {
            assert!((142_000..=143_000).contains(&(w[1] - w[0])), "{times:?}");
        }
        assert!(
            drain(&mut p, 3_500_000, &[next], 0).is_empty(),
            "nothing more once drawn"
        );
        assert_eq!(p.next_due_ms(3_500_000, &[next]), None);
    }

    #[test]
    fn on_the_schedule_an_epoch_already_running_is_due_whole_and_a_restart_relearns_what_was_drawn() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(10);
        let current = RefillEpoch {
            epoch: 1,
            quota: 40,
            starts_at_ms: 0,
            ends_at_ms: 600_000,
        };
        let mut p = RefillPlanner::new(5, 4).with_issuance(Issuance::Schedule, &mut rng);
        // Due whole (10 steps of 4), drawn at the pace: 8 batches at first sight, one more each second.
        assert_eq!(drain(&mut p, 10_000, &[current], 0).len(), 8);
        assert_eq!(p.next_due_ms(10_000, &[current]), Some(10_000 + SCHEDULE_PACE_MS));
        assert!(drain(&mut p, 10_999, &[current], 0).is_empty());
        assert_eq!(
            drain(&mut p, 11_000, &[current], 0),
            [RefillStep { epoch: 1, count: 4 }]
        );
        assert_eq!(
            drain(&mut p, 15_000, &[current], 0),
            [RefillStep { epoch: 1, count: 4 }]
        );
        assert_eq!(p.next_due_ms(15_000, &[current]), None);
        assert_eq!(p.remaining(1, 40), 0);
        // After a restart the planner has forgotten; the first answer tells it what is left.
        let mut again = RefillPlanner::new(5, 16).with_issuance(Issuance::Schedule, &mut rng);
        assert_eq!(
            again.next_at(20_000, &[current], |_| 40),
            Some(RefillStep { epoch: 1, count: 16 })
        );
        again.record_remaining(1, 0);
        assert_eq!(again.next_at(20_000, &[current], |_| 40), None);
        // On demand, the same planner asks only below its low-water mark.
        let mut demand = RefillPlanner::new(5, 16);
        assert_eq!(demand.next_at(10_000, &[current], |_| 5), None);
        assert_eq!(
            demand.next_at(10_000, &[current], |_| 4),
            Some(RefillStep { epoch: 1, count: 16 })
        );
        assert_eq!(demand.next_due_ms(0, &[current]), None);
    }

    #[test]
    fn the_steps_due_match_their_offsets_for_any_phase() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        for quota in [1, 7, 100, 1_000] {
            let e = RefillEpoch {
                epoch: 1,
                quota,
                starts_at_ms: 1_000_000,
                ends_at_ms: 1_000_000 + 3 * 7_777,
            };
            let p = RefillPlanner::new(5, 3).with_issuance(Issuance::Schedule, &mut rng);
            let (open, lead, steps) = p.steps(&e);
            for now in (open.saturating_sub(10)..open + lead + 10).step_by(13) {
                let slow = (0..steps)
                    .filter(|&k| open + step_offset(k, p.phase, lead, steps) <= now)
                    .count() as u64;
                assert_eq!(p.steps_due(&e, now), slow, "quota {quota} at {now}");
            }
        }
    }
}
