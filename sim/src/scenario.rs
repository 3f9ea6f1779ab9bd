//! Scenarios: what group to simulate, read from TOML (untrusted input: size-limited, validated, never a panic).

use lendmesh_protocol::borrow::DEFAULT_MAX_ATTEMPTS;
use lendmesh_protocol::routing::Policy;
use serde::{Deserialize, Serialize};

mod claims;
mod profiles;

pub use claims::{Churn, Claims, ClaimsMode};
pub use profiles::{
    CapacityRange, MAX_DEMAND_FACTOR, MAX_PROFILE_NAME, MAX_PROFILES, MAX_REQUEST_KINDS, Profile,
    RequestKind, UpstreamSpec,
};

/// Scenario files larger than this are refused before parsing: real scenarios are a few kilobytes, and a bound
/// keeps a mistaken path (a log, a binary) from being read whole into the TOML parser.
pub const MAX_SCENARIO_BYTES: usize = 64 * 1024;

/// The most members a scenario may have (the protocol's roster limit is higher; runtime grows with members²).
pub const MAX_MEMBERS: usize = 200;

/// The longest virtual duration a scenario may ask for.
pub const MAX_DURATION_HOURS: f64 = 24.0 * 7.0;

/// Upper bound on a scenario's expected requests (members × rate × burst factor × (1 + skew) × hours): the trace
/// is held in memory, about 24 bytes a request, and each request is at least one event.
pub const MAX_EXPECTED_REQUESTS: f64 = 20_000_000.0;

/// A scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file is larger than [`MAX_SCENARIO_BYTES`].
    #[error(
        "scenario is {size} bytes, more than the {MAX_SCENARIO_BYTES}-byte limit; is this the right file?"
    )]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The TOML does not parse or has unknown fields.
    #[error("scenario is not valid TOML for lendmesh-sim: {0}")]
    Parse(String),
    /// A field is out of range.
    #[error("scenario field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

/// Whether a borrower may go without a relay (docs/design.md §6 step 6): `protocol`'s own setting, so a scenario's
/// `privacy = "strict"` / `"best-effort"` means what the node's `privacy` borrow setting means.
pub use lendmesh_protocol::borrow::PrivacyMode;

/// Per-member capacity: uniform between `min` and `max` requests per window (of each upstream whose profile sets
/// no range of its own).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Smallest capacity per window.
    pub min: u32,
    /// Largest capacity per window.
    pub max: u32,
    /// Window length in minutes (capacity resets at every multiple).
    pub window_minutes: f64,
}

/// Each member's demand: Poisson, with a skew across members, bursts and quiet hours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demand {
    /// Mean requests per hour per member (before skew, bursts and quiet hours).
    pub mean_per_hour: f64,
    /// Zipf exponent across members (0 = all alike; 1 = the busiest has twice the second's rate, …).
    #[serde(default)]
    pub skew: f64,
    /// Bursts per member per hour.
    #[serde(default)]
    pub bursts_per_hour: f64,
    /// Rate multiplier during a burst.
    #[serde(default = "one")]
    pub burst_factor: f64,
    /// Burst length in minutes.
    #[serde(default = "ten")]
    pub burst_minutes: f64,
    /// Quiet hours of each day, `[start, end)` in hours 0–24 (may wrap midnight).
    #[serde(default)]
    pub quiet_hours: Option<[f64; 2]>,
    /// Rate multiplier during quiet hours.
    #[serde(default = "quiet")]
    pub quiet_factor: f64,
}

fn one() -> f64 {
    1.0
}
fn ten() -> f64 {
    10.0
}
fn quiet() -> f64 {
    0.1
}

