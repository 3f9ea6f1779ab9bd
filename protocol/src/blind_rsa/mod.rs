//! RSA blind signatures, RFC 9474.
//!
//! lendmesh uses **RSABSSA-SHA384-PSS-Deterministic** ([`Variant::PSS_DETERMINISTIC`]): the message is signed as
//! is (its randomness comes from the token's fresh spend key), PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt.
//! The other three variants of RFC 9474 §5 are implemented too, so all four published vectors are checked.
//!
//! The protocol, in the RFC's words:
//! 1. the client `prepare`s its message (a random prefix for the Randomized variants, nothing otherwise);
//! 2. `blind`: PSS-encode it with a fresh salt into `m`, pick a random `r`, send `m · rᵉ mod n`; keep `r⁻¹`;
//! 3. the issuer `blind_sign`s: `s' = (m · rᵉ)ᵈ mod n` — through the `rsa` crate's blinded, CRT-checked private
//!    operation ([`rsa::hazmat::rsa_decrypt_and_check`]), never a hand-rolled exponentiation with `d`;
//! 4. the client `finalize`s: `s = s' · r⁻¹ mod n`, and checks it as an ordinary RSASSA-PSS signature.
//!
//! Because `r` is uniform and secret, `m · rᵉ` is uniform too: the issuer learns nothing about `m` or `s`.
//! The final signature is a standard RSASSA-PSS signature, so any verifier accepts it; the lender's hot path uses
//! ring's verifier ([`PublicKey::verify_ring`]), and the `rsa` crate's ([`PublicKey::verify_rsa_crate`]) is the
//! independent second opinion.
//!
//! Blinding arithmetic uses `num-bigint`; the secret-key operation stays inside the `rsa` crate.

use num_bigint::BigUint;
use num_integer::Integer;
use num_traits::{One, Zero};
use rand_core::CryptoRngCore;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

/// SHA-384 output length, and the salt length of the PSS variants.
pub const HASH_LEN: usize = 48;
/// Length of a randomized variant's message prefix (RFC 9474 §4.1).
pub const PREFIX_LEN: usize = 32;

/// Errors of the blind-signature scheme. Each names what was wrong with the input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BlindRsaError {
    /// Only 2048-, 3072- and 4096-bit keys are used.
    #[error("unsupported RSA key size {bits} bits; use 2048, 3072 or 4096")]
    UnsupportedKeySize {
        /// The size asked for or found.
        bits: usize,
    },
    /// Key generation failed.
    #[error("RSA key generation failed: {0}")]
    KeyGeneration(String),
    /// A key could not be decoded or encoded.
    #[error("RSA key encoding: {0}")]
    KeyEncoding(String),
    /// The message cannot be PSS-encoded under this key (RFC 9474 "message too long"/"encoding error").
    #[error("message cannot be PSS-encoded under this key")]
    Encoding,
    /// The encoded message shares a factor with the modulus (RFC 9474 "invalid input").
    #[error("encoded message is not coprime with the modulus")]
    InvalidInput,
    /// A blinded message, blind signature or signature has the wrong length.
    #[error("wrong length: expected {expected} bytes, got {got}")]
    WrongLength {
        /// The modulus length in bytes.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A value is not below the modulus.
    #[error("value is not below the modulus")]
    OutOfRange,
    /// The private operation failed (including its fault check).
    #[error("blind signing failed")]
    SigningFailed,
    /// The signature does not verify.
    #[error("signature does not verify")]
    VerificationFailed,
    /// A blinding inverse is malformed.
    #[error("malformed blinding inverse")]
    BadInverse,
}

/// One of RFC 9474's four RSABSSA-SHA384 variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// PSS salt length: 48 for the PSS variants, 0 for PSSZERO.
    pub salt_len: usize,
    /// Whether `prepare` adds a random 32-byte prefix.
    pub randomized: bool,
}

