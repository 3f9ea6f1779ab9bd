//! The exposure policies compared (`lendmesh-sim exposure`, issue 13): named combinations of
//! `protocol::exposure::Exposure`'s settings, and the comparison table of what each costs and what it hides.
//!
//! A policy's name is its levers joined by `+`: `exposed` (none), `floor-low` (no `none` bucket), `floor-medium`
//! (nothing below `medium`), `coverN` (N % cover borrows), `reserveN` (borrow below a threshold drawn up to N % of
//! own capacity), `schedule` (constant-rate issuance); e.g. `floor-medium+cover10+reserve30+schedule`.

use std::fmt::Write as _;

use lendmesh_protocol::exposure::{Exposure, Floor};
use lendmesh_protocol::refill::Issuance;

use crate::report::Report;

/// The policies compared when none are named: each lever alone, then the combinations that matter; the last is
/// the node's default.
pub const DEFAULT_POLICIES: &[&str] = &[
    "exposed",
    "floor-low",
    "floor-medium",
    "floor-high",
    "cover10",
    "reserve30",
    "schedule",
    "floor-medium+cover10",
    "floor-high+cover10",
    "floor-high+reserve30",
    "floor-high+schedule",
];

/// The settings a policy name stands for.
pub fn parse_policy(name: &str) -> Result<Exposure, String> {
    let mut x = Exposure::EXPOSED;
    for part in name.split('+') {
        let percent = |rest: &str| -> Result<f64, String> {
            rest.parse::<u32>().map(|p| f64::from(p) / 100.0).map_err(|_| {
                format!("`{part}` in policy `{name}`: expected a whole percentage after the lever")
            })
        };
        match part {
            "exposed" => {}
            "floor-low" => x.attest_floor = Floor::Low,
            "floor-medium" => x.attest_floor = Floor::Medium,
            "floor-high" => x.attest_floor = Floor::High,
            "schedule" => x.issuance = Issuance::Schedule,
            p if p.starts_with("cover") => x.cover_share = percent(&p["cover".len()..])?,
            p if p.starts_with("reserve") => x.reserve = percent(&p["reserve".len()..])?,
            _ => {
                return Err(format!(
                    "unknown lever `{part}` in policy `{name}` (exposed, floor-low, floor-medium, floor-high, coverN, \
                     reserveN, schedule)"
                ));
            }
        }
    }
    x.check().map_err(|e| format!("policy `{name}`: {e}"))?;
    Ok(x)
}

/// One row of the comparison: what each attacker gets above chance, and what the policy costs against `base`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The policy's name.
    pub policy: String,
    /// Lender linkage (lowest bucket) and chance, %.
    pub lender: (f64, f64),
    /// Lender, timing of the last fall in headroom, %.
    pub lender_timing: f64,
    /// Admin, volume of tokens drawn, and chance, %.
    pub admin_volume: (f64, f64),
    /// Admin, timing of the last refill, %.
    pub admin_timing: f64,
    /// Served demand, %.
    pub served: f64,
    /// Borrow attempts per request (relay traffic), and its change against the first policy, %.
    pub relay: (f64, f64),
    /// Borrow latency p50 and p99, ms.
    pub latency: (f64, f64),
    /// Tokens issued per run.
    pub tokens_issued: f64,
}

impl Row {
    /// The row of `r`, the costs against `base`.
    pub fn of(policy: &str, r: &Report, base: &Report) -> Row {
        let link = |k: &str| {
            r.linkage
                .get(k)
                .map_or((0.0, 0.0), |l| (l.accuracy.mean * 100.0, l.chance.mean * 100.0))
        };
        let relay = r.mean("borrow_messages_share");
        let base_relay = base.mean("borrow_messages_share");
        Row {
            policy: policy.to_owned(),
            lender: link("lender"),
            lender_timing: link("lender-timing").0,
            admin_volume: link("admin-volume"),
            admin_timing: link("admin-timing").0,
            served: r.mean("served") * 100.0,
            relay: (
                relay * 100.0,
                if base_relay > 0.0 {
                    (relay / base_relay - 1.0) * 100.0
                } else {
                    0.0
                },
            ),
            latency: (r.mean("latency_p50_ms"), r.mean("latency_p99_ms")),
            tokens_issued: r.mean("tokens_issued"),
        }
    }

    /// Lender linkage above chance, percentage points.
    pub fn lender_excess(&self) -> f64 {
        self.lender.0 - self.lender.1
    }

    /// Admin volume linkage above chance, percentage points.
    pub fn admin_excess(&self) -> f64 {
        self.admin_volume.0 - self.admin_volume.1
    }
}

/// The comparison as a markdown table, the first row the baseline.
pub fn markdown(scenario: &str, seeds: &[u64], rows: &[Row]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# lendmesh-sim exposure policies: `{scenario}`\n");
    let _ = writeln!(
        md,
        "Seeds {seeds:?}. Linkage is the share of borrows an attacker names correctly (chance in brackets); *relay* is \
         borrow attempts per request, each one relay hop, and its change against the first row. Policy names: \
         `floor-low` (no `none` bucket), `floor-medium` (nothing below `medium`), `coverN` (N % cover borrows), \
         `reserveN` (borrow below a threshold drawn up to N % of own capacity), `schedule` (constant-rate \
         issuance).\n"
    );
    let _ = writeln!(
        md,
        "| policy | lender % | lender, timing % | admin volume % | admin, timing % | served % | relay per request (Δ) | \
         p50 / p99 ms | tokens issued |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| `{}` | {:.1} ({:.1}) | {:.1} | {:.1} ({:.1}) | {:.1} | {:.2} | {:.1} % ({:+.0} %) | {:.0} / {:.0} | {:.0} |",
            r.policy,
            r.lender.0,
            r.lender.1,
            r.lender_timing,
            r.admin_volume.0,
            r.admin_volume.1,
            r.admin_timing,
            r.served,
            r.relay.0,
            r.relay.1,
            r.latency.0,
            r.latency.1,
            r.tokens_issued,
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_parse_into_their_settings_and_bad_ones_are_refused() {
        assert_eq!(parse_policy("exposed").unwrap(), Exposure::EXPOSED);
        let x = parse_policy("floor-medium+cover10+reserve30+schedule").unwrap();
        assert_eq!(x.attest_floor, Floor::Medium);
        assert!((x.cover_share - 0.1).abs() < 1e-9 && (x.reserve - 0.3).abs() < 1e-9);
        assert_eq!(x.issuance, Issuance::Schedule);
        for bad in [
            "",
            "cover",
            "coverX",
            "cover90",
            "reserve60",
            "floor-low+fast",
            "floor-top",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad}");
        }
        for name in DEFAULT_POLICIES {
            parse_policy(name).unwrap();
        }
    }
}
