//! The member's wallet: prepares blinded batches, finalizes the issuer's answers into verified tokens, and hands
//! tokens out for spends (docs/design.md §4).
//!
//! Refill is two steps so the node can make each one durable:
//! 1. [`Wallet::prepare_batch`] makes fresh spend keys and token inputs, blinds them, and returns the
//!    [`IssueRequest`] to send plus the [`PendingBatch`] of secrets to keep (persist it before sending, so a crash
//!    after the issuer signed can retry the same request id and still finalize);
//! 2. [`Wallet::finalize`] unblinds and verifies every signature, then adds the tokens — all or none, and never a
//!    token twice (finalizing the same batch again is a no-op).
//!
//! [`Wallet::take`] removes the token to spend next (oldest epoch first); [`Wallet::put_back`] returns one that a
//! lender refused before claiming it.

use std::collections::{HashSet, VecDeque};

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};

use crate::blind_rsa::{BlindInverse, BlindRsaError, PublicKey, Variant};
use crate::token::{SpendSecret, Token, TokenHash, TokenInput, WalletToken};
use crate::wire::IssueRequest;

/// The variant lendmesh tokens use.
pub const TOKEN_VARIANT: Variant = Variant::PSS_DETERMINISTIC;

/// Wallet errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WalletError {
    /// Asked for an empty batch.
    #[error("batch size must be at least 1")]
    EmptyBatch,
    /// Blinding failed.
    #[error("blinding failed: {0}")]
    Blind(BlindRsaError),
    /// The issuer answered with a different number of signatures.
    #[error("issuer returned {got} signatures for {expected} messages")]
    CountMismatch {
        /// Sent.
        expected: usize,
        /// Received.
        got: usize,
    },
    /// A signature from the issuer does not finalize into a valid token.
    #[error("issuer signature {index} does not verify: {source}")]
    BadIssuerSignature {
        /// Its index.
        index: usize,
        /// Why.
        source: BlindRsaError,
    },
    /// The key is not the one the batch was prepared for.
    #[error("finalize called with another issuer key than the batch was prepared for")]
    WrongKey,
}

/// One prepared token: its input and the secrets to finalize and spend it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PendingToken {
    /// The token input that was blinded.
    pub input: TokenInput,
    /// Its spend key.
    pub spend_secret: SpendSecret,
    /// The blinding inverse.
    pub inverse: BlindInverse,
}

/// A batch sent to the issuer and not yet finalized. Holds secrets; persist it before sending the request.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PendingBatch {
    /// The request id sent with it.
    pub request_id: [u8; 16],
    /// The epoch.
    pub epoch: u32,
    /// The issuer key id.
    pub key_id: [u8; 32],
    /// The tokens, in request order.
    pub tokens: Vec<PendingToken>,
    /// The request as sent (to retry it verbatim).
    pub request: IssueRequest,
}

/// The member's tokens. Serializes as the list of tokens (with their spend secrets: store it as a secret).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Vec<WalletToken>", into = "Vec<WalletToken>")]
pub struct Wallet {
    tokens: VecDeque<WalletToken>,
    index: HashSet<TokenHash>,
}

impl From<Vec<WalletToken>> for Wallet {
    fn from(tokens: Vec<WalletToken>) -> Self {
        let mut wallet = Wallet::new();
        for t in tokens {
            wallet.insert(t);
        }
        wallet
    }
}

impl From<Wallet> for Vec<WalletToken> {
    fn from(wallet: Wallet) -> Self {
        wallet.tokens.into()
    }
}

impl Wallet {
    /// An empty wallet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepares `count` tokens for `epoch` under the issuer's `key`.
    pub fn prepare_batch(
        key: &PublicKey,
        epoch: u32,
        count: u32,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(IssueRequest, PendingBatch), WalletError> {
        if count == 0 {
            return Err(WalletError::EmptyBatch);
        }
        let mut request_id = [0u8; 16];
        rng.fill_bytes(&mut request_id);
        let mut tokens = Vec::with_capacity(count as usize);
        let mut blinded = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let spend_secret = SpendSecret::generate(rng);
            let input = TokenInput::new(epoch, key.key_id(), spend_secret.public_key());
            let (msg, inverse) = key
                .blind(TOKEN_VARIANT, &input.to_bytes(), rng)
                .map_err(WalletError::Blind)?;
            blinded.push(msg);
            tokens.push(PendingToken {
                input,
                spend_secret,
                inverse,
            });
        }
        let request = IssueRequest {
            request_id,
            epoch,
            key_id: key.key_id(),
            blinded,
        };
        let batch = PendingBatch {
            request_id,
            epoch,
            key_id: key.key_id(),
            tokens,
            request: request.clone(),
        };
        Ok((request, batch))
    }

