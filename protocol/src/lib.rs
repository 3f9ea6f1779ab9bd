//! # lendmesh-protocol
//!
//! The pure core of lendmesh: everything a group needs to agree on, with no I/O. No sockets, files, threads or
//! clock here — time (`now_ms`, milliseconds since the Unix epoch) and randomness (an RNG) are parameters, so the
//! node runs these state machines in actors and the simulator runs the very same ones in virtual time.
//!
//! ## The problem
//! A trust group pools rate-limited capacity. A member whose own capacity ran out borrows a peer's. The lender must
//! know the borrower is a member (and that each token pays once), but must not learn *which* member.
//!
//! ## The scheme: Chaum blind signatures (RFC 9474)
//! Each epoch the admin's issuer holds an RSA key. A member makes a token input — a fresh ed25519 *spend key* among
//! other fields — blinds it, and asks the issuer to sign. The issuer authenticates the member by its network
//! identity, checks its quota, and signs the blinded message without seeing the input ([`blind_rsa`]). The member
//! unblinds: the result is an ordinary RSASSA-PSS (SHA-384, MGF1-SHA-384, 48-byte salt) signature over the token
//! input that the issuer has never seen, so it cannot link the token to the member when it is spent.
//! Variant: **RSABSSA-SHA384-PSS-Deterministic**.
//!
//! ## Token layout ([`token`])
//! 70 bytes, big-endian: `token_type u16 = 0x4C4D` ‖ `epoch u32` ‖ `key_id [32]` (SHA-256 of the epoch key's SPKI
//! DER) ‖ `spend_key [32]`. Token hash = SHA-256 of those bytes. To spend, the member signs
//! `(token hash, lender PeerId, request digest, time)` with the spend key, so a token handed to one lender cannot be
//! spent by that lender, or anyone who saw it, anywhere else.
//!
//! ## State machines
//! - [`issuer::Issuer`]: roster + epoch key + per-member quota counters; blind-signs batches for active members
//!   within quota. The returned [`issuer::QuotaRecord`] is persisted by the caller *before* signatures leave.
//!   Retries with the same request id are idempotent.
//! - [`wallet::Wallet`]: prepares blinded batches ([`wallet::PendingBatch`] keeps the secrets), finalizes and
//!   verifies the issuer's answers, hands out tokens for spends and takes back ones refused before any claim.
//! - [`redeemer::Redeemer`]: the lender's checks — type, epoch window, key id, signature (ring), spend binding —
//!   then a claim in a [`redeemer::SpentSet`] (a trait: redb in the node, memory in the simulator).
//! - [`attestation::AttestationAcceptor`]: verifies headroom attestations (HMAC tag under the group key + the
//!   sender's ed25519 signature), a ±5 min window, per-peer monotonic `seq` and a bounded replay cache.
//!
//! ## Also here
//! - [`group`]: group id, the pnet pre-shared key (`swarm.key` format), the admin-signed roster and epoch
//!   announcement, the invite file.
//! - [`wire`]: versioned postcard frames for every protocol, size-limited before decoding.
//! - [`claims`]: one spend per token across the group — replica sets over the epoch's frozen roster and the
//!   lender's quorum tally.
//! - [`capability`]: what each lender's upstreams serve (API, models, headroom), so borrows go only where they
//!   can be served.
//! - [`routing`]: lender choice (power of two choices with age-discounted headroom by default) and relay choice.
//! - [`scrub`]: what a borrowed request may carry to a lender — headers by allowlist, identifying body fields
//!   replaced, tool-written environment withheld.
//! - [`subscription`]: what a shared subscription's rate-limit windows (Anthropic's `anthropic-ratelimit-unified-*`,
//!   Codex's `x-codex-*` headers) leave for a request for a given model, and the share a member keeps for itself.
//! - [`exposure`]: what a member's behaviour exposes of its exhaustion — cover borrows, no `none` bucket.
//! - [`limits`]: per-member token buckets on every request surface, and the strikes that disconnect a flooder.
//! - [`ids`]: [`ids::PeerId`] in libp2p's ed25519 encoding, [`ids::GroupId`].

#![deny(missing_docs)]

pub mod attestation;
pub mod backoff;
pub mod bhttp;
pub mod blind_rsa;
pub mod borrow;
pub mod capability;
pub mod claims;
pub mod epoch;
pub mod exposure;
pub mod group;
pub mod headroom;
pub mod health;
pub mod ids;
pub mod issuer;
pub mod lend;
pub mod limits;
pub mod redeemer;
pub mod refill;
pub mod routing;
pub mod scrub;
pub mod subscription;
pub mod token;
pub mod wallet;
pub mod wire;

#[cfg(any(test, feature = "test-keys"))]
pub mod test_keys;

pub use ids::{GroupId, PeerId};

/// Re-exported so callers use the same RNG traits as this crate (rand_core 0.6).
pub use rand_core;
