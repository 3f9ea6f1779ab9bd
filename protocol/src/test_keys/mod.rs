//! Fixed RSA keys for tests and benchmarks, so they need not generate keys (slow in debug builds).
//!
//! **Never use these for a real group**: their private halves are published in this repository. Compiled only for
//! this crate's tests and with the `test-keys` feature, which only test and bench crates enable.

use crate::blind_rsa::SecretKey;

/// A fixed 2048-bit issuer key.
pub fn rsa_2048() -> SecretKey {
    SecretKey::from_pkcs8_pem(include_str!("rsa2048.pem")).unwrap_or_else(|e| panic!("test key: {e}"))
}

/// A fixed 3072-bit issuer key.
pub fn rsa_3072() -> SecretKey {
    SecretKey::from_pkcs8_pem(include_str!("rsa3072.pem")).unwrap_or_else(|e| panic!("test key: {e}"))
}