/// The simulated network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Median one-way latency of a link in ms; each link's base is 0.5–1.5× this.
    pub latency_ms: f64,
    /// Mean of the exponential jitter added to every message, ms.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Probability a message is lost.
    #[serde(default)]
    pub loss: f64,
    /// Each node's clock is off by a uniform amount in ±this, ms.
    #[serde(default)]
    pub clock_skew_ms: f64,
    /// Mean gossip delay of an attestation to each receiver, ms (several hops).
    #[serde(default = "gossip")]
    pub gossip_delay_ms: f64,
}

fn gossip() -> f64 {
    500.0
}

/// A partition: `members` cannot reach the rest between `start_min` and `end_min`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Start, minutes into the run.
    pub start_min: f64,
    /// End, minutes into the run.
    pub end_min: f64,
    /// Member indices on the cut-off side.
    pub members: Vec<usize>,
}

/// A crash: `member` is down between `at_min` and `restart_min` (wallet and spent set survive; memory does not).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    /// Member index.
    pub member: usize,
    /// Crash time, minutes into the run.
    pub at_min: f64,
    /// Restart time, minutes into the run.
    pub restart_min: f64,
}

/// A clock fault: `member`'s clock is off by `skew_ms` for the whole run (on top of the network's random skew).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSkew {
    /// Member index.
    pub member: usize,
    /// Offset in ms (negative: behind).
    pub skew_ms: i64,
}

/// Faults injected during the run (all healed in the liveness phase, except clock skew, which a restart does not
/// fix).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Members with a badly set clock.
    #[serde(default)]
    pub clock_skews: Vec<ClockSkew>,
    /// Partitions.
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Crashes.
    #[serde(default)]
    pub crashes: Vec<Crash>,
    /// Every member going down and coming back (absent: only the crashes above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
}

/// Adversarial members (taken from the end of the member list; they also behave as honest lenders).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adversaries {
    /// Members who spend one token at several lenders and replay spends.
    #[serde(default)]
    pub double_spenders: usize,
    /// Members who present tokens with random signature bytes.
    #[serde(default)]
    pub forgers: usize,
    /// Members who replay other members' old attestations.
    #[serde(default)]
    pub attestation_replayers: usize,
    /// Members who send attestations tagged with a wrong key or naming another peer.
    #[serde(default)]
    pub attestation_forgers: usize,
    /// Seconds between two attacks of one adversary.
    #[serde(default = "attack_period")]
    pub period_s: f64,
    /// Members who present one token at several lenders at once, the spend re-bound to each (the double spend
    /// group-wide claims stop, docs/design.md §7).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub multi_spenders: usize,
    /// Lenders a multi-spender presents each token at, at once (default [`DEFAULT_MULTI_SPEND_LENDERS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_spend_lenders: Option<usize>,
    /// The multi-spender also lies as a replica: it spends only tokens it is a replica of, and grants every claim of
    /// them (claims assume honest replicas; this measures what one dishonest replica does).
    #[serde(default, skip_serializing_if = "is_false")]
    pub multi_spend_as_replica: bool,
}

/// Lenders a multi-spender presents one token at by default.
pub const DEFAULT_MULTI_SPEND_LENDERS: usize = 4;

fn is_zero(x: &usize) -> bool {
    *x == 0
}

fn is_false(x: &bool) -> bool {
    !*x
}

impl Adversaries {
    /// Lenders a multi-spender presents each token at.
    pub fn multi_spend_lenders(&self) -> usize {
        self.multi_spend_lenders.unwrap_or(DEFAULT_MULTI_SPEND_LENDERS)
    }
}

fn attack_period() -> f64 {
    120.0
}

impl Default for Adversaries {
    fn default() -> Self {
        Adversaries {
            double_spenders: 0,
            forgers: 0,
            attestation_replayers: 0,
            attestation_forgers: 0,
            period_s: attack_period(),
            multi_spenders: 0,
            multi_spend_lenders: None,
            multi_spend_as_replica: false,
        }
    }
}

