//! The redeemer: what a lender checks before doing any work for a token (docs/design.md §4).
//!
//! In order: token type, epoch in the accepted window, key id of that epoch, the issuer's RSASSA-PSS signature
//! (ring), and the spend binding (this lender, this request, about now, signed by the token's spend key). Only then
//! is the token hash claimed in the [`SpentSet`] — durably, in the node — before any work. Every refusal is a typed
//! [`RedeemError`]; refusals before the claim leave the token unspent. [`Redeemer::release`] undoes a claim when the
//! upstream refused before doing any work.
//!
//! The spent set is a trait: the node backs it with redb, the simulator and tests with [`MemorySpentSet`]. Group-wide
//! single spend (replica claims, docs/design.md §7) composes on top: a lender claims locally, then at the replicas.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use crate::blind_rsa::PublicKey;
use crate::ids::PeerId;
use crate::token::{BindingError, TOKEN_TYPE, TokenHash, TokenSpend};

/// Default allowed distance between a spend's time and the lender's clock: 5 minutes.
pub const DEFAULT_SPEND_SKEW_MS: u64 = 5 * 60 * 1000;

/// The result of claiming a token hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This call claimed it.
    Claimed,
    /// It was already claimed.
    AlreadySpent,
}

/// A set of spent token hashes per epoch. `try_claim` must be atomic: of two concurrent claims of one hash, exactly
/// one gets [`ClaimOutcome::Claimed`]. A durable implementation returns only after the claim is committed.
pub trait SpentSet {
    /// Storage error.
    type Error: std::fmt::Display;
    /// Claims `hash` in `epoch` if nobody has.
    fn try_claim(&self, epoch: u32, hash: &TokenHash) -> Result<ClaimOutcome, Self::Error>;
    /// Removes a claim (the upstream refused before doing any work).
    fn release(&self, epoch: u32, hash: &TokenHash) -> Result<(), Self::Error>;
}

/// An in-memory spent set (tests, simulator). Thread-safe.
#[derive(Debug, Default)]
pub struct MemorySpentSet {
    inner: Mutex<BTreeMap<u32, HashSet<TokenHash>>>,
}

impl MemorySpentSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, HashSet<TokenHash>>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spent hashes in one epoch.
    pub fn len_in(&self, epoch: u32) -> usize {
        self.lock().get(&epoch).map_or(0, HashSet::len)
    }

    /// Whether a hash is spent.
    pub fn contains(&self, epoch: u32, hash: &TokenHash) -> bool {
        self.lock().get(&epoch).is_some_and(|s| s.contains(hash))
    }

    /// Forgets epochs before `epoch` (retired: their tokens are refused by epoch anyway).
    pub fn prune_before(&self, epoch: u32) {
        self.lock().retain(|e, _| *e >= epoch);
    }
}

impl SpentSet for MemorySpentSet {
    type Error = std::convert::Infallible;

    fn try_claim(&self, epoch: u32, hash: &TokenHash) -> Result<ClaimOutcome, Self::Error> {
        let fresh = self.lock().entry(epoch).or_default().insert(*hash);
        Ok(if fresh {
            ClaimOutcome::Claimed
        } else {
            ClaimOutcome::AlreadySpent
        })
    }

    fn release(&self, epoch: u32, hash: &TokenHash) -> Result<(), Self::Error> {
        if let Some(set) = self.lock().get_mut(&epoch) {
            set.remove(hash);
        }
        Ok(())
    }
}

/// Why a lender refused a token.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RedeemError {
    /// Not a lendmesh token.
    #[error("wrong token type {got:#06x}")]
    WrongTokenType {
        /// The type found.
        got: u16,
    },
    /// The epoch is not accepted (too old, too new, unknown).
    #[error("epoch {epoch} is not accepted by this lender")]
    UnknownEpoch {
        /// The token's epoch.
        epoch: u32,
    },
    /// The epoch is known but not accepted at this time (not started, or past its grace period).
    #[error("epoch {epoch} is not accepted now (not started yet, or past its grace period)")]
    EpochClosed {
        /// The token's epoch.
        epoch: u32,
    },
    /// The key id is not the epoch's issuer key (possibly a member-specific key: a privacy alarm).
    #[error("token key id does not match the epoch's issuer key")]
    WrongKeyId,
    /// The issuer's signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// The spend binding does not hold.
    #[error("spend binding: {0}")]
    Binding(#[from] BindingError),
    /// Already spent at this lender.
    #[error("token already spent")]
    DoubleSpend,
    /// The spent set failed; the token is not claimed.
    #[error("spent-set storage failed: {0}")]
    Store(String),
}