impl Variant {
    /// RSABSSA-SHA384-PSS-Randomized.
    pub const PSS_RANDOMIZED: Variant = Variant {
        salt_len: HASH_LEN,
        randomized: true,
    };
    /// RSABSSA-SHA384-PSSZERO-Randomized.
    pub const PSSZERO_RANDOMIZED: Variant = Variant {
        salt_len: 0,
        randomized: true,
    };
    /// RSABSSA-SHA384-PSS-Deterministic: lendmesh's tokens.
    pub const PSS_DETERMINISTIC: Variant = Variant {
        salt_len: HASH_LEN,
        randomized: false,
    };
    /// RSABSSA-SHA384-PSSZERO-Deterministic.
    pub const PSSZERO_DETERMINISTIC: Variant = Variant {
        salt_len: 0,
        randomized: false,
    };

    /// The RFC's name for the variant.
    pub fn name(&self) -> &'static str {
        match (self.salt_len, self.randomized) {
            (HASH_LEN, true) => "RSABSSA-SHA384-PSS-Randomized",
            (0, true) => "RSABSSA-SHA384-PSSZERO-Randomized",
            (HASH_LEN, false) => "RSABSSA-SHA384-PSS-Deterministic",
            (0, false) => "RSABSSA-SHA384-PSSZERO-Deterministic",
            _ => "RSABSSA-SHA384 (non-standard salt)",
        }
    }

    /// Looks a variant up by its RFC name.
    pub fn from_name(name: &str) -> Option<Variant> {
        [
            Self::PSS_RANDOMIZED,
            Self::PSSZERO_RANDOMIZED,
            Self::PSS_DETERMINISTIC,
            Self::PSSZERO_DETERMINISTIC,
        ]
        .into_iter()
        .find(|v| v.name() == name)
    }
}

/// Issuer key sizes lendmesh allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum KeySize {
    /// 2048 bits: faster, for tests and small groups with short epochs.
    Rsa2048,
    /// 3072 bits: the default (about 128-bit security).
    #[default]
    Rsa3072,
    /// 4096 bits.
    Rsa4096,
}

impl KeySize {
    /// The modulus size in bits.
    pub fn bits(self) -> usize {
        match self {
            KeySize::Rsa2048 => 2048,
            KeySize::Rsa3072 => 3072,
            KeySize::Rsa4096 => 4096,
        }
    }

    /// The size for a bit count, if allowed.
    pub fn from_bits(bits: usize) -> Result<KeySize, BlindRsaError> {
        match bits {
            2048 => Ok(KeySize::Rsa2048),
            3072 => Ok(KeySize::Rsa3072),
            4096 => Ok(KeySize::Rsa4096),
            _ => Err(BlindRsaError::UnsupportedKeySize { bits }),
        }
    }
}

/// An issuer's public key, with everything a verifier needs precomputed.
#[derive(Clone)]
pub struct PublicKey {
    rsa: rsa::RsaPublicKey,
    n: BigUint,
    e: BigUint,
    n_bytes: Vec<u8>,
    e_bytes: Vec<u8>,
    modulus_bits: usize,
    spki_der: Vec<u8>,
    key_id: [u8; 32],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicKey({} bits, key id {})",
            self.modulus_bits,
            hex::encode(&self.key_id[..8])
        )
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}
impl Eq for PublicKey {}

impl PublicKey {
    fn from_rsa(rsa: rsa::RsaPublicKey) -> Result<Self, BlindRsaError> {
        let modulus_bits = rsa.n().bits();
        if !(2048..=4096).contains(&modulus_bits) {
            return Err(BlindRsaError::UnsupportedKeySize { bits: modulus_bits });
        }
        let spki_der = rsa
            .to_public_key_der()
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?
            .as_bytes()
            .to_vec();
        let key_id: [u8; 32] = Sha256::digest(&spki_der).into();
        let n_bytes = rsa.n().to_bytes_be();
        let e_bytes = rsa.e().to_bytes_be();
        Ok(PublicKey {
            n: BigUint::from_bytes_be(&n_bytes),
            e: BigUint::from_bytes_be(&e_bytes),
            n_bytes,
            e_bytes,
            modulus_bits,
            spki_der,
            key_id,
            rsa,
        })
    }

