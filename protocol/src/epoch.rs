//! Epochs (docs/design.md §8): the verified epoch announcements a node holds, and every time rule that follows from them.
//!
//! An epoch is a span of time with its own issuer key and roster snapshot, announced and signed by the admin
//! *ahead* of its start ([`announce_lead_ms`] before the previous one ends), so members refill for it in time.
//! [`EpochBook`] keeps the epochs that still matter — the previous one while its grace period runs, the current one,
//! the announced next one — and answers, for a given `now`:
//! - [`EpochBook::current`]: the epoch whose span holds `now`;
//! - [`EpochBook::accepts`]: whether a **lender** takes a token of epoch `e`: from its start (less the clock-skew
//!   allowance, so a borrower whose clock runs a little ahead is not refused) until its end plus its grace period;
//! - [`EpochBook::spendable`]: whether a **borrower** spends a token of `e`: from its start until its end plus grace,
//!   less a safety margin so a token is never sent to a lender in the last instant it would take it;
//! - [`EpochBook::signable`]: whether the **issuer** signs for `e`: the current and the announced next epoch;
//! - [`EpochBook::retire`]: which epochs are over for good (their tokens, spent-set entries and quota records go).
//!
//! Announcements are checked before they are adopted, and refused with a typed [`EpochError`]: a bad signature,
//! an epoch number that goes backwards or skips ahead while the newest known epoch still runs, an epoch that starts
//! before the previous one, a next-epoch key equal to one already in use, and — the privacy alarm of docs/design.md §4 — a
//! second, different key for an epoch already known (a member-specific key would unmask that member).
//!
//! **Rotation.** An immediate rotation (`group remove --rotate`) re-announces the current epoch with an end of
//! *now* and no grace, and announces the next epoch starting now. A next epoch may therefore start before the
//! previous one's announced end: the previous epoch then ends where the next begins ([`EpochInfo::effective_end_ms`]).
//! A re-announcement of a known epoch must carry the same key and start, may only move the end earlier and shorten
//! the grace, and never carries an older roster; an end at or before the start cancels an epoch that never began.
//! The roster inside an announcement is the snapshot taken when the epoch was made; roster changes travel on
//! their own (a signed roster message).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blind_rsa::PublicKey;
use crate::group::{GroupError, SignedEpochAnnouncement};
use crate::ids::{GroupId, PeerId};

/// Default epoch length: 7 days.
pub const DEFAULT_EPOCH_MS: u64 = 7 * DAY_MS;
/// Default grace period after an epoch ends: 24 hours (never longer than the epoch itself).
pub const DEFAULT_GRACE_MS: u64 = DAY_MS;
/// Shortest epoch: 5 seconds (tests and demos; key generation and gossip need a few seconds of lead).
pub const MIN_EPOCH_MS: u64 = 5_000;
/// Longest epoch: 366 days.
pub const MAX_EPOCH_MS: u64 = 366 * DAY_MS;
/// Longest lead time between an announcement and the epoch's start: 24 hours.
pub const MAX_LEAD_MS: u64 = DAY_MS;
/// Epochs kept at most. With grace ≤ epoch length, at most previous + current + next are live; the rest of this
/// bound absorbs a burst of rotations. Beyond it the oldest epoch is dropped (its tokens were long refused).
pub const MAX_EPOCHS: usize = 8;
/// A borrower stops spending a token this long (at most half the grace) before lenders stop taking it.
pub const SPEND_MARGIN_MS: u64 = 60_000;
const DAY_MS: u64 = 86_400_000;

/// How long before an epoch of `length_ms` ends the admin announces the next one: a third of the length, at most a
/// day (a day before a 7-day epoch ends; about 7 s before a 20 s one).
pub fn announce_lead_ms(length_ms: u64) -> u64 {
    (length_ms / 3).min(MAX_LEAD_MS)
}

