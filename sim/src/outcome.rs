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

/// One epoch of a run (scenarios with `[epochs]`). Times are minutes since the run's start, on the admin's clock.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EpochRow {
    /// The epoch number.
    pub epoch: u32,
    /// Its start (the first epoch starts a little before the run, so that no clock is before it).
    pub start_min: f64,
    /// Where it really ended: its announced end, or the rotation that cut it short.
    pub end_min: f64,
    /// Lenders took its tokens until then (end plus grace).
    pub accepted_until_min: f64,
    /// Cut short by an immediate rotation (no grace).
    pub ended_by_rotation: bool,
    /// Announced, then cancelled by a rotation before it began.
    pub cancelled: bool,
    /// Blind signatures made for it.
    pub tokens_issued: u64,
    /// Members the issuer signed for in it.
    pub members_refilled: u64,
    /// The most tokens one member got for it (never above the quota per epoch).
    pub max_issued_per_member: u64,
    /// Members that started a borrow while it was current.
    pub members_borrowing: u64,
    /// Of those, members that got no token of it (their quota was not refilled in this epoch).
    pub borrowing_not_refilled: u64,
    /// Borrows started while it was current.
    pub borrows: u64,
    /// Of those, served.
    pub borrows_served: u64,
    /// Of those, failed.
    pub borrows_failed: u64,
    /// Borrows served with a token of this epoch (in its grace period too).
    pub served_with_its_tokens: u64,
    /// Its tokens still in wallets when it was retired, pruned unspent.
    pub tokens_expired: u64,
    /// Spent-set entries of this epoch when it was retired, summed over lenders (then pruned).
    pub spent_at_retirement: u64,
    /// Members that retired it.
    pub retired_by: u64,
}

/// Demand and borrows in a window of time.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Window {
    /// Requests made.
    pub demand: u64,
    /// Of those, served.
    pub served: u64,
    /// Of those, what the oracle pool would serve (the whole group's capacity, perfect information).
    pub oracle: u64,
    /// Borrows started.
    pub borrows: u64,
    /// Of those, failed.
    pub borrows_failed: u64,
    /// Of those, failed for an epoch reason (see [`EpochRun::epoch_failures`]).
    pub epoch_failures: u64,
}

impl Window {
    /// Served fraction (1 with no demand).
    pub fn served_fraction(&self) -> f64 {
        if self.demand == 0 {
            1.0
        } else {
            ratio(self.served as f64, self.demand as f64)
        }
    }
}

/// One epoch switch: demand just before and just after.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SwitchRow {
    /// The epoch that starts.
    pub epoch: u32,
    /// When, minutes.
    pub at_min: f64,
    /// An immediate rotation (the previous epoch ended with no grace).
    pub rotation: bool,
    /// `[at - window, at)`.
    pub before: Window,
    /// `[at, at + window)`.
    pub after: Window,
}

/// Epochs in one run (scenarios with `[epochs]`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EpochRun {
    /// Every epoch announced, oldest first.
    pub rows: Vec<EpochRow>,
    /// Every switch inside the run.
    pub switches: Vec<SwitchRow>,
    /// Width of the windows before and after a switch, minutes.
    pub switch_window_minutes: f64,
    /// Failed borrows with an epoch-related cause: a lender refused the token's epoch (`epoch_closed`,
    /// `unknown_epoch`, `wrong_key_id`), the wallet held tokens but none spendable now (`no_spendable_token`), or it
    /// was empty because its tokens expired and the refill had not arrived (`tokens_expired`) — in each case with
    /// quota left (`quota_exhausted` is the quota, not the switch).
    pub epoch_failures: u64,
    /// The most epochs one member's book held at once (after retiring).
    pub max_epochs_held: u64,
    /// The most epochs one lender's spent set held entries for at once.
    pub max_spent_epochs: u64,
    /// Announcements a member refused, by reason (must be empty).
    pub adoption_rejections: BTreeMap<String, u64>,
    /// Announcements a member could adopt only later (it still held an epoch the announcement conflicts with).
    pub adoptions_deferred: u64,
}

/// One request kind in a run with mixed upstreams.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct KindRun {
    /// Whether some upstream in the group serves it (if not, every request of it is unserved by design).
    pub servable: bool,
    /// Requests made (member up).
    pub demand: u64,
    /// Served from the member's own upstreams.
    pub served_own: u64,
    /// Served by a lender.
    pub served_borrowed: u64,
    /// Refused at once: no fresh lender serves it (`no_capable_lender`; no token taken, nothing sent).
    pub nobody_serves: u64,
    /// Borrows of it that failed otherwise.
    pub failed: u64,
    /// Attempts sent to lenders for it.
    pub attempts: u64,
    /// Tokens taken from the wallet for it.
    pub tokens_taken: u64,
    /// Of those, given back to the wallet (refused before any claim).
    pub tokens_returned: u64,
}

impl KindRun {
    /// Tokens it cost: taken and not given back (spent, or dropped as possibly claimed).
    pub fn tokens_spent(&self) -> u64 {
        self.tokens_taken.saturating_sub(self.tokens_returned)
    }
}

/// How much of one member's upstreams of one API family was used over a run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DrainRow {
    /// The member.
    pub member: usize,
    /// Its profile.
    pub profile: String,
    /// The family (`openai`, `anthropic`, `generic`).
    pub family: String,
    /// Units of capacity over the run (per window, times the windows the demand spans).
    pub capacity: u64,
    /// Units its own requests used.
    pub own: u64,
    /// Units it lent.
    pub lent: u64,
    /// Borrows other members started for request kinds these upstreams serve (its family's demand for it).
    pub wanted: u64,
}

