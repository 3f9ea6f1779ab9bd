//! Counters the actors bump. Plain atomics shared by every actor (no domain state behind them); the inspection
//! endpoints export them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Node-wide event counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections closed because the peer is not an active roster member.
    pub connections_refused: AtomicU64,
    /// Failed connection attempts (a wrong group key shows up here).
    pub connection_errors: AtomicU64,
    /// Inbound request-response failures (oversized or malformed frames, timeouts).
    pub inbound_failures: AtomicU64,
    /// Gossip messages that did not decode.
    pub gossip_malformed: AtomicU64,
    /// Network events dropped because a consumer lagged.
    pub net_events_dropped: AtomicU64,
    /// Attestations accepted.
    pub attestations_accepted: AtomicU64,
    /// Attestations rejected (any reason; reasons are logged).
    pub attestations_rejected: AtomicU64,
    /// Attestations this node published.
    pub attestations_published: AtomicU64,
    /// Tokens this issuer signed.
    pub tokens_issued: AtomicU64,
    /// Issue requests refused.
    pub issue_refused: AtomicU64,
    /// Tokens this member received (finalized and stored).
    pub tokens_received: AtomicU64,
    /// Tokens taken from the wallet for borrows.
    pub tokens_spent: AtomicU64,
    /// Requests served from this member's own upstream.
    pub served_locally: AtomicU64,
    /// Borrows that got a response.
    pub borrows_ok: AtomicU64,
    /// Borrows that failed (every cause).
    pub borrows_failed: AtomicU64,
    /// Borrows this lender served.
    pub lends_served: AtomicU64,
    /// Borrows this lender refused (no headroom, bad token, stale key, upstream refusal).
    pub lends_refused: AtomicU64,
    /// Sealed requests relayed.
    pub relays_ok: AtomicU64,
    /// Relays that failed.
    pub relays_failed: AtomicU64,
    /// Borrows being served right now (a gauge).
    pub lends_in_flight: AtomicU64,
    /// Claims answered as a replica.
    pub claims_answered: AtomicU64,
}

impl Counters {
    /// Adds one.
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one (a token returned unspent).
    pub fn dec(&self, c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
