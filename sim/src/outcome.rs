//! What one run measured. Everything here is ordered (`BTreeMap`, `Vec`) so its JSON is byte-for-byte reproducible.

use std::collections::BTreeMap;

use serde::Serialize;

/// A linkage attacker's tally: how often it named the right borrower, and what chance would give.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Linkage {
    /// Borrows it guessed on.
    pub guesses: u64,
    /// Right guesses.
    pub correct: u64,
    /// Sum over guesses of 1 / (plausible members): the expected right guesses of a blind guesser.
    pub chance_sum: f64,
}

impl Linkage {
    /// Records one guess.
    pub fn record(&mut self, right: bool, plausible: usize) {
        self.guesses += 1;
        self.correct += u64::from(right);
        self.chance_sum += 1.0 / plausible.max(1) as f64;
    }

    /// Fraction right.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct as f64, self.guesses as f64)
    }

    /// Mean chance level.
    pub fn chance(&self) -> f64 {
        ratio(self.chance_sum, self.guesses as f64)
    }
}

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Adversary members' attempts and how the protocol answered.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Attacks {
    /// Attempts by kind (`replay_same_lender`, `spend_at_wrong_lender`, `rebound_other_lender`, `forged_token`,
    /// `replayed_attestation`, `forged_attestation`).
    pub attempts: BTreeMap<String, u64>,
    /// Answers by kind and outcome (`kind/served`, `kind/refused:<reason>`, `kind/accepted`, `kind/lost`).
    pub outcomes: BTreeMap<String, u64>,
}

impl Attacks {
    /// Counts an attempt.
    pub fn attempt(&mut self, kind: &str) {
        *self.attempts.entry(kind.to_owned()).or_default() += 1;
    }
    /// Counts an outcome.
    pub fn outcome(&mut self, kind: &str, outcome: &str) {
        *self.outcomes.entry(format!("{kind}/{outcome}")).or_default() += 1;
    }
}

/// Demand and service in one time bin.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Bin {
    /// Requests made.
    pub demand: u64,
    /// Requests served (own capacity or borrowed).
    pub served: u64,
    /// Served if every member were alone.
    pub no_sharing: u64,
    /// Served by an oracle pool of the whole group's capacity.
    pub oracle: u64,
}

/// One run's measurements.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RunResult {
    /// The seed.
    pub seed: u64,
    /// Requests made while the member was up.
    pub demand: u64,
    /// Requests made while the member was down (not counted as demand).
    pub offline_requests: u64,
    /// Served from the member's own capacity.
    pub served_own: u64,
    /// Served by a lender.
    pub served_borrowed: u64,
    /// Unserved requests by cause.
    pub failures: BTreeMap<String, u64>,
    /// Served fraction with pooling.
    pub served_fraction: f64,
    /// Served fraction with no sharing.
    pub no_sharing_fraction: f64,
    /// Served fraction of the oracle pool.
    pub oracle_fraction: f64,
    /// Borrow latencies (request to answer), ms, sorted.
    pub borrow_latency_ms: Vec<u64>,
    /// Borrowed requests served by each member.
    pub lender_load: Vec<u64>,
    /// Jain's fairness index of lender load relative to each lender's capacity.
    pub jain: f64,
    /// Max over mean of the lender load (herding: 1 is perfectly even).
    pub herding: f64,
    /// Served over time.
    pub bins: Vec<Bin>,
    /// Bin width, minutes.
    pub bin_minutes: f64,
    /// Linkage attackers: `lender` (bucketed headroom), `lender-exact`, `relay`, `admin`.
    pub linkage: BTreeMap<String, Linkage>,
    /// Adversary members.
    pub attacks: Attacks,
    /// Attestations refused by honest acceptors, by reason.
    pub attestation_rejections: BTreeMap<String, u64>,
    /// Borrows that went without a relay (best-effort mode only).
    pub direct_borrows: u64,
    /// Tokens issued (blind signatures made).
    pub tokens_issued: u64,
    /// Borrow attempts sent to lenders (including failovers and retries).
    pub borrow_messages: u64,
    /// Events processed.
    pub events: u64,
    /// Safety or liveness violations (must be empty).
    pub violations: Vec<String>,
}