impl DrainRow {
    /// Share of its capacity used (own requests and lends).
    pub fn drain(&self) -> f64 {
        ratio((self.own + self.lent) as f64, self.capacity as f64)
    }

    /// Share of its capacity lent.
    pub fn lent_share(&self) -> f64 {
        ratio(self.lent as f64, self.capacity as f64)
    }
}

/// Mixed upstreams in one run (scenarios with `[[profiles]]`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MixedRun {
    /// Per request kind, by its description (`model claude-opus-4-1 (anthropic-messages)`).
    pub kinds: BTreeMap<String, KindRun>,
    /// Borrow attempts that reached a lender none of whose upstreams serves the request (`NotServed`; must be 0
    /// while capabilities are attested truthfully).
    pub misrouted: u64,
    /// Requests refused at once because no fresh lender serves them.
    pub nobody_serves: u64,
    /// Per member and family of its upstreams.
    pub drain: Vec<DrainRow>,
}

/// Claims of one kind of spender (honest borrowers, or adversaries) by verdict (`protocol::claims::Verdict`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ClaimCounts {
    /// Claims lenders made (one per redeemed attempt).
    pub claims: u64,
    /// A majority granted: served.
    pub serve: u64,
    /// A majority denied: spent elsewhere, refused.
    pub spent_elsewhere: u64,
    /// Neither claim can win: the token is burnt, refused.
    pub split_vote: u64,
    /// Too few replicas answered; `strict` refused (the grants released, the token unspent).
    pub unreachable_refused: u64,
    /// Too few replicas answered; `lenient` served anyway.
    pub unreachable_served: u64,
}

impl ClaimCounts {
    /// Claims a majority of the token's replicas answered (every verdict but unreachable).
    pub fn majority(&self) -> u64 {
        self.serve + self.spent_elsewhere + self.split_vote
    }
}

/// Group-wide single spend in one run (scenarios with `[claims]`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ClaimsRun {
    /// Claims of honest borrows.
    pub honest: ClaimCounts,
    /// Claims of adversaries' spends.
    pub adversary: ClaimCounts,
    /// Honest claims without a majority of a token that had found none before: its replica set is the token's, so
    /// whichever lender the borrower tries next, the same replicas are asked again.
    pub no_majority_again: u64,
    /// Honest borrows whose lender claimed their token at least once.
    pub borrows_claimed: u64,
    /// Of those, borrows with a claim a majority of the token's replicas answered.
    pub borrows_majority: u64,
    /// From sending an honest claim to its verdict, ms, sorted.
    pub claim_ms: Vec<u64>,
    /// Releases a `strict` lender sent to the replicas that granted a claim it refused.
    pub releases: u64,
    /// Of those, that never reached their replica (each asked up to three times within the timeout): that replica
    /// keeps the claim.
    pub releases_lost: u64,
    /// Replicas that stored a claim a `strict` lender then refused, whose grant never reached the lender (every
    /// answer lost, or the replica cut off after it stored the claim): they get no release and keep the claim, so the
    /// token's next claim meets a denial.
    pub grants_unheard: u64,
    /// Claims replicas refused to vote on, by reason (`ClaimRefusal::label`).
    pub refusals: BTreeMap<String, u64>,
    /// Claims held by the fullest replica store at the end.
    pub max_replica_claims: u64,
    /// Tokens served more than once anywhere in the group, all spenders.
    pub tokens_served_twice: u64,
    /// Of those, honest borrowers' tokens.
    pub honest_tokens_served_twice: u64,
    /// Serves beyond a token's first, all tokens.
    pub extra_serves: u64,
    /// The most lenders that served one token.
    pub max_serves: u64,
    /// Tokens multi-spenders presented (each at several lenders at once).
    pub multi_tokens: u64,
    /// Multi-spenders' tokens by the number of lenders that served them (`"0"`, `"1"`, `"2"`, …).
    pub multi_served_at: BTreeMap<String, u64>,
    /// Claims of its own tokens a scored replica saw (a member knows its own borrows; not scored).
    pub own_claims_seen: u64,
}

/// The node's default per-member limits over a run's honest traffic (`engine::limits`): requests each would admit
/// and throttle, and the most requests one sender sent one receiver within one second, per surface.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LimitsRun {
    /// Admitted, by surface (`issue`, `claim`, `borrow`, `relay`, `gossip`).
    pub admitted: BTreeMap<String, u64>,
    /// Throttled, by surface (must stay empty in honest use).
    pub throttled: BTreeMap<String, u64>,
    /// The busiest second of any sender at any receiver, by surface.
    pub busiest_second: BTreeMap<String, u64>,
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
    /// Requests the member could have served itself, borrowed as cover (`protocol::exposure`).
    #[serde(skip_serializing_if = "is_zero")]
    pub cover_borrows: u64,
    /// Requests the member could have served itself, borrowed because its own headroom was below the request's
    /// threshold (`protocol::exposure`).
    #[serde(skip_serializing_if = "is_zero")]
    pub early_borrows: u64,
    /// Events processed.
    pub events: u64,
    /// Safety or liveness violations (must be empty).
    pub violations: Vec<String>,
    /// Epochs (scenarios with `[epochs]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<EpochRun>,
    /// Mixed upstreams (scenarios with `[[profiles]]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixed: Option<MixedRun>,
    /// Group-wide single spend (scenarios with `[claims]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<ClaimsRun>,
    /// The node's per-member limits over the honest traffic.
    pub limits: LimitsRun,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
