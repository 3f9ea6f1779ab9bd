//! The issuer: blind-signs token batches for roster members within their per-epoch quota (docs/design.md §4).
//!
//! The state is the epoch's secret key, the roster, and a quota counter per member. [`Issuer::issue`] checks the
//! request (member known and not expired, current epoch and key, batch size, each blinded message well-formed,
//! quota left), charges the counter, and signs. It returns an [`IssueGrant`] whose [`QuotaRecord`] the caller
//! **must persist before the signatures leave**: after a crash the counter is then never below what was handed
//! out, so no member can exceed its quota across restarts.
//!
//! The issuer holds a key per epoch it signs for: the current epoch and, once announced, the next one (docs/design.md §8),
//! each with its own quota counters. [`Issuer::retire_before`] drops retired epochs. Every grant says how many tokens
//! the member has left in that epoch, so a member never asks for more than that.
//!
//! Retries are idempotent: a request with the same `request_id` and the same blinded messages as the member's last
//! one is signed again without charging (RSA signing is deterministic, so the member gets the same signatures).
//! This lets a member that crashed mid-refill ask again for the batch it persisted before sending.

use std::collections::{BTreeMap, HashMap};

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::blind_rsa::SecretKey;
use crate::group::Roster;
use crate::ids::PeerId;
use crate::ids::serde_bytes_compat;

/// A member asks the issuer to blind-sign a batch (`/lendmesh/issue/1`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct IssueRequest {
    /// Random; a retry of the same batch reuses it.
    pub request_id: [u8; 16],
    /// The epoch asked for.
    pub epoch: u32,
    /// The epoch key's id.
    pub key_id: [u8; 32],
    /// Blinded messages, each of the modulus length.
    #[serde(with = "serde_bytes_compat::vec_vec")]
    pub blinded: Vec<Vec<u8>>,
}

/// The issuer's answer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum IssueResponse {
    /// Signed.
    Granted {
        /// The request answered.
        request_id: [u8; 16],
        /// Blind signatures in request order.
        #[serde(with = "serde_bytes_compat::vec_vec")]
        blind_signatures: Vec<Vec<u8>>,
        /// Tokens the member has left in this epoch after this batch.
        remaining: u32,
    },
    /// Refused, with the reason.
    Refused(IssueError),
}

/// Default largest batch one request may ask for.
pub const DEFAULT_MAX_BATCH: u32 = 64;

/// Why an issue request was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IssueError {
    /// Not on the roster (or removed).
    #[error("not a member of this group")]
    UnknownMember,
    /// The member's roster entry has expired.
    #[error("membership expired at {expired_at_ms}")]
    MemberExpired {
        /// When it expired.
        expired_at_ms: u64,
    },
    /// Asked for another epoch than the issuer's current one.
    #[error("wrong epoch {requested}; the issuer is at epoch {current}")]
    WrongEpoch {
        /// Asked for.
        requested: u32,
        /// Current.
        current: u32,
    },
    /// Asked for another key id than the epoch's.
    #[error("wrong issuer key id for this epoch")]
    WrongKey,
    /// Not enough quota left.
    #[error("over quota: asked for {requested}, {remaining} left this epoch")]
    OverQuota {
        /// Asked for.
        requested: u32,
        /// Left.
        remaining: u32,
    },
    /// Zero messages.
    #[error("empty batch")]
    EmptyBatch,
    /// More than the batch limit.
    #[error("batch of {requested} exceeds the limit of {max}")]
    BatchTooLarge {
        /// Asked for.
        requested: u32,
        /// Limit.
        max: u32,
    },
    /// A blinded message has the wrong length or is not below the modulus.
    #[error("blinded message {index} is malformed")]
    MalformedBlindedMessage {
        /// Its index.
        index: u32,
    },
    /// The same request id came with different messages.
    #[error("request id reused with different blinded messages")]
    RequestIdReused,
    /// Signing failed (a fault in the private operation).
    #[error("signing failed")]
    SigningFailed,
    /// The issuer is overloaded; try again later.
    #[error("the issuer is busy; try again later")]
    Busy,
    /// The node asked is not the group's issuer.
    #[error("this node is not the group's issuer")]
    NotIssuer,
    /// The issuer could not record the charge durably, so it signed nothing.
    #[error("the issuer could not record the charge; try again later")]
    StoreFailed,
}