impl RedeemError {
    /// A stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RedeemError::WrongTokenType { .. } => "wrong_token_type",
            RedeemError::UnknownEpoch { .. } => "unknown_epoch",
            RedeemError::EpochClosed { .. } => "epoch_closed",
            RedeemError::WrongKeyId => "wrong_key_id",
            RedeemError::BadSignature => "bad_signature",
            RedeemError::Binding(BindingError::WrongLender) => "wrong_lender",
            RedeemError::Binding(BindingError::WrongRequest) => "wrong_request",
            RedeemError::Binding(BindingError::TimeSkew { .. }) => "time_skew",
            RedeemError::Binding(BindingError::BadSignature) => "bad_spend_signature",
            RedeemError::DoubleSpend => "double_spend",
            RedeemError::Store(_) => "store",
        }
    }
}

/// A successful redemption: the claim to release if the upstream refuses before any work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redemption {
    /// The token's epoch.
    pub epoch: u32,
    /// The claimed hash.
    pub token_hash: TokenHash,
}

/// The lender-side checker.
#[derive(Debug, Clone)]
pub struct Redeemer {
    me: PeerId,
    /// Per epoch: its key and the span `[from, until)` in which its tokens are taken.
    keys: BTreeMap<u32, (PublicKey, u64, u64)>,
    max_skew_ms: u64,
}

impl Redeemer {
    /// A redeemer for lender `me`, accepting no epoch yet.
    pub fn new(me: PeerId) -> Self {
        Redeemer {
            me,
            keys: BTreeMap::new(),
            max_skew_ms: DEFAULT_SPEND_SKEW_MS,
        }
    }

    /// Sets the allowed spend-time skew.
    pub fn with_max_skew_ms(mut self, ms: u64) -> Self {
        self.max_skew_ms = ms;
        self
    }

    /// Accepts tokens of `epoch` signed by `key`, at any time.
    pub fn accept_epoch(&mut self, epoch: u32, key: PublicKey) {
        self.keys.insert(epoch, (key, 0, u64::MAX));
    }

    /// Accepts tokens of `epoch` signed by `key` from `from_ms` until (excluding) `until_ms`
    /// (see [`crate::epoch::EpochBook::accepts`]).
    pub fn accept_epoch_between(&mut self, epoch: u32, key: PublicKey, from_ms: u64, until_ms: u64) {
        self.keys.insert(epoch, (key, from_ms, until_ms));
    }

    /// Replaces every accepted epoch with the live epochs of `book`, less the `refused` ones (a key-consistency
    /// alarm).
    pub fn accept_book(&mut self, book: &crate::epoch::EpochBook, refused: &std::collections::BTreeSet<u32>) {
        self.keys.clear();
        for info in book
            .iter()
            .filter(|i| !i.cancelled() && !refused.contains(&i.epoch()))
        {
            let from = info.starts_at_ms().saturating_sub(book.skew_ms());
            self.accept_epoch_between(info.epoch(), info.key.clone(), from, info.accepted_until_ms());
        }
    }

    /// Stops accepting `epoch`.
    pub fn retire_epoch(&mut self, epoch: u32) {
        self.keys.remove(&epoch);
    }

    /// The accepted epochs.
    pub fn accepted_epochs(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// All checks but the claim.
    pub fn check(
        &self,
        spend: &TokenSpend,
        request_digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), RedeemError> {
        let input = &spend.token.input;
        if input.token_type != TOKEN_TYPE {
            return Err(RedeemError::WrongTokenType {
                got: input.token_type,
            });
        }
        let (key, from, until) = self
            .keys
            .get(&input.epoch)
            .ok_or(RedeemError::UnknownEpoch { epoch: input.epoch })?;
        if now_ms < *from || now_ms >= *until {
            return Err(RedeemError::EpochClosed { epoch: input.epoch });
        }
        if input.key_id != key.key_id() {
            return Err(RedeemError::WrongKeyId);
        }
        key.verify_ring(&input.to_bytes(), &spend.token.signature)
            .map_err(|_| RedeemError::BadSignature)?;
        spend.verify_binding(&self.me, request_digest, now_ms, self.max_skew_ms)?;
        Ok(())
    }

    /// Checks the token, then claims it in `spent`. On success the token is spent.
    pub fn redeem<S: SpentSet>(
        &self,
        spend: &TokenSpend,
        request_digest: &[u8; 32],
        now_ms: u64,
        spent: &S,
    ) -> Result<Redemption, RedeemError> {
        self.check(spend, request_digest, now_ms)?;
        let token_hash = spend.token.hash();
        let epoch = spend.token.input.epoch;
        match spent
            .try_claim(epoch, &token_hash)
            .map_err(|e| RedeemError::Store(e.to_string()))?
        {
            ClaimOutcome::Claimed => Ok(Redemption { epoch, token_hash }),
            ClaimOutcome::AlreadySpent => Err(RedeemError::DoubleSpend),
        }
    }

    /// Releases a claim (the upstream refused before doing any work), so the token can be spent again.
    pub fn release<S: SpentSet>(&self, redemption: &Redemption, spent: &S) -> Result<(), RedeemError> {
        spent
            .release(redemption.epoch, &redemption.token_hash)
            .map_err(|e| RedeemError::Store(e.to_string()))
    }
}