/// Routing and borrowing tunables. The borrow rules themselves (failover, cooldowns and their cap, what happens to
/// the token) are `protocol::borrow`'s, as in the node; only these settings are the scenario's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Lender choice policy.
    #[serde(default)]
    pub policy: Policy,
    /// Age at which an attestation's score halves, seconds.
    #[serde(default = "half_life")]
    pub half_life_s: f64,
    /// Lenders tried per request before giving up (`BorrowConfig::max_attempts`). The node always uses
    /// `protocol`'s default, [`DEFAULT_MAX_ATTEMPTS`], which is this field's default too: set it only to study
    /// another budget.
    #[serde(default = "attempts")]
    pub max_attempts: usize,
    /// No longer a setting: the cooldown after a refusal is `protocol::borrow`'s (the lender's `Retry-After`, capped
    /// at `MAX_COOLDOWN_MS`, or `DEFAULT_COOLDOWN_MS`), as in the node. Accepted only to refuse it with that
    /// explanation.
    #[serde(default, skip_serializing)]
    pub cooldown_s: Option<f64>,
    /// A borrower waits this long for an answer, ms.
    #[serde(default = "timeout")]
    pub timeout_ms: f64,
}

fn half_life() -> f64 {
    30.0
}
fn attempts() -> usize {
    DEFAULT_MAX_ATTEMPTS
}
fn timeout() -> f64 {
    3_000.0
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            policy: Policy::default(),
            half_life_s: half_life(),
            max_attempts: attempts(),
            cooldown_s: None,
            timeout_ms: timeout(),
        }
    }
}

/// Wallet refills.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    /// Tokens per issuance batch.
    #[serde(default = "batch")]
    pub refill_batch: u32,
    /// Refill an epoch the issuer signs for (the current one, and the next once announced) when the wallet holds
    /// fewer of its tokens than this (`protocol::refill::RefillPlanner`, as in the node).
    #[serde(default = "low_water")]
    pub low_water: u32,
}

fn batch() -> u32 {
    8
}
fn low_water() -> u32 {
    4
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            refill_batch: batch(),
            low_water: low_water(),
        }
    }
}

/// Epochs (docs/design.md §8): issuer key rotation, grace periods and pruning. Without this table the run is one epoch that
/// outlasts it (and quotas are unlimited), as in every scenario written before epochs were simulated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Epochs {
    /// Epoch length in minutes (the admin announces the next epoch a third of this before the current one ends).
    pub epoch_minutes: f64,
    /// After an epoch ends, lenders still take its tokens for this long, minutes (at most `epoch_minutes`).
    #[serde(default)]
    pub grace_minutes: f64,
    /// Tokens the issuer signs per member per epoch.
    #[serde(default = "quota_per_epoch")]
    pub quota_per_epoch: u32,
    /// An immediate rotation at this minute (`group remove --rotate`): the current epoch ends at once with no
    /// grace, an announced next epoch is cancelled, and a new epoch with a new key starts.
    #[serde(default)]
    pub rotate_at_minutes: Option<f64>,
}

/// The roster's quota when a scenario sets none: unlimited in practice.
pub const UNLIMITED_QUOTA: u32 = u32::MAX / 2;

fn quota_per_epoch() -> u32 {
    UNLIMITED_QUOTA
}

/// Largest quota a scenario with constant-rate issuance may set (every member draws all of it, each a real blind
/// signature).
pub const MAX_SCHEDULED_QUOTA: u32 = 100_000;

/// The most epochs a run may go through (each one is a row of the report).
pub const MAX_EPOCHS_PER_RUN: f64 = 1_000.0;