impl IssueError {
    /// A short name for logs, metrics and the member's ledger.
    pub fn label(&self) -> &'static str {
        match self {
            IssueError::UnknownMember => "unknown_member",
            IssueError::MemberExpired { .. } => "member_expired",
            IssueError::WrongEpoch { .. } => "wrong_epoch",
            IssueError::WrongKey => "wrong_key",
            IssueError::OverQuota { .. } => "over_quota",
            IssueError::EmptyBatch => "empty_batch",
            IssueError::BatchTooLarge { .. } => "batch_too_large",
            IssueError::MalformedBlindedMessage { .. } => "malformed_blinded_message",
            IssueError::RequestIdReused => "request_id_reused",
            IssueError::SigningFailed => "signing_failed",
            IssueError::Busy => "busy",
            IssueError::NotIssuer => "not_issuer",
            IssueError::StoreFailed => "store_failed",
        }
    }
}

/// The durable part of the issuer's state for one member: persist it before the signatures leave.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct QuotaRecord {
    /// The epoch.
    pub epoch: u32,
    /// The member.
    pub peer: PeerId,
    /// Tokens signed for this member this epoch.
    pub used: u32,
    /// The member's last request, for idempotent retries.
    pub last_request_id: [u8; 16],
    /// SHA-256 over that request's blinded messages.
    pub last_digest: [u8; 32],
}

/// A granted batch.
#[derive(Debug)]
pub struct IssueGrant {
    /// Persist this before sending the signatures.
    pub record: QuotaRecord,
    /// False when this was an idempotent retry that charged nothing (the record is unchanged).
    pub charged: bool,
    /// The blind signatures, in request order.
    pub blind_signatures: Vec<Vec<u8>>,
    /// Tokens the member has left in this epoch after this grant.
    pub remaining: u32,
}

/// One epoch the issuer signs for.
#[derive(Debug)]
struct IssuerEpoch {
    key: SecretKey,
    /// Signing stops at this instant (the epoch's end).
    until_ms: u64,
    records: HashMap<PeerId, QuotaRecord>,
}

/// The issuer state machine: its epochs' keys and quota counters, and the roster.
#[derive(Debug)]
pub struct Issuer {
    epochs: BTreeMap<u32, IssuerEpoch>,
    roster: Roster,
    max_batch: u32,
}

impl Issuer {
    /// An issuer for `epoch` with its secret key and roster (signing without an end until told otherwise).
    pub fn new(epoch: u32, key: SecretKey, roster: Roster) -> Self {
        let mut issuer = Issuer {
            epochs: BTreeMap::new(),
            roster,
            max_batch: DEFAULT_MAX_BATCH,
        };
        issuer.add_epoch(epoch, key, u64::MAX);
        issuer
    }