    /// Finalizes and verifies every signature; adds the new tokens (all or none). Returns how many were added
    /// (0 when this batch was already finalized).
    pub fn finalize(
        &mut self,
        key: &PublicKey,
        batch: &PendingBatch,
        blind_signatures: &[Vec<u8>],
    ) -> Result<usize, WalletError> {
        if key.key_id() != batch.key_id {
            return Err(WalletError::WrongKey);
        }
        if blind_signatures.len() != batch.tokens.len() {
            return Err(WalletError::CountMismatch {
                expected: batch.tokens.len(),
                got: blind_signatures.len(),
            });
        }
        let mut finished = Vec::with_capacity(batch.tokens.len());
        for (index, (pending, blind_sig)) in batch.tokens.iter().zip(blind_signatures).enumerate() {
            let signature = key
                .finalize(
                    TOKEN_VARIANT,
                    &pending.input.to_bytes(),
                    blind_sig,
                    &pending.inverse,
                )
                .map_err(|source| WalletError::BadIssuerSignature { index, source })?;
            finished.push(WalletToken {
                token: Token {
                    input: pending.input,
                    signature,
                },
                spend_secret: pending.spend_secret.clone(),
            });
        }
        let before = self.tokens.len();
        for token in finished {
            self.insert(token);
        }
        Ok(self.tokens.len() - before)
    }

    /// Takes the next token whose epoch `accept` allows (oldest epoch first, then oldest token).
    pub fn take(&mut self, accept: impl Fn(u32) -> bool) -> Option<WalletToken> {
        let index = self
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| accept(t.token.input.epoch))
            .min_by_key(|(i, t)| (t.token.input.epoch, *i))
            .map(|(i, _)| i)?;
        let token = self.tokens.remove(index)?;
        self.index.remove(&token.token.hash());
        Some(token)
    }

    /// Returns a token that was refused before any claim, to be spent first next time.
    pub fn put_back(&mut self, token: WalletToken) {
        if self.index.insert(token.token.hash()) {
            self.tokens.push_front(token);
        }
    }

    /// Returns a token that is unspent but should wait: it is spent after every other token of its epoch (its
    /// replicas could not form a majority just now, `borrow::Effect::SetTokenAside`).
    pub fn set_aside(&mut self, token: WalletToken) {
        self.insert(token);
    }

    /// Adds an already-verified token (when loading from storage).
    pub fn insert(&mut self, token: WalletToken) {
        if self.index.insert(token.token.hash()) {
            self.tokens.push_back(token);
        }
    }

    /// Whether the wallet holds this token.
    pub fn contains(&self, hash: &TokenHash) -> bool {
        self.index.contains(hash)
    }

    /// Tokens held.
    pub fn balance(&self) -> usize {
        self.tokens.len()
    }

    /// Tokens held for one epoch.
    pub fn balance_in(&self, epoch: u32) -> usize {
        self.tokens
            .iter()
            .filter(|t| t.token.input.epoch == epoch)
            .count()
    }

    /// Drops tokens of epochs before `epoch` (retired; no lender accepts them). Returns how many.
    pub fn prune_before(&mut self, epoch: u32) -> usize {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.token.input.epoch >= epoch);
        self.index = self.tokens.iter().map(|t| t.token.hash()).collect();
        before - self.tokens.len()
    }

    /// Keeps only tokens whose epoch `keep` allows (the others retired); returns how many were dropped.
    pub fn retain_epochs(&mut self, keep: impl Fn(u32) -> bool) -> usize {
        let before = self.tokens.len();
        self.tokens.retain(|t| keep(t.token.input.epoch));
        self.index = self.tokens.iter().map(|t| t.token.hash()).collect();
        before - self.tokens.len()
    }

    /// The tokens, in spending order within an epoch.
    pub fn iter(&self) -> impl Iterator<Item = &WalletToken> {
        self.tokens.iter()
    }
}
