//! Refill planning (docs/design.md §4, member side): which epoch to ask the issuer for next, and how many tokens.
//!
//! A member keeps at least `low_water` tokens for every epoch the issuer signs for (the current one and, once it is
//! announced, the next, so the switch finds tokens ready). It never asks for more than its quota has left: the
//! issuer says how many are left in every answer (and in an over-quota refusal), and before any answer the roster's
//! quota is the bound. An epoch whose quota is spent is not asked for again; the next epoch brings a fresh quota.
//! A failed refill (issuer unreachable, busy) is retried with exponential backoff and jitter
//! ([`REFILL_BACKOFF_BASE_MS`] doubling to [`REFILL_BACKOFF_MAX_MS`]); a success, or the issuer becoming reachable,
//! resets it. Pure: the node's member actor and the simulator drive it.

use std::collections::BTreeMap;

use rand_core::RngCore;

use crate::backoff::Backoff;
use crate::borrow::NoToken;
use crate::issuer::IssueError;

/// First wait after a failed refill.
pub const REFILL_BACKOFF_BASE_MS: u64 = 2_000;
/// Longest wait between refill attempts.
pub const REFILL_BACKOFF_MAX_MS: u64 = 60_000;

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
}

impl RefillPlanner {
    /// Refill below `low_water` tokens, at most `batch` per request (at least 1).
    pub fn new(low_water: u32, batch: u32) -> Self {
        RefillPlanner {
            low_water,
            batch: batch.max(1),
            remaining: BTreeMap::new(),
            backoff: Backoff::new(REFILL_BACKOFF_BASE_MS, REFILL_BACKOFF_MAX_MS),
        }
    }

    /// Whether a refill may be attempted at `now` (not backing off).
    pub fn due(&self, now_ms: u64) -> bool {
        self.backoff.ready(now_ms)
    }

    /// A refill failed at `now`; returns the wait before the next try.
    pub fn failed(&mut self, now_ms: u64, rng: &mut impl RngCore) -> u64 {
        self.backoff.failed(now_ms, rng)
    }

    /// A refill succeeded, or the issuer became reachable: no more backing off.
    pub fn reset_backoff(&mut self) {
        self.backoff.succeeded();
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
    }
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
}