    /// Reads a SubjectPublicKeyInfo DER encoding.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, BlindRsaError> {
        let rsa = rsa::RsaPublicKey::from_public_key_der(der)
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    /// Reads a PEM `PUBLIC KEY` (SPKI) block.
    pub fn from_pem(pem: &str) -> Result<Self, BlindRsaError> {
        let rsa = rsa::RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    /// The SubjectPublicKeyInfo DER encoding.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The PEM `PUBLIC KEY` (SPKI) encoding.
    pub fn to_pem(&self) -> Result<String, BlindRsaError> {
        self.rsa
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))
    }

    /// The key id: SHA-256 of the SPKI DER encoding (docs/design.md §4).
    pub fn key_id(&self) -> [u8; 32] {
        self.key_id
    }

    /// Modulus size in bytes: the length of blinded messages and signatures.
    pub fn modulus_len(&self) -> usize {
        self.modulus_bits.div_ceil(8)
    }

    /// Modulus size in bits.
    pub fn modulus_bits(&self) -> usize {
        self.modulus_bits
    }

    /// Blinds a prepared message: returns the blinded message for the issuer and the inverse to keep.
    pub fn blind(
        &self,
        variant: Variant,
        prepared_msg: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Vec<u8>, BlindInverse), BlindRsaError> {
        let mut salt = vec![0u8; variant.salt_len];
        rng.fill_bytes(&mut salt);
        let encoded = emsa_pss_encode(prepared_msg, self.modulus_bits - 1, &salt)?;
        let m = BigUint::from_bytes_be(&encoded);
        if !m.gcd(&self.n).is_one() {
            return Err(BlindRsaError::InvalidInput);
        }
        let (r, inv) = loop {
            let r = self.random_below_n(rng);
            if r.is_zero() {
                continue;
            }
            if let Some(inv) = r.modinv(&self.n) {
                break (r, inv);
            }
        };
        let blinded = self.blind_encoded(&m, &r);
        Ok((blinded, BlindInverse::from_biguint(&inv, self.modulus_len())))
    }

    /// `m · rᵉ mod n`, as bytes of the modulus length.
    fn blind_encoded(&self, m: &BigUint, r: &BigUint) -> Vec<u8> {
        let x = r.modpow(&self.e, &self.n);
        let z = (m * x) % &self.n;
        i2osp(&z.to_bytes_be(), self.modulus_len())
    }

    /// Recomputes a blinded message from an encoded message and a known blinding inverse — the RFC's test
    /// vectors publish `inv`, not `r`. Only for known-answer tests.
    #[doc(hidden)]
    pub fn blind_with_inverse_for_test(
        &self,
        prepared_msg: &[u8],
        salt: &[u8],
        inv: &BlindInverse,
    ) -> Result<Vec<u8>, BlindRsaError> {
        let encoded = emsa_pss_encode(prepared_msg, self.modulus_bits - 1, salt)?;
        let m = BigUint::from_bytes_be(&encoded);
        let r = inv
            .to_biguint()
            .modinv(&self.n)
            .ok_or(BlindRsaError::BadInverse)?;
        Ok(self.blind_encoded(&m, &r))
    }

    /// Uniform in `[0, n)` by rejection sampling.
    fn random_below_n(&self, rng: &mut impl CryptoRngCore) -> BigUint {
        let len = self.modulus_len();
        let top_bits = self.modulus_bits - 8 * (len - 1);
        let mask = if top_bits == 8 {
            0xff
        } else {
            (1u8 << top_bits) - 1
        };
        let mut buf = Zeroizing::new(vec![0u8; len]);
        loop {
            rng.fill_bytes(&mut buf);
            buf[0] &= mask;
            let r = BigUint::from_bytes_be(&buf);
            if r < self.n {
                return r;
            }
        }
    }

    /// Unblinds the issuer's blind signature and checks the result (RFC 9474 `Finalize`).
    pub fn finalize(
        &self,
        variant: Variant,
        prepared_msg: &[u8],
        blind_sig: &[u8],
        inv: &BlindInverse,
    ) -> Result<Vec<u8>, BlindRsaError> {
        self.check_len(blind_sig.len())?;
        let z = BigUint::from_bytes_be(blind_sig);
        if z >= self.n {
            return Err(BlindRsaError::OutOfRange);
        }
        let inv = inv.to_biguint();
        if inv >= self.n || inv.is_zero() {
            return Err(BlindRsaError::BadInverse);
        }
        let s = (z * inv) % &self.n;
        let sig = i2osp(&s.to_bytes_be(), self.modulus_len());
        self.verify(variant, prepared_msg, &sig)?;
        Ok(sig)
    }

    /// Verifies a finalized signature: ring for the PSS variants (48-byte salt), the `rsa` crate for PSSZERO,
    /// which ring does not support.
    pub fn verify(&self, variant: Variant, prepared_msg: &[u8], sig: &[u8]) -> Result<(), BlindRsaError> {
        if variant.salt_len == HASH_LEN {
            self.verify_ring(prepared_msg, sig)
        } else {
            self.verify_rsa_crate(variant, prepared_msg, sig)
        }
    }

    /// RSASSA-PSS (SHA-384, MGF1-SHA-384, 48-byte salt) verification with ring: the lender's hot path.
    pub fn verify_ring(&self, msg: &[u8], sig: &[u8]) -> Result<(), BlindRsaError> {
        self.check_len(sig.len())?;
        let key = ring::signature::RsaPublicKeyComponents {
            n: &self.n_bytes,
            e: &self.e_bytes,
        };
        key.verify(&ring::signature::RSA_PSS_2048_8192_SHA384, msg, sig)
            .map_err(|_| BlindRsaError::VerificationFailed)
    }

    /// RSASSA-PSS verification with the `rsa` crate: an independent second verifier.
    pub fn verify_rsa_crate(&self, variant: Variant, msg: &[u8], sig: &[u8]) -> Result<(), BlindRsaError> {
        self.check_len(sig.len())?;
        let hashed = Sha384::digest(msg);
        let scheme = rsa::Pss::new_with_salt::<Sha384>(variant.salt_len);
        self.rsa
            .verify(scheme, &hashed, sig)
            .map_err(|_| BlindRsaError::VerificationFailed)
    }

    fn check_len(&self, got: usize) -> Result<(), BlindRsaError> {
        let expected = self.modulus_len();
        if got != expected {
            return Err(BlindRsaError::WrongLength { expected, got });
        }
        Ok(())
    }
}