/// Why an epoch announcement was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EpochError {
    /// Signature, group or issuer key invalid.
    #[error("epoch announcement invalid: {0}")]
    Invalid(#[from] GroupError),
    /// Older than every epoch this node still holds.
    #[error("epoch {got} is older than the epochs held (newest {newest})")]
    Backwards {
        /// The announced epoch.
        got: u32,
        /// The newest held.
        newest: u32,
    },
    /// Skips one or more epoch numbers while the newest known epoch still runs.
    #[error("epoch {got} skips ahead: the next epoch is {expected}")]
    Skipped {
        /// The announced epoch.
        got: u32,
        /// The one expected next.
        expected: u32,
    },
    /// Starts before the previous epoch started, or ends before it starts.
    #[error("epoch {epoch} overlaps or has an empty span ({starts_at_ms}..{ends_at_ms})")]
    Overlap {
        /// The announced epoch.
        epoch: u32,
        /// Its start.
        starts_at_ms: u64,
        /// Its end.
        ends_at_ms: u64,
    },
    /// Its length or grace is out of range.
    #[error("epoch {epoch} has a length or grace out of range (grace may not exceed the length)")]
    BadLength {
        /// The announced epoch.
        epoch: u32,
    },
    /// Its key is the key of another epoch.
    #[error("epoch {epoch} reuses the issuer key of epoch {other}")]
    ReusedKey {
        /// The announced epoch.
        epoch: u32,
        /// The epoch whose key it reuses.
        other: u32,
    },
    /// A different key for an epoch already held: the key-consistency alarm.
    #[error(
        "the admin signed two different issuer keys for epoch {epoch}: a member-specific key would unmask that member; refusing tokens of this epoch"
    )]
    KeyConflict {
        /// The epoch.
        epoch: u32,
    },
    /// A re-announcement that moves the start, lengthens the span or the grace, or changes the roster snapshot
    /// without a newer version.
    #[error("re-announcement of epoch {epoch} may only shorten it")]
    BadUpdate {
        /// The epoch.
        epoch: u32,
    },
}

impl EpochError {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EpochError::Invalid(_) => "invalid",
            EpochError::Backwards { .. } => "backwards",
            EpochError::Skipped { .. } => "skipped",
            EpochError::Overlap { .. } => "overlap",
            EpochError::BadLength { .. } => "bad_length",
            EpochError::ReusedKey { .. } => "reused_key",
            EpochError::KeyConflict { .. } => "key_conflict",
            EpochError::BadUpdate { .. } => "bad_update",
        }
    }
}

/// What adopting an announcement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// A new epoch.
    New,
    /// A newer version of a held epoch (roster, or an earlier end).
    Updated,
    /// Already held; nothing changed.
    Unchanged,
}

/// One held epoch, verified.
#[derive(Clone, Debug)]
pub struct EpochInfo {
    /// The signed announcement.
    pub signed: SignedEpochAnnouncement,
    /// Its issuer key.
    pub key: PublicKey,
    /// The key's id (SHA-256 of its SPKI DER).
    pub key_id: [u8; 32],
    /// Where it really ends: its announced end, or the start of the next epoch if that is earlier (rotation).
    pub effective_end_ms: u64,
}

impl EpochInfo {
    /// The epoch number.
    pub fn epoch(&self) -> u32 {
        self.signed.announcement.epoch
    }
    /// Its start.
    pub fn starts_at_ms(&self) -> u64 {
        self.signed.announcement.starts_at_ms
    }
    /// Its grace period.
    pub fn grace_ms(&self) -> u64 {
        self.signed.announcement.grace_ms
    }
    /// Whether it was cancelled before it began (rotation).
    pub fn cancelled(&self) -> bool {
        self.effective_end_ms <= self.starts_at_ms()
    }
    /// The members of the roster frozen in its announcement: its tokens' replicas are chosen among them
    /// (docs/design.md §7).
    pub fn frozen_roster(&self) -> Vec<crate::ids::PeerId> {
        self.signed.announcement.frozen_roster()
    }
    /// Lenders take its tokens until then.
    pub fn accepted_until_ms(&self) -> u64 {
        self.effective_end_ms.saturating_add(self.grace_ms())
    }
}