    /// An issuer with no epoch yet.
    pub fn empty(roster: Roster) -> Self {
        Issuer {
            epochs: BTreeMap::new(),
            roster,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    /// Sets the batch limit.
    pub fn with_max_batch(mut self, max_batch: u32) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Signs for `epoch` with `key` until `until_ms` (its end). A known epoch only has its end updated.
    pub fn add_epoch(&mut self, epoch: u32, key: SecretKey, until_ms: u64) {
        self.epochs
            .entry(epoch)
            .and_modify(|e| e.until_ms = until_ms)
            .or_insert(IssuerEpoch {
                key,
                until_ms,
                records: HashMap::new(),
            });
    }

    /// Moves the end of a known epoch (an immediate rotation ends it now).
    pub fn set_until(&mut self, epoch: u32, until_ms: u64) {
        if let Some(e) = self.epochs.get_mut(&epoch) {
            e.until_ms = until_ms;
        }
    }

    /// Whether the issuer holds a key for `epoch`.
    pub fn has_epoch(&self, epoch: u32) -> bool {
        self.epochs.contains_key(&epoch)
    }

    /// Drops every epoch before `epoch` with its counters; returns how many.
    pub fn retire_before(&mut self, epoch: u32) -> usize {
        let keep = self.epochs.split_off(&epoch);
        let gone = self.epochs.len();
        self.epochs = keep;
        gone
    }

    /// Loads a persisted record (records of epochs the issuer does not hold are ignored).
    pub fn restore(&mut self, record: QuotaRecord) {
        if let Some(e) = self.epochs.get_mut(&record.epoch) {
            e.records.insert(record.peer, record);
        }
    }

    /// Replaces the roster (a new signed version).
    pub fn set_roster(&mut self, roster: Roster) {
        self.roster = roster;
    }

    /// The newest epoch held.
    pub fn epoch(&self) -> u32 {
        self.epochs.keys().next_back().copied().unwrap_or(0)
    }

    /// The epochs held, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = u32> + '_ {
        self.epochs.keys().copied()
    }

    /// An epoch's secret key.
    pub fn key(&self, epoch: u32) -> Option<&SecretKey> {
        self.epochs.get(&epoch).map(|e| &e.key)
    }

    /// Tokens signed for `peer` in `epoch`.
    pub fn used(&self, peer: &PeerId, epoch: u32) -> u32 {
        self.epochs
            .get(&epoch)
            .and_then(|e| e.records.get(peer))
            .map_or(0, |r| r.used)
    }

    /// Tokens `peer` has left in `epoch` (0 for a non-member).
    pub fn remaining(&self, peer: &PeerId, epoch: u32) -> u32 {
        let quota = self.roster.entry(peer).map_or(0, |e| e.quota_per_epoch);
        quota.saturating_sub(self.used(peer, epoch))
    }

    /// Checks and signs a batch for `peer` (the authenticated remote of the stream). See the module doc.
    pub fn issue(
        &mut self,
        peer: &PeerId,
        req: &IssueRequest,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<IssueGrant, IssueError> {
        let entry = self.roster.entry(peer).ok_or(IssueError::UnknownMember)?;
        if now_ms >= entry.expires_at_ms {
            return Err(IssueError::MemberExpired {
                expired_at_ms: entry.expires_at_ms,
            });
        }
        let quota = entry.quota_per_epoch;
        let current = self
            .epochs
            .iter()
            .rev()
            .find(|(_, e)| now_ms < e.until_ms)
            .map_or(0, |(n, _)| *n);
        let max_batch = self.max_batch;
        let Some(state) = self.epochs.get_mut(&req.epoch).filter(|e| now_ms < e.until_ms) else {
            return Err(IssueError::WrongEpoch {
                requested: req.epoch,
                current,
            });
        };
        let public = state.key.public_key();
        if req.key_id != public.key_id() {
            return Err(IssueError::WrongKey);
        }
        let count = u32::try_from(req.blinded.len()).unwrap_or(u32::MAX);
        if count == 0 {
            return Err(IssueError::EmptyBatch);
        }
        if count > max_batch {
            return Err(IssueError::BatchTooLarge {
                requested: count,
                max: max_batch,
            });
        }
        if let Some(index) = req.blinded.iter().position(|b| b.len() != public.modulus_len()) {
            return Err(IssueError::MalformedBlindedMessage { index: index as u32 });
        }
        let digest = batch_digest(&req.blinded);
        let previous = state.records.get(peer).cloned();
        let retry = previous
            .as_ref()
            .is_some_and(|r| r.last_request_id == req.request_id);
        if retry && previous.as_ref().is_some_and(|r| r.last_digest != digest) {
            return Err(IssueError::RequestIdReused);
        }
        let used = previous.as_ref().map_or(0, |r| r.used);
        if !retry && used.saturating_add(count) > quota {
            return Err(IssueError::OverQuota {
                requested: count,
                remaining: quota.saturating_sub(used),
            });
        }
        let mut blind_signatures = Vec::with_capacity(req.blinded.len());
        for (index, blinded) in req.blinded.iter().enumerate() {
            let sig = state.key.blind_sign(blinded, rng).map_err(|e| match e {
                crate::blind_rsa::BlindRsaError::OutOfRange
                | crate::blind_rsa::BlindRsaError::WrongLength { .. } => {
                    IssueError::MalformedBlindedMessage { index: index as u32 }
                }
                _ => IssueError::SigningFailed,
            })?;
            blind_signatures.push(sig);
        }
        let record = match previous {
            Some(r) if retry => r,
            _ => QuotaRecord {
                epoch: req.epoch,
                peer: *peer,
                used: used + count,
                last_request_id: req.request_id,
                last_digest: digest,
            },
        };
        state.records.insert(*peer, record.clone());
        let remaining = quota.saturating_sub(record.used);
        Ok(IssueGrant {
            record,
            charged: !retry,
            blind_signatures,
            remaining,
        })
    }
}

fn batch_digest(blinded: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for b in blinded {
        h.update((b.len() as u32).to_be_bytes());
        h.update(b);
    }
    h.finalize().into()
}