/// A whole scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// Group size (3–[`MAX_MEMBERS`]).
    pub members: usize,
    /// Virtual duration in hours.
    pub duration_hours: f64,
    /// Default seed (the CLI's `--seed` overrides it).
    #[serde(default)]
    pub seed: u64,
    /// Seconds between two attestations of a lender.
    pub attestation_period_s: f64,
    /// Privacy mode.
    #[serde(default)]
    pub privacy: PrivacyMode,
    /// Upper bound on how long pending borrows may take to finish once faults heal and demand stops, seconds.
    #[serde(default = "liveness")]
    pub liveness_bound_s: f64,
    /// Capacity per member.
    pub capacity: Capacity,
    /// Demand per member.
    pub demand: Demand,
    /// Network.
    pub network: Network,
    /// Routing.
    #[serde(default)]
    pub routing: Routing,
    /// Tokens.
    #[serde(default)]
    pub tokens: Tokens,
    /// Faults.
    #[serde(default)]
    pub faults: Faults,
    /// Adversaries.
    #[serde(default)]
    pub adversaries: Adversaries,
    /// Epochs; absent: one epoch longer than the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<Epochs>,
    /// Kinds of members, each with its upstreams (API, models, capacity) and its mix of requests; absent: every
    /// member shares one upstream of any API with `[capacity]` (see [`Scenario::member_profiles`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<Profile>,
    /// Quorum claims at each token's replicas (docs/design.md §7); absent: per-lender spent sets only, and no claims
    /// section in the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Claims>,
    /// What members' behaviour exposes of their exhaustion (`protocol::exposure`: cover borrows, the borrow
    /// threshold, the attestation floor, constant-rate issuance). Absent: none of these levers
    /// (`Exposure::EXPOSED`, lendmesh before issue 13, which every figure of the older scenarios measures); a table
    /// starts from the node's defaults, as its config file does.
    #[serde(default = "exposed", skip_serializing_if = "is_exposed")]
    pub exposure: lendmesh_protocol::exposure::Exposure,
}

fn exposed() -> lendmesh_protocol::exposure::Exposure {
    lendmesh_protocol::exposure::Exposure::EXPOSED
}

fn is_exposed(e: &lendmesh_protocol::exposure::Exposure) -> bool {
    *e == lendmesh_protocol::exposure::Exposure::EXPOSED
}

/// Both finite, non-negative, and `a <= b`.
fn ordered(a: f64, b: f64) -> bool {
    a.is_finite() && b.is_finite() && a >= 0.0 && a <= b
}

fn liveness() -> f64 {
    60.0
}