/// The epochs a node holds, with the time rules of the module doc. Serializes as its announcements.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    try_from = "Vec<SignedEpochAnnouncement>",
    into = "Vec<SignedEpochAnnouncement>"
)]
pub struct EpochBook {
    epochs: BTreeMap<u32, EpochInfo>,
    skew_ms: u64,
}

impl TryFrom<Vec<SignedEpochAnnouncement>> for EpochBook {
    type Error = GroupError;
    /// Rebuilds a book from stored announcements (verified when they were adopted).
    fn try_from(list: Vec<SignedEpochAnnouncement>) -> Result<Self, GroupError> {
        let mut book = EpochBook {
            epochs: BTreeMap::new(),
            skew_ms: crate::attestation::DEFAULT_WINDOW_MS,
        };
        for signed in list {
            let key = signed.announcement.issuer_key()?;
            book.insert(signed, key);
        }
        Ok(book)
    }
}

impl From<EpochBook> for Vec<SignedEpochAnnouncement> {
    fn from(book: EpochBook) -> Self {
        book.epochs.into_values().map(|i| i.signed).collect()
    }
}

impl EpochBook {
    /// A book holding one verified announcement (from `group create` or an invite).
    pub fn new(
        first: SignedEpochAnnouncement,
        group_id: &GroupId,
        admin: &PeerId,
    ) -> Result<EpochBook, EpochError> {
        let key = first.verify(group_id, admin)?;
        check_span(&first)?;
        let mut book = EpochBook {
            epochs: BTreeMap::new(),
            skew_ms: crate::attestation::DEFAULT_WINDOW_MS,
        };
        book.insert(first, key);
        Ok(book)
    }

    /// The clock-skew allowance.
    pub fn skew_ms(&self) -> u64 {
        self.skew_ms
    }

    /// Sets the clock-skew allowance (default: the attestation window, 5 min).
    pub fn with_skew_ms(mut self, skew_ms: u64) -> Self {
        self.skew_ms = skew_ms;
        self
    }

    fn insert(&mut self, signed: SignedEpochAnnouncement, key: PublicKey) {
        let key_id = key.key_id();
        let epoch = signed.announcement.epoch;
        let end = signed.announcement.ends_at_ms;
        self.epochs.insert(
            epoch,
            EpochInfo {
                signed,
                key,
                key_id,
                effective_end_ms: end,
            },
        );
        while self.epochs.len() > MAX_EPOCHS {
            self.epochs.pop_first();
        }
        self.recompute_ends();
    }

    fn recompute_ends(&mut self) {
        let starts: Vec<(u32, u64)> = self
            .epochs
            .values()
            .map(|i| (i.epoch(), i.starts_at_ms()))
            .collect();
        for (idx, info) in self.epochs.values_mut().enumerate() {
            let announced = info.signed.announcement.ends_at_ms;
            info.effective_end_ms = match starts.get(idx + 1) {
                Some((_, next_start)) => announced.min(*next_start),
                None => announced,
            };
        }
    }

