//! Tokens: the signed token input, its hash, and the spend binding (docs/design.md §4).
//!
//! Token input, 70 bytes, big-endian:
//!
//! | offset | size | field                                                      |
//! |--------|------|------------------------------------------------------------|
//! | 0      | 2    | `token_type` = `0x4C4D` ("LM")                             |
//! | 2      | 4    | `epoch`                                                    |
//! | 6      | 32   | `key_id` = SHA-256 of the epoch issuer key's SPKI DER      |
//! | 38     | 32   | `spend_key`: a fresh ed25519 public key the member keeps   |
//!
//! The issuer blind-signs these bytes (RFC 9474, PSS-Deterministic). The token hash, SHA-256 of them, names the
//! token in spent sets and claims.
//!
//! **Spend binding.** A signed token alone would be a bearer instrument: whoever saw it (a lender) could spend it
//! elsewhere. So a spend also carries an ed25519 signature by the token's spend key over
//! `"lendmesh/spend/v1" ‖ token hash ‖ lender PeerId (38 bytes) ‖ request digest (32) ‖ time_ms (u64)`.
//! A lender accepts only spends bound to itself, for the request it received, at about the current time.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::ids::{PeerId, serde_bytes_compat};

/// The token type lendmesh tokens carry ("LM").
pub const TOKEN_TYPE: u16 = 0x4C4D;
/// Length of the encoded token input.
pub const TOKEN_INPUT_LEN: usize = 70;
const SPEND_DOMAIN: &[u8] = b"lendmesh/spend/v1";

/// Errors reading a token input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The input is not 70 bytes.
    #[error("token input must be {TOKEN_INPUT_LEN} bytes, got {0}")]
    WrongLength(usize),
    /// The spend key is not a valid ed25519 public key.
    #[error("token spend key is not a valid ed25519 public key")]
    BadSpendKey,
}

/// The message the issuer blind-signs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct TokenInput {
    /// Always [`TOKEN_TYPE`] for tokens made here; checked by the redeemer.
    pub token_type: u16,
    /// The epoch whose issuer key signed it.
    pub epoch: u32,
    /// SHA-256 of that key's SPKI DER.
    pub key_id: [u8; 32],
    /// The ed25519 public key that must sign every spend of this token.
    pub spend_key: [u8; 32],
}

impl TokenInput {
    /// A lendmesh token input.
    pub fn new(epoch: u32, key_id: [u8; 32], spend_key: [u8; 32]) -> Self {
        TokenInput {
            token_type: TOKEN_TYPE,
            epoch,
            key_id,
            spend_key,
        }
    }

    /// The fixed 70-byte layout (see the module doc).
    pub fn to_bytes(&self) -> [u8; TOKEN_INPUT_LEN] {
        let mut out = [0u8; TOKEN_INPUT_LEN];
        out[0..2].copy_from_slice(&self.token_type.to_be_bytes());
        out[2..6].copy_from_slice(&self.epoch.to_be_bytes());
        out[6..38].copy_from_slice(&self.key_id);
        out[38..70].copy_from_slice(&self.spend_key);
        out
    }

    /// Parses the fixed layout; the token type is kept as found so the redeemer can refuse it with a reason.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() != TOKEN_INPUT_LEN {
            return Err(TokenError::WrongLength(bytes.len()));
        }
        let mut key_id = [0u8; 32];
        key_id.copy_from_slice(&bytes[6..38]);
        let mut spend_key = [0u8; 32];
        spend_key.copy_from_slice(&bytes[38..70]);
        Ok(TokenInput {
            token_type: u16::from_be_bytes([bytes[0], bytes[1]]),
            epoch: u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
            key_id,
            spend_key,
        })
    }

    /// SHA-256 of the encoded input: the token's name in spent sets.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.to_bytes()).into())
    }
}

/// SHA-256 of a token input.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", hex::encode(&self.0[..8]))
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A finalized token: the input and the issuer's RSASSA-PSS signature over it. Public once spent.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Token {
    /// What was signed.
    pub input: TokenInput,
    /// The finalized signature (modulus length).
    #[serde(with = "serde_bytes_compat::vec")]
    pub signature: Vec<u8>,
}

impl Token {
    /// The token's hash.
    pub fn hash(&self) -> TokenHash {
        self.input.hash()
    }
}

/// The secret half of a token's spend key. Zeroized on drop; never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendSecret([u8; 32]);

impl Drop for SpendSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for SpendSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpendSecret(<redacted>)")
    }
}

impl SpendSecret {
    /// A fresh spend key.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let s = SpendSecret(seed);
        seed.zeroize();
        s
    }

    /// The public key that goes into the token input.
    pub fn public_key(&self) -> [u8; 32] {
        SigningKey::from_bytes(&self.0).verifying_key().to_bytes()
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.0)
    }
}

/// A token the member holds: the public token and its spend secret.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WalletToken {
    /// The public token.
    pub token: Token,
    /// Signs the spend binding.
    pub spend_secret: SpendSecret,
}

impl WalletToken {
    /// Binds this token to one lender and one request (docs/design.md §4 spend binding).
    pub fn spend(&self, lender: PeerId, request_digest: [u8; 32], time_ms: u64) -> TokenSpend {
        let msg = spend_message(&self.token.hash(), &lender, &request_digest, time_ms);
        let signature = self.spend_secret.signing_key().sign(&msg).to_bytes();
        TokenSpend {
            token: self.token.clone(),
            lender,
            request_digest,
            time_ms,
            signature,
        }
    }
}

