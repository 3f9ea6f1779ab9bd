//! Group-wide single spend (docs/design.md §7, `protocol::claims`) and member churn: the scenario's `[claims]` table
//! and `[faults.churn]`.
//!
//! Without `[claims]` a run has per-lender spent sets only, as every scenario written before claims were simulated,
//! and its report has no claims section. With it, `mode` says what lenders do: `off` keeps per-lender spent sets but
//! measures double serves across the group; `strict` and `lenient` claim every redeemed token at its replicas as the
//! node does (`[lender] claims`), and differ only when no majority answers.

use serde::{Deserialize, Serialize};

use super::ScenarioError;

/// What a lender does with a redeemed token (the node's `[lender] claims`, plus `off`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimsMode {
    /// No claims: the lender's own spent set alone (a token can be served once at each lender).
    Off,
    /// Claim at the token's replicas; without a majority refuse before any work and release the grants (the node's
    /// default, and this table's).
    #[default]
    Strict,
    /// Claim at the token's replicas; without a majority serve anyway (a double spend can slip through).
    Lenient,
}

impl ClaimsMode {
    /// Its name in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            ClaimsMode::Off => "off",
            ClaimsMode::Strict => "strict",
            ClaimsMode::Lenient => "lenient",
        }
    }

    /// Whether lenders claim at replicas.
    pub fn claims(self) -> bool {
        self != ClaimsMode::Off
    }
}

impl std::str::FromStr for ClaimsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(ClaimsMode::Off),
            "strict" => Ok(ClaimsMode::Strict),
            "lenient" => Ok(ClaimsMode::Lenient),
            _ => Err(format!(
                "unknown claims mode `{s}`; expected off, strict or lenient"
            )),
        }
    }
}

/// `[claims]`: quorum claims at each token's replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// `off`, `strict` (default) or `lenient`.
    #[serde(default)]
    pub mode: ClaimsMode,
    /// Replicas per token: odd, 1 to 15, as the node's `[lender] claim_replicas` (capped at the roster size by
    /// `protocol::claims::replica_count`).
    #[serde(default = "replicas")]
    pub replicas: usize,
    /// Each replica's answer within this, ms (the node's `[lender] claim_timeout`, 5 s).
    #[serde(default = "timeout")]
    pub timeout_ms: f64,
}

fn replicas() -> usize {
    lendmesh_protocol::claims::DEFAULT_REPLICAS
}
fn timeout() -> f64 {
    5_000.0
}

impl Claims {
    /// The table with the node's defaults and `mode`.
    pub fn with_mode(mode: ClaimsMode) -> Self {
        Claims {
            mode,
            replicas: replicas(),
            timeout_ms: timeout(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), ScenarioError> {
        // The node's own bounds (`[lender] claim_replicas` and `claim_timeout`).
        if !(1..=15).contains(&self.replicas) || self.replicas.is_multiple_of(2) {
            return Err(ScenarioError::Invalid {
                field: "claims.replicas",
                reason: "must be odd, from 1 to 15".into(),
            });
        }
        if !(self.timeout_ms.is_finite() && (100.0..=60_000.0).contains(&self.timeout_ms)) {
            return Err(ScenarioError::Invalid {
                field: "claims.timeout_ms",
                reason: "must be from 100 to 60000 ms".into(),
            });
        }
        Ok(())
    }
}

/// `[faults.churn]`: every member goes down and comes back again and again, independently, so that it is up an
/// `uptime` share of the time (a laptop closed, a home server rebooting). A down member is a crashed one: it loses
/// what it holds in memory, keeps its durable state, makes no requests and answers nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Share of the time each member is up, in (0, 1].
    pub uptime: f64,
    /// Mean length of a down spell, minutes (exponential; up spells are exponential with the mean that gives
    /// `uptime`).
    #[serde(default = "mean_down")]
    pub mean_down_minutes: f64,
}

fn mean_down() -> f64 {
    15.0
}

impl Churn {
    /// Churn with `uptime` and the default down spells.
    pub fn with_uptime(uptime: f64) -> Self {
        Churn {
            uptime,
            mean_down_minutes: mean_down(),
        }
    }

    /// Mean length of an up spell, minutes.
    pub fn mean_up_minutes(&self) -> f64 {
        self.mean_down_minutes * self.uptime / (1.0 - self.uptime).max(1e-9)
    }

    pub(super) fn validate(&self) -> Result<(), ScenarioError> {
        if !(self.uptime.is_finite() && self.uptime > 0.0 && self.uptime <= 1.0) {
            return Err(ScenarioError::Invalid {
                field: "faults.churn.uptime",
                reason: "must be in (0, 1]".into(),
            });
        }
        if !(self.mean_down_minutes.is_finite() && (0.1..=1_440.0).contains(&self.mean_down_minutes)) {
            return Err(ScenarioError::Invalid {
                field: "faults.churn.mean_down_minutes",
                reason: "must be from 0.1 to 1440 minutes".into(),
            });
        }
        Ok(())
    }
}