    /// Checks and adopts an announcement; see the module doc for the rules.
    pub fn adopt(
        &mut self,
        signed: SignedEpochAnnouncement,
        group_id: &GroupId,
        admin: &PeerId,
        now_ms: u64,
    ) -> Result<Adopted, EpochError> {
        let key = signed.verify(group_id, admin)?;
        let a = &signed.announcement;
        let epoch = a.epoch;
        if let Some(held) = self.epochs.get(&epoch) {
            if held.key_id != key.key_id() {
                return Err(EpochError::KeyConflict { epoch });
            }
            let h = &held.signed.announcement;
            if a == h || a.roster.roster.version < h.roster.roster.version {
                return Ok(Adopted::Unchanged);
            }
            let same_roster_version = a.roster.roster.version == h.roster.roster.version;
            if a.starts_at_ms != h.starts_at_ms
                || a.ends_at_ms > h.ends_at_ms
                || a.grace_ms > h.grace_ms
                || (same_roster_version && a.roster != h.roster)
            {
                return Err(EpochError::BadUpdate { epoch });
            }
            self.insert(signed, key);
            return Ok(Adopted::Updated);
        }
        check_span(&signed)?;
        if let Some((other, _)) = self.epochs.iter().find(|(_, i)| i.key_id == key.key_id()) {
            return Err(EpochError::ReusedKey { epoch, other: *other });
        }
        if let Some(newest) = self.newest() {
            let n = newest.epoch();
            if epoch < n {
                return Err(EpochError::Backwards {
                    got: epoch,
                    newest: n,
                });
            }
            // A node that slept through whole epochs catches up; a skip while the newest still runs is refused.
            if epoch > n.saturating_add(1) && now_ms < newest.effective_end_ms {
                return Err(EpochError::Skipped {
                    got: epoch,
                    expected: n.saturating_add(1),
                });
            }
            // Compared with the newest epoch that was not cancelled (a rotation cancels an announced next one).
            let live_start = self
                .epochs
                .values()
                .rev()
                .find(|i| !i.cancelled())
                .map_or(0, EpochInfo::starts_at_ms);
            if a.starts_at_ms < live_start {
                return Err(EpochError::Overlap {
                    epoch,
                    starts_at_ms: a.starts_at_ms,
                    ends_at_ms: a.ends_at_ms,
                });
            }
        }
        self.insert(signed, key);
        Ok(Adopted::New)
    }

    /// The newest held epoch.
    pub fn newest(&self) -> Option<&EpochInfo> {
        self.epochs.values().next_back()
    }

    /// A held epoch.
    pub fn get(&self, epoch: u32) -> Option<&EpochInfo> {
        self.epochs.get(&epoch)
    }

