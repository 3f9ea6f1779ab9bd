//! The group's attestation key and HMAC-SHA256 (RFC 2104, checked against RFC 4231's vectors): a leaf, so the
//! group material can hold the key without depending on the attestation rules.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroize;

const TAG_DOMAIN: &[u8] = b"lendmesh/attestation-tag/v1";

/// HMAC-SHA256 of `data` under `key` (RFC 2104 / RFC 4231).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The group's attestation key (32 bytes, HMAC-SHA256). Secret: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationKey([u8; 32]);

impl Drop for AttestationKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttestationKey(<redacted>)")
    }
}

impl AttestationKey {
    /// A fresh random key.
    pub fn random(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        let key = AttestationKey(k);
        k.zeroize();
        key
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        AttestationKey(bytes)
    }

    pub(super) fn tag(&self, body: &[u8]) -> [u8; 32] {
        let mut data = TAG_DOMAIN.to_vec();
        data.extend_from_slice(body);
        hmac_sha256(&self.0, &data)
    }
}