impl Scenario {
    /// Parses and validates scenario text.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        if text.len() > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge { size: text.len() });
        }
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads a scenario file, refusing oversized files before reading them whole.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ScenarioError> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .map_err(|e| ScenarioError::Parse(format!("cannot open {}: {e}", path.display())))?;
        let mut text = String::new();
        file.take(MAX_SCENARIO_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| ScenarioError::Parse(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Checks every range.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        fn bad(field: &'static str, reason: impl Into<String>) -> ScenarioError {
            ScenarioError::Invalid {
                field,
                reason: reason.into(),
            }
        }
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        self.exposure.check().map_err(|e| bad("exposure", e))?;
        if self.exposure.issuance == lendmesh_protocol::refill::Issuance::Schedule
            && self
                .epochs
                .as_ref()
                .is_none_or(|e| e.quota_per_epoch >= MAX_SCHEDULED_QUOTA)
        {
            return Err(bad(
                "exposure.issuance",
                format!(
                    "`schedule` draws every member's whole quota: it needs an [epochs] table with a \
                     quota_per_epoch below {MAX_SCHEDULED_QUOTA}"
                ),
            ));
        }
        if !(3..=MAX_MEMBERS).contains(&self.members) {
            return Err(bad(
                "members",
                format!("{} is outside 3..={MAX_MEMBERS}", self.members),
            ));
        }
        if !finite_pos(self.duration_hours) || self.duration_hours > MAX_DURATION_HOURS {
            return Err(bad(
                "duration_hours",
                format!("must be in (0, {MAX_DURATION_HOURS}]"),
            ));
        }
        if !finite_pos(self.attestation_period_s) || self.attestation_period_s < 1.0 {
            return Err(bad("attestation_period_s", "must be at least 1 second"));
        }
        if !finite_pos(self.liveness_bound_s) {
            return Err(bad("liveness_bound_s", "must be positive"));
        }
        let c = &self.capacity;
        if c.min == 0 || c.max < c.min || c.max > 1_000_000 {
            return Err(bad("capacity", "need 1 <= min <= max <= 1000000"));
        }
        if !finite_pos(c.window_minutes) || c.window_minutes < 1.0 {
            return Err(bad("capacity.window_minutes", "must be at least 1 minute"));
        }
        let d = &self.demand;
        if !finite_nonneg(d.mean_per_hour) || d.mean_per_hour > 100_000.0 {
            return Err(bad("demand.mean_per_hour", "must be in [0, 100000]"));
        }
        if !finite_nonneg(d.skew) || d.skew > 5.0 {
            return Err(bad("demand.skew", "must be in [0, 5]"));
        }
        if !finite_nonneg(d.bursts_per_hour) || !finite_pos(d.burst_minutes) {
            return Err(bad(
                "demand.bursts_per_hour",
                "bursts_per_hour >= 0 and burst_minutes > 0",
            ));
        }
        if !(1.0..=100.0).contains(&d.burst_factor) {
            return Err(bad("demand.burst_factor", "must be in [1, 100]"));
        }
        if !(0.0..=1.0).contains(&d.quiet_factor) {
            return Err(bad("demand.quiet_factor", "must be in [0, 1]"));
        }
        if let Some([a, b]) = d.quiet_hours
            && !((0.0..=24.0).contains(&a) && (0.0..=24.0).contains(&b))
        {
            return Err(bad("demand.quiet_hours", "hours must be in [0, 24]"));
        }
        let n = &self.network;
        if !finite_nonneg(n.latency_ms) || !finite_nonneg(n.jitter_ms) || !finite_nonneg(n.gossip_delay_ms) {
            return Err(bad("network", "latencies must be finite and non-negative"));
        }
        if !(0.0..=0.5).contains(&n.loss) {
            return Err(bad("network.loss", "must be in [0, 0.5]"));
        }
        if !finite_nonneg(n.clock_skew_ms) || n.clock_skew_ms > 3_600_000.0 {
            return Err(bad("network.clock_skew_ms", "must be in [0, 3600000]"));
        }
        // Bound the work (and memory) a scenario can ask for: the demand trace is generated up front.
        let peak = self.members as f64
            * d.mean_per_hour
            * self.max_demand_factor()
            * d.burst_factor
            * (1.0 + d.skew)
            * self.duration_hours;
        if peak > MAX_EXPECTED_REQUESTS {
            return Err(bad(
                "demand",
                format!("up to {peak:.0} requests expected; the limit is {MAX_EXPECTED_REQUESTS:.0}"),
            ));
        }
        let r = &self.routing;
        if !(1..=16).contains(&r.max_attempts) {
            return Err(bad("routing.max_attempts", "must be in 1..=16"));
        }
        if !finite_pos(r.half_life_s) || !finite_pos(r.timeout_ms) {
            return Err(bad("routing", "half_life_s and timeout_ms must be > 0"));
        }
        if r.cooldown_s.is_some() {
            return Err(bad(
                "routing.cooldown_s",
                "is no longer a setting: a refused lender cools down as the node does (its Retry-After, capped at \
                 5 min, or 15 s), by protocol::borrow; remove the line",
            ));
        }
        if !(1..=64).contains(&self.tokens.refill_batch) {
            return Err(bad(
                "tokens.refill_batch",
                "must be in 1..=64 (the issuer's batch limit)",
            ));
        }
        for p in &self.faults.partitions {
            if p.members.iter().any(|&m| m >= self.members) || !ordered(p.start_min, p.end_min) {
                return Err(bad(
                    "faults.partitions",
                    "member index out of range or start after end",
                ));
            }
        }
        for c in &self.faults.clock_skews {
            if c.member >= self.members || c.skew_ms.unsigned_abs() > 86_400_000 {
                return Err(bad(
                    "faults.clock_skews",
                    "member index out of range or skew beyond ±1 day",
                ));
            }
        }
        for c in &self.faults.crashes {
            if c.member >= self.members || !ordered(c.at_min, c.restart_min) {
                return Err(bad(
                    "faults.crashes",
                    "member index out of range or restart before crash",
                ));
            }
        }
        if let Some(c) = &self.faults.churn {
            c.validate()?;
        }
        let a = &self.adversaries;
        let total = a.double_spenders
            + a.forgers
            + a.attestation_replayers
            + a.attestation_forgers
            + a.multi_spenders;
        if total + 3 > self.members {
            return Err(bad("adversaries", "leave at least 3 honest members"));
        }
        if !(2..self.members).contains(&a.multi_spend_lenders()) {
            return Err(bad(
                "adversaries.multi_spend_lenders",
                "must be at least 2 and fewer than the members",
            ));
        }
        if let Some(c) = &self.claims {
            c.validate()?;
        }
        if !finite_pos(a.period_s) {
            return Err(bad("adversaries.period_s", "must be positive"));
        }
        self.validate_profiles()?;
        if let Some(e) = &self.epochs {
            let min_minutes = 1.0;
            let max_minutes = lendmesh_protocol::epoch::MAX_EPOCH_MS as f64 / 60_000.0;
            if !(e.epoch_minutes.is_finite() && (min_minutes..=max_minutes).contains(&e.epoch_minutes)) {
                return Err(bad(
                    "epochs.epoch_minutes",
                    format!("must be in [{min_minutes}, {max_minutes}]"),
                ));
            }
            let minutes = self.duration_hours * 60.0;
            if minutes / e.epoch_minutes > MAX_EPOCHS_PER_RUN {
                return Err(bad(
                    "epochs.epoch_minutes",
                    format!("the run would go through more than {MAX_EPOCHS_PER_RUN} epochs"),
                ));
            }
            if !finite_nonneg(e.grace_minutes) || e.grace_minutes > e.epoch_minutes {
                return Err(bad(
                    "epochs.grace_minutes",
                    "must be in [0, epoch_minutes] (the protocol refuses a grace longer than the epoch)",
                ));
            }
            if !(1..=UNLIMITED_QUOTA).contains(&e.quota_per_epoch) {
                return Err(bad(
                    "epochs.quota_per_epoch",
                    format!("must be in 1..={UNLIMITED_QUOTA}"),
                ));
            }
            if let Some(r) = e.rotate_at_minutes
                && !(r.is_finite() && r > 0.0 && r < minutes)
            {
                return Err(bad(
                    "epochs.rotate_at_minutes",
                    "must be inside the run, after its start",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        for name in [
            "small-team",
            "office",
            "community",
            "test-skew",
            "test-stale",
            "test-adversaries",
            "test-epochs",
            "test-crowded",
            "mixed",
            "office-claims",
            "test-claims",
        ] {
            let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
            let s = Scenario::from_file(std::path::Path::new(&path));
            assert!(s.is_ok(), "{name}: {s:?}");
        }
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(matches!(
            Scenario::from_toml("name = 3"),
            Err(ScenarioError::Parse(_))
        ));
        let path = format!("{}/scenarios/small-team.toml", env!("CARGO_MANIFEST_DIR"));
        let good = std::fs::read_to_string(path).unwrap();
        for (from, to) in [
            ("members = 5", "members = 2"),
            ("members = 5", "members = 100000"),
            ("duration_hours = 8.0", "duration_hours = nan"),
            ("duration_hours = 8.0", "duration_hours = -1.0"),
            ("window_minutes = 60.0", "window_minutes = 0.0"),
            ("mean_per_hour = 35.0", "mean_per_hour = inf"),
            ("mean_per_hour = 35.0", "mean_per_hour = 90000.0"),
            ("loss = 0.005", "loss = 2.0"),
            ("min = 30", "min = 0"),
            ("seed = 1", "seed = -1"),
            ("seed = 1", "unknown_field = 1"),
        ] {
            let text = good.replace(from, to);
            assert_ne!(text, good, "{from}");
            assert!(Scenario::from_toml(&text).is_err(), "{to} was accepted");
        }
        let big = "#".repeat(MAX_SCENARIO_BYTES + 1);
        assert!(matches!(
            Scenario::from_toml(&big),
            Err(ScenarioError::TooLarge { .. })
        ));
    }

    #[test]
    fn borrow_settings_follow_the_node() {
        let path = format!("{}/scenarios/small-team.toml", env!("CARGO_MANIFEST_DIR"));
        let good = std::fs::read_to_string(path).unwrap();
        let s = Scenario::from_toml(&good).unwrap();
        assert_eq!(
            s.routing.max_attempts, DEFAULT_MAX_ATTEMPTS,
            "the node's budget by default"
        );
        assert_eq!(s.privacy, PrivacyMode::Strict);
        let best = Scenario::from_toml(&format!("privacy = \"best-effort\"\n{good}")).unwrap();
        assert_eq!(best.privacy, PrivacyMode::BestEffort);
        assert!(
            serde_json::to_string(&best)
                .unwrap()
                .contains("\"privacy\":\"best-effort\"")
        );
        let err = Scenario::from_toml(&format!("{good}\n[routing]\ncooldown_s = 30.0\n")).unwrap_err();
        assert!(err.to_string().contains("no longer a setting"), "{err}");
        assert!(!serde_json::to_string(&s).unwrap().contains("cooldown_s"));
    }

    #[test]
    fn epoch_fields_are_validated() {
        let path = format!("{}/scenarios/test-epochs.toml", env!("CARGO_MANIFEST_DIR"));
        let good = std::fs::read_to_string(path).unwrap();
        let s = Scenario::from_toml(&good).unwrap();
        let e = s.epochs.as_ref().unwrap();
        assert_eq!((e.epoch_minutes, e.grace_minutes), (20.0, 5.0));
        for (from, to) in [
            ("epoch_minutes = 20.0", "epoch_minutes = 0.5"),
            ("epoch_minutes = 20.0", "epoch_minutes = nan"),
            ("epoch_minutes = 20.0", "epoch_minutes = 0.1\ngrace_minutes_x = 1"),
            ("grace_minutes = 5.0", "grace_minutes = 25.0"),
            ("grace_minutes = 5.0", "grace_minutes = -1.0"),
            ("quota_per_epoch = 60", "quota_per_epoch = 0"),
            ("rotate_at_minutes = 75.0", "rotate_at_minutes = 500.0"),
            ("rotate_at_minutes = 75.0", "rotate_at_minutes = 0.0"),
            ("epoch_minutes = 20.0", "epoch_minutes = 20.0\nsurprise = 1"),
        ] {
            let text = good.replace(from, to);
            assert_ne!(text, good, "{from}");
            assert!(Scenario::from_toml(&text).is_err(), "{to} was accepted");
        }
        // Too many epochs for one run.
        let many = good
            .replace("epoch_minutes = 20.0", "epoch_minutes = 1.0")
            .replace("duration_hours = 2.0", "duration_hours = 24.0");
        assert!(Scenario::from_toml(&many).is_err());
        // Without the table: no epochs, and the scenario serializes as before.
        let small = std::fs::read_to_string(format!(
            "{}/scenarios/small-team.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let s = Scenario::from_toml(&small).unwrap();
        assert!(s.epochs.is_none());
        assert!(!serde_json::to_string(&s).unwrap().contains("epochs"));
    }
}