/// What a borrower sends a lender: the token, bound to that lender and request by the spend key.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TokenSpend {
    /// The token being spent.
    pub token: Token,
    /// The lender it is bound to.
    pub lender: PeerId,
    /// SHA-256 of the request it pays for.
    pub request_digest: [u8; 32],
    /// When the member signed it (ms since the Unix epoch).
    pub time_ms: u64,
    /// ed25519 signature by the token's spend key.
    #[serde(with = "serde_bytes_compat::array64")]
    pub signature: [u8; 64],
}

/// Why a spend binding does not hold.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BindingError {
    /// Bound to another lender.
    #[error("spend is bound to another lender")]
    WrongLender,
    /// Bound to another request.
    #[error("spend is bound to another request")]
    WrongRequest,
    /// Signed too long before or after now.
    #[error("spend time is {skew_ms} ms from now, beyond the allowed {max_ms} ms")]
    TimeSkew {
        /// Distance from now.
        skew_ms: u64,
        /// Allowed distance.
        max_ms: u64,
    },
    /// The spend key is invalid or did not sign this.
    #[error("spend signature does not verify under the token's spend key")]
    BadSignature,
}

impl TokenSpend {
    /// Checks the binding: this lender, this request, about now, signed by the token's spend key.
    pub fn verify_binding(
        &self,
        me: &PeerId,
        request_digest: &[u8; 32],
        now_ms: u64,
        max_skew_ms: u64,
    ) -> Result<(), BindingError> {
        if &self.lender != me {
            return Err(BindingError::WrongLender);
        }
        if &self.request_digest != request_digest {
            return Err(BindingError::WrongRequest);
        }
        let skew_ms = now_ms.abs_diff(self.time_ms);
        if skew_ms > max_skew_ms {
            return Err(BindingError::TimeSkew {
                skew_ms,
                max_ms: max_skew_ms,
            });
        }
        let key =
            VerifyingKey::from_bytes(&self.token.input.spend_key).map_err(|_| BindingError::BadSignature)?;
        let msg = spend_message(
            &self.token.hash(),
            &self.lender,
            &self.request_digest,
            self.time_ms,
        );
        key.verify(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| BindingError::BadSignature)
    }
}

fn spend_message(hash: &TokenHash, lender: &PeerId, digest: &[u8; 32], time_ms: u64) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SPEND_DOMAIN.len() + 32 + 38 + 32 + 8);
    msg.extend_from_slice(SPEND_DOMAIN);
    msg.extend_from_slice(&hash.0);
    msg.extend_from_slice(lender.as_bytes());
    msg.extend_from_slice(digest);
    msg.extend_from_slice(&time_ms.to_be_bytes());
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn peer(seed: u8) -> PeerId {
        PeerId::from_public_key(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    #[test]
    fn layout_is_fixed_and_round_trips() {
        let input = TokenInput::new(0x01020304, [0xaa; 32], [0xbb; 32]);
        let bytes = input.to_bytes();
        assert_eq!(&bytes[..6], &[0x4c, 0x4d, 1, 2, 3, 4]);
        assert_eq!(&bytes[6..38], &[0xaa; 32]);
        assert_eq!(&bytes[38..], &[0xbb; 32]);
        assert_eq!(TokenInput::from_bytes(&bytes).unwrap(), input);
        assert_eq!(
            TokenInput::from_bytes(&bytes[..69]),
            Err(TokenError::WrongLength(69))
        );
        assert_eq!(input.hash().0, <[u8; 32]>::from(Sha256::digest(bytes)));
    }

    #[test]
    fn spend_binding_holds_only_for_its_lender_request_and_time() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let secret = SpendSecret::generate(&mut rng);
        let wt = WalletToken {
            token: Token {
                input: TokenInput::new(1, [1; 32], secret.public_key()),
                signature: vec![0; 256],
            },
            spend_secret: secret,
        };
        let (lender, other) = (peer(1), peer(2));
        let spend = wt.spend(lender, [9; 32], 1_000_000);
        assert_eq!(spend.verify_binding(&lender, &[9; 32], 1_000_500, 60_000), Ok(()));
        assert_eq!(
            spend.verify_binding(&other, &[9; 32], 1_000_000, 60_000),
            Err(BindingError::WrongLender)
        );
        assert_eq!(
            spend.verify_binding(&lender, &[8; 32], 1_000_000, 60_000),
            Err(BindingError::WrongRequest)
        );
        assert!(matches!(
            spend.verify_binding(&lender, &[9; 32], 2_000_000, 60_000),
            Err(BindingError::TimeSkew { .. })
        ));
        // The lender rewrites the binding to itself elsewhere: the signature no longer matches.
        let mut moved = spend.clone();
        moved.lender = other;
        assert_eq!(
            moved.verify_binding(&other, &[9; 32], 1_000_000, 60_000),
            Err(BindingError::BadSignature)
        );
        // A flipped bit in the spend key.
        let mut flipped = spend.clone();
        flipped.token.input.spend_key[0] ^= 1;
        assert_eq!(
            flipped.verify_binding(&lender, &[9; 32], 1_000_000, 60_000),
            Err(BindingError::BadSignature)
        );
        // A flipped bit in the signature.
        let mut bad_sig = spend;
        bad_sig.signature[10] ^= 0x40;
        assert_eq!(
            bad_sig.verify_binding(&lender, &[9; 32], 1_000_000, 60_000),
            Err(BindingError::BadSignature)
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let secret = SpendSecret([0x5a; 32]);
        assert_eq!(format!("{secret:?}"), "SpendSecret(<redacted>)");
    }
}