/// The issuer's secret key.
#[derive(Clone)]
pub struct SecretKey {
    rsa: rsa::RsaPrivateKey,
    public: PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(<redacted>, public: {:?})", self.public)
    }
}

impl SecretKey {
    /// Generates a fresh issuer key (public exponent 65537).
    pub fn generate(size: KeySize, rng: &mut impl CryptoRngCore) -> Result<Self, BlindRsaError> {
        let rsa = rsa::RsaPrivateKey::new(rng, size.bits())
            .map_err(|e| BlindRsaError::KeyGeneration(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    fn from_rsa(mut rsa: rsa::RsaPrivateKey) -> Result<Self, BlindRsaError> {
        rsa.validate()
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        rsa.precompute()
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        let public = PublicKey::from_rsa(rsa.to_public_key())?;
        Ok(SecretKey { rsa, public })
    }

    /// Builds a key from big-endian `n, e, d, p, q` (for the RFC's test vectors).
    pub fn from_components(n: &[u8], e: &[u8], d: &[u8], p: &[u8], q: &[u8]) -> Result<Self, BlindRsaError> {
        let big = rsa::BigUint::from_bytes_be;
        let rsa = rsa::RsaPrivateKey::from_components(big(n), big(e), big(d), vec![big(p), big(q)])
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    /// Reads PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, BlindRsaError> {
        let rsa =
            rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, BlindRsaError> {
        let rsa =
            rsa::RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    /// PKCS#8 DER; zeroized when dropped.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, BlindRsaError> {
        let doc = self
            .rsa
            .to_pkcs8_der()
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// PEM `PRIVATE KEY` (PKCS#8); zeroized when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, BlindRsaError> {
        self.rsa
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| BlindRsaError::KeyEncoding(e.to_string()))
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs a blinded message (RFC 9474 `BlindSign`): `s = mᵈ mod n` through the `rsa` crate's private operation
    /// with its own base blinding (`rng`) and CRT fault check (`sᵉ = m`).
    pub fn blind_sign(
        &self,
        blinded_msg: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, BlindRsaError> {
        self.public.check_len(blinded_msg.len())?;
        let m = rsa::BigUint::from_bytes_be(blinded_msg);
        if &m >= self.rsa.n() {
            return Err(BlindRsaError::OutOfRange);
        }
        let s = rsa::hazmat::rsa_decrypt_and_check(&self.rsa, Some(rng), &m)
            .map_err(|_| BlindRsaError::SigningFailed)?;
        Ok(i2osp(&s.to_bytes_be(), self.public.modulus_len()))
    }
}

/// The blinding inverse `r⁻¹ mod n` a client keeps between `blind` and `finalize`. Secret: with it, the issuer's
/// view of this token could be linked to the final signature. Zeroized on drop; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlindInverse(#[serde(with = "crate::ids::serde_bytes_compat::vec")] Vec<u8>);

impl Drop for BlindInverse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for BlindInverse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindInverse(<redacted>)")
    }
}

impl BlindInverse {
    fn from_biguint(v: &BigUint, len: usize) -> Self {
        BlindInverse(i2osp(&v.to_bytes_be(), len))
    }

    /// Reads big-endian bytes (as published in the RFC's vectors).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        BlindInverse(bytes.to_vec())
    }

    fn to_biguint(&self) -> BigUint {
        BigUint::from_bytes_be(&self.0)
    }
}

/// RFC 9474 `Prepare`: the identity for the Deterministic variants; a random 32-byte prefix otherwise.
pub fn prepare(variant: Variant, msg: &[u8], rng: &mut impl CryptoRngCore) -> Vec<u8> {
    if variant.randomized {
        let mut out = vec![0u8; PREFIX_LEN + msg.len()];
        rng.fill_bytes(&mut out[..PREFIX_LEN]);
        out[PREFIX_LEN..].copy_from_slice(msg);
        out
    } else {
        msg.to_vec()
    }
}

/// Left-pads big-endian bytes to `len` (I2OSP). Callers pass values below the modulus, so they always fit.
fn i2osp(bytes: &[u8], len: usize) -> Vec<u8> {
    let bytes = &bytes[bytes.len().saturating_sub(len)..];
    let mut out = vec![0u8; len];
    out[len - bytes.len()..].copy_from_slice(bytes);
    out
}

/// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) with SHA-384 and MGF1-SHA-384, for a given salt.
fn emsa_pss_encode(msg: &[u8], em_bits: usize, salt: &[u8]) -> Result<Vec<u8>, BlindRsaError> {
    let em_len = em_bits.div_ceil(8);
    if em_len < HASH_LEN + salt.len() + 2 {
        return Err(BlindRsaError::Encoding);
    }
    let m_hash = Sha384::digest(msg);
    let mut hasher = Sha384::new();
    hasher.update([0u8; 8]);
    hasher.update(m_hash);
    hasher.update(salt);
    let h = hasher.finalize();

    let db_len = em_len - HASH_LEN - 1;
    let mut db = vec![0u8; db_len];
    db[db_len - salt.len() - 1] = 0x01;
    db[db_len - salt.len()..].copy_from_slice(salt);
    mgf1_xor(&h, &mut db);
    let unused_bits = 8 * em_len - em_bits;
    db[0] &= 0xffu8 >> unused_bits;

    let mut em = db;
    em.extend_from_slice(&h);
    em.push(0xbc);
    Ok(em)
}

/// XORs MGF1-SHA-384(seed) into `out`.
fn mgf1_xor(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(HASH_LEN).enumerate() {
        let mut hasher = Sha384::new();
        hasher.update(seed);
        hasher.update((counter as u32).to_be_bytes());
        let mask = hasher.finalize();
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
    }
}

#[cfg(test)]
mod tests;