    /// Every held epoch, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &EpochInfo> {
        self.epochs.values()
    }

    /// The epoch whose span holds `now`, if any.
    pub fn current(&self, now_ms: u64) -> Option<&EpochInfo> {
        self.epochs
            .values()
            .rev()
            .find(|i| !i.cancelled() && i.starts_at_ms() <= now_ms && now_ms < i.effective_end_ms)
    }

    /// The announced epoch after the current one (not started yet), if any.
    pub fn next(&self, now_ms: u64) -> Option<&EpochInfo> {
        self.epochs
            .values()
            .find(|i| !i.cancelled() && i.starts_at_ms() > now_ms)
    }

    /// When the next epoch starts: the announced next one's start, else the end of the current (or newest) one.
    pub fn next_start_ms(&self, now_ms: u64) -> Option<u64> {
        if let Some(n) = self.next(now_ms) {
            return Some(n.starts_at_ms());
        }
        self.current(now_ms)
            .or_else(|| self.newest())
            .map(|i| i.effective_end_ms)
    }

    /// Lender rule: whether a token of `epoch` is taken at `now`.
    pub fn accepts(&self, epoch: u32, now_ms: u64) -> bool {
        self.epochs.get(&epoch).is_some_and(|i| {
            !i.cancelled()
                && now_ms.saturating_add(self.skew_ms) >= i.starts_at_ms()
                && now_ms < i.accepted_until_ms()
        })
    }

    /// Borrower rule: whether to spend a token of `epoch` at `now`.
    pub fn spendable(&self, epoch: u32, now_ms: u64) -> bool {
        self.epochs.get(&epoch).is_some_and(|i| {
            let margin = SPEND_MARGIN_MS.min(i.grace_ms() / 2);
            !i.cancelled()
                && now_ms >= i.starts_at_ms()
                && now_ms.saturating_add(margin) < i.accepted_until_ms()
        })
    }

    /// Issuer rule: whether to sign for `epoch` at `now` (the current and the announced next epoch).
    pub fn signable(&self, epoch: u32, now_ms: u64) -> bool {
        self.epochs
            .get(&epoch)
            .is_some_and(|i| !i.cancelled() && now_ms < i.effective_end_ms)
    }

    /// Epochs a member should hold tokens for at `now`: the signable ones, oldest first.
    pub fn refill_epochs(&self, now_ms: u64) -> Vec<u32> {
        self.epochs
            .keys()
            .copied()
            .filter(|e| self.signable(*e, now_ms))
            .collect()
    }

    /// Whether a token of `epoch` can still ever be taken by a lender (after `now`).
    pub fn live(&self, epoch: u32, now_ms: u64) -> bool {
        self.epochs
            .get(&epoch)
            .is_some_and(|i| !i.cancelled() && now_ms < i.accepted_until_ms())
    }

    /// Drops the epochs no lender takes any more (the newest is always kept); returns their numbers, oldest first.
    /// Their tokens, spent-set entries and quota records can be pruned.
    pub fn retire(&mut self, now_ms: u64) -> Vec<u32> {
        let newest = self.newest().map(EpochInfo::epoch);
        let gone: Vec<u32> = self
            .epochs
            .values()
            .filter(|i| Some(i.epoch()) != newest && !self.live(i.epoch(), now_ms))
            .map(EpochInfo::epoch)
            .collect();
        for e in &gone {
            self.epochs.remove(e);
        }
        gone
    }

    /// The key id held for `epoch`.
    pub fn key_id(&self, epoch: u32) -> Option<[u8; 32]> {
        self.epochs.get(&epoch).map(|i| i.key_id)
    }

    /// `(epoch, key id)` of every live epoch, as a node announces them in its attestations.
    pub fn announced_keys(&self, now_ms: u64) -> Vec<(u32, [u8; 32])> {
        self.epochs
            .values()
            .filter(|i| self.live(i.epoch(), now_ms) || i.starts_at_ms() > now_ms)
            .map(|i| (i.epoch(), i.key_id))
            .take(MAX_ANNOUNCED_KEYS)
            .collect()
    }

    /// Key consistency (docs/design.md §4): the epochs for which `theirs` names another key than this book holds.
    /// Epochs this book does not hold are not compared (the peer is ahead or behind).
    pub fn key_mismatches(&self, theirs: &[(u32, [u8; 32])]) -> Vec<u32> {
        theirs
            .iter()
            .filter(|(e, id)| self.epochs.get(e).is_some_and(|i| &i.key_id != id))
            .map(|(e, _)| *e)
            .collect()
    }

    /// The announcements held, oldest first (to gossip them).
    pub fn announcements(&self) -> impl Iterator<Item = &SignedEpochAnnouncement> {
        self.epochs.values().map(|i| &i.signed)
    }

    /// Admin: whether the next epoch should be announced now (the newest ends within the lead time).
    pub fn needs_next(&self, now_ms: u64) -> bool {
        self.newest().is_some_and(|n| {
            let length = n.effective_end_ms.saturating_sub(n.starts_at_ms());
            now_ms.saturating_add(announce_lead_ms(length)) >= n.effective_end_ms
        })
    }
}

pub use crate::attestation::MAX_ANNOUNCED_KEYS;

fn check_span(signed: &SignedEpochAnnouncement) -> Result<(), EpochError> {
    let a = &signed.announcement;
    if a.ends_at_ms <= a.starts_at_ms {
        return Err(EpochError::Overlap {
            epoch: a.epoch,
            starts_at_ms: a.starts_at_ms,
            ends_at_ms: a.ends_at_ms,
        });
    }
    let length = a.ends_at_ms - a.starts_at_ms;
    if !(MIN_EPOCH_MS..=MAX_EPOCH_MS).contains(&length) || a.grace_ms > length {
        return Err(EpochError::BadLength { epoch: a.epoch });
    }
    Ok(())
}

/// The schedule for the epoch after `newest` (admin): it starts where `newest` ends, or at `now` if that is later
/// (the admin was offline past the end), and lasts `length_ms`. Returns `(epoch, starts_at_ms, ends_at_ms)`.
pub fn next_schedule(newest: &EpochInfo, length_ms: u64, now_ms: u64) -> (u32, u64, u64) {
    let start = newest.effective_end_ms.max(now_ms);
    (
        newest.epoch().saturating_add(1),
        start,
        start.saturating_add(length_ms),
    )
}

#[cfg(test)]
mod tests;
