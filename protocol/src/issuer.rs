//! The issuer: blind-signs token batches for roster members within their per-epoch quota (DESIGN §4).
//!
//! The state is the epoch's secret key, the roster, and a quota counter per member. [`Issuer::issue`] checks the
//! request (member known and not expired, current epoch and key, batch size, each blinded message well-formed,
//! quota left), charges the counter, and signs. It returns an [`IssueGrant`] whose [`QuotaRecord`] the caller
//! **must persist before the signatures leave**: after a crash the counter is then never below what was handed
//! out, so no member can exceed its quota across restarts.
//!
//! Retries are idempotent: a request with the same `request_id` and the same blinded messages as the member's last
//! one is signed again without charging (RSA signing is deterministic, so the member gets the same signatures).
//! This lets a member that crashed mid-refill ask again for the batch it persisted before sending.

use std::collections::HashMap;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::blind_rsa::SecretKey;
use crate::group::Roster;
use crate::ids::PeerId;
use crate::wire::IssueRequest;

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
}

/// The issuer state machine for one epoch.
#[derive(Debug)]
pub struct Issuer {
    epoch: u32,
    key: SecretKey,
    roster: Roster,
    max_batch: u32,
    records: HashMap<PeerId, QuotaRecord>,
}

impl Issuer {
    /// An issuer for `epoch` with its secret key and roster.
    pub fn new(epoch: u32, key: SecretKey, roster: Roster) -> Self {
        Issuer {
            epoch,
            key,
            roster,
            max_batch: DEFAULT_MAX_BATCH,
            records: HashMap::new(),
        }
    }

    /// Sets the batch limit.
    pub fn with_max_batch(mut self, max_batch: u32) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Loads a persisted record (records of other epochs are ignored).
    pub fn restore(&mut self, record: QuotaRecord) {
        if record.epoch == self.epoch {
            self.records.insert(record.peer, record);
        }
    }

    /// Replaces the roster (a new signed version).
    pub fn set_roster(&mut self, roster: Roster) {
        self.roster = roster;
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The epoch's secret key.
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// Tokens signed for `peer` this epoch.
    pub fn used(&self, peer: &PeerId) -> u32 {
        self.records.get(peer).map_or(0, |r| r.used)
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
        if req.epoch != self.epoch {
            return Err(IssueError::WrongEpoch {
                requested: req.epoch,
                current: self.epoch,
            });
        }
        let public = self.key.public_key();
        if req.key_id != public.key_id() {
            return Err(IssueError::WrongKey);
        }
        let count = u32::try_from(req.blinded.len()).unwrap_or(u32::MAX);
        if count == 0 {
            return Err(IssueError::EmptyBatch);
        }
        if count > self.max_batch {
            return Err(IssueError::BatchTooLarge {
                requested: count,
                max: self.max_batch,
            });
        }
        if let Some(index) = req.blinded.iter().position(|b| b.len() != public.modulus_len()) {
            return Err(IssueError::MalformedBlindedMessage { index: index as u32 });
        }
        let digest = batch_digest(&req.blinded);
        let previous = self.records.get(peer).cloned();
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
            let sig = self.key.blind_sign(blinded, rng).map_err(|e| match e {
                crate::blind_rsa::BlindRsaError::OutOfRange
                | crate::blind_rsa::BlindRsaError::WrongLength { .. } => {
                    IssueError::MalformedBlindedMessage { index: index as u32 }
                }
                _ => IssueError::SigningFailed,
            })?;
            blind_signatures.push(sig);
        }
        let record = if retry {
            previous.unwrap_or_else(|| unreachable!("retry implies a previous record"))
        } else {
            QuotaRecord {
                epoch: self.epoch,
                peer: *peer,
                used: used + count,
                last_request_id: req.request_id,
                last_digest: digest,
            }
        };
        self.records.insert(*peer, record.clone());
        Ok(IssueGrant {
            record,
            charged: !retry,
            blind_signatures,
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
