//! The mixed-upstreams part of the report (scenarios with `[[profiles]]`): served demand, misrouted attempts,
//! requests nobody serves, each request kind, and how evenly each API family's lenders are drained.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::Stat;
use crate::outcome::{DrainRow, MixedRun, RunResult, ratio};

/// One API family's lenders across seeds: the spread of their drain (share of their capacity of the family used
/// over the run, own requests and lends).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FamilyDrain {
    /// `openai`, `anthropic` or `generic`.
    pub family: String,
    /// Members with an upstream of the family.
    pub lenders: usize,
    /// Least drained.
    pub min: Stat,
    /// Median.
    pub median: Stat,
    /// Most drained.
    pub max: Stat,
    /// Coefficient of variation (standard deviation over mean) of the drain across the family's lenders.
    pub cv: Stat,
    /// Median share of capacity lent.
    pub lent_median: Stat,
}

/// One request kind, means per run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct KindStat {
    /// Its description (`model gpt-4o (openai-chat)`).
    pub kind: String,
    /// Whether some upstream in the group serves it.
    pub servable: bool,
    /// Requests made.
    pub demand: f64,
    /// Served from own upstreams.
    pub served_own: f64,
    /// Served by a lender.
    pub served_borrowed: f64,
    /// Refused at once: no fresh lender serves it.
    pub nobody_serves: f64,
    /// Borrows that failed otherwise.
    pub failed: f64,
    /// Attempts sent to lenders.
    pub attempts: f64,
    /// Tokens it cost (taken and not given back).
    pub tokens_spent: f64,
}

/// One member's upstreams of one family, across seeds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LenderDrain {
    /// The member.
    pub member: usize,
    /// Its profile.
    pub profile: String,
    /// The family.
    pub family: String,
    /// Share of capacity used.
    pub drain: Stat,
    /// Share of capacity its own requests used.
    pub own_share: Stat,
    /// Share of capacity lent.
    pub lent_share: Stat,
    /// Borrows other members started for kinds these upstreams serve, mean per run.
    pub wanted: f64,
}

/// Mixed upstreams across seeds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MixedReport {
    /// Per run: `served` (fraction of demand), `served_servable` (of the demand of kinds some upstream serves),
    /// `misrouted` (attempts that reached a lender that cannot serve them), `nobody_serves` (requests refused at
    /// once), `nobody_serves_share` (of demand), `unservable_attempts` and `unservable_tokens` (attempts sent and
    /// tokens spent for kinds no upstream serves).
    pub summary: BTreeMap<String, Stat>,
    /// Per family, in report order.
    pub families: Vec<FamilyDrain>,
    /// Per request kind.
    pub kinds: Vec<KindStat>,
    /// Per member and family.
    pub lenders: Vec<LenderDrain>,
}

/// Minimum, median, maximum and coefficient of variation of `x` (zeros when empty).
fn spread(mut x: Vec<f64>) -> (f64, f64, f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    x.sort_by(f64::total_cmp);
    let n = x.len();
    let median = if n % 2 == 1 {
        x[n / 2]
    } else {
        (x[n / 2 - 1] + x[n / 2]) / 2.0
    };
    let mean = x.iter().sum::<f64>() / n as f64;
    let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    (x[0], median, x[n - 1], ratio(sd, mean))
}

impl MixedReport {
    /// From the runs of a scenario with profiles; `None` if no run has mixed upstreams.
    pub fn build(runs: &[RunResult]) -> Option<Self> {
        let with: Vec<(&RunResult, &MixedRun)> = runs
            .iter()
            .filter_map(|r| r.mixed.as_ref().map(|m| (r, m)))
            .collect();
        if with.is_empty() {
            return None;
        }
        let stat =
            |f: &dyn Fn(&RunResult, &MixedRun) -> f64| Stat::of(with.iter().map(|(r, m)| f(r, m)).collect());
        let unservable = |m: &MixedRun, f: &dyn Fn(&crate::outcome::KindRun) -> u64| {
            m.kinds.values().filter(|k| !k.servable).map(f).sum::<u64>() as f64
        };
        let mut summary = BTreeMap::new();
        summary.insert("served".into(), stat(&|r, _| r.served_fraction));
        summary.insert(
            "served_servable".into(),
            stat(&|_, m| {
                let servable = m.kinds.values().filter(|k| k.servable);
                let (served, demand) = servable.fold((0, 0), |(s, d), k| {
                    (s + k.served_own + k.served_borrowed, d + k.demand)
                });
                ratio(served as f64, demand as f64)
            }),
        );
        summary.insert("misrouted".into(), stat(&|_, m| m.misrouted as f64));
        summary.insert("nobody_serves".into(), stat(&|_, m| m.nobody_serves as f64));
        summary.insert(
            "nobody_serves_share".into(),
            stat(&|r, m| ratio(m.nobody_serves as f64, r.demand as f64)),
        );
        summary.insert(
            "unservable_attempts".into(),
            stat(&|_, m| unservable(m, &|k| k.attempts)),
        );
        summary.insert(
            "unservable_tokens".into(),
            stat(&|_, m| unservable(m, &|k| k.tokens_spent())),
        );
        let runs_mixed: Vec<&MixedRun> = with.iter().map(|(_, m)| *m).collect();
        Some(MixedReport {
            summary,
            families: families(&runs_mixed),
            kinds: kinds(&runs_mixed),
            lenders: lenders(&runs_mixed),
        })
    }

    /// A summary metric's mean (0 if absent).
    pub fn mean(&self, metric: &str) -> f64 {
        self.summary.get(metric).map_or(0.0, |s| s.mean)
    }

    pub(super) fn to_markdown(&self, md: &mut String) {
        let g =
            |k: &str, scale: f64, d: usize| self.summary.get(k).map_or(String::new(), |s| s.show(scale, d));
        let _ = writeln!(
            md,
            "## Mixed upstreams\n\nEach lender attests one capability per upstream (API, models, its own bucket); \
             borrowers route only among the lenders `protocol::routing::candidates_for` finds capable, and a \
             request no fresh lender serves is refused at once (`no_capable_lender`, no token taken).\n\n\
             | per run | value |\n|---|---|\n\
             | served (% of demand) | {} |\n\
             | served (% of the demand some upstream serves) | {} |\n\
             | misrouted: attempts that reached a lender that cannot serve them | **{}** |\n\
             | refused at once, nobody serves the request | {} ({} % of demand) |\n\
             | attempts sent / tokens spent for kinds nobody serves | {} / {} |\n",
            g("served", 100.0, 2),
            g("served_servable", 100.0, 2),
            g("misrouted", 1.0, 1),
            g("nobody_serves", 1.0, 1),
            g("nobody_serves_share", 100.0, 2),
            g("unservable_attempts", 1.0, 1),
            g("unservable_tokens", 1.0, 1),
        );
        let _ = writeln!(
            md,
            "### Drain per API family\n\nDrain: the share of a member's capacity of the family (all its upstreams of \
             it, every window of the run) that was used, by its own requests and by lends. Spread across the \
             family's lenders in each run, then mean ± 95 % CI across seeds; CV is the standard deviation over the \
             mean (0: perfectly even).\n\n\
             | family | lenders | min | median | max | CV | lent (median) |\n|---|---|---|---|---|---|---|"
        );
        for f in &self.families {
            let _ = writeln!(
                md,
                "| {} | {} | {} % | {} % | {} % | {} | {} % |",
                f.family,
                f.lenders,
                f.min.show(100.0, 1),
                f.median.show(100.0, 1),
                f.max.show(100.0, 1),
                f.cv.show(1.0, 3),
                f.lent_median.show(100.0, 1),
            );
        }
        let _ = writeln!(
            md,
            "\n### Request kinds (means per run)\n\n\
             | kind | some upstream serves it | demand | own | borrowed | refused at once | failed | attempts | \
             tokens spent |\n|---|---|---|---|---|---|---|---|---|"
        );
        for k in &self.kinds {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                k.kind,
                if k.servable { "yes" } else { "no" },
                k.demand,
                k.served_own,
                k.served_borrowed,
                k.nobody_serves,
                k.failed,
                k.attempts,
                k.tokens_spent,
            );
        }
        let _ = writeln!(
            md,
            "\n### Per lender\n\n*Wanted*: borrows other members started, per run, for kinds these upstreams \
             serve.\n\n| member | profile | family | drain % | own % | lent % | wanted |\n|---|---|---|---|---|---|---|"
        );
        for l in &self.lenders {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.1} |",
                l.member,
                l.profile,
                l.family,
                l.drain.show(100.0, 1),
                l.own_share.show(100.0, 1),
                l.lent_share.show(100.0, 1),
                l.wanted,
            );
        }
        md.push('\n');
    }
}

/// The families in the order runs list them (a member's rows come in report order).
fn family_names(runs: &[&MixedRun]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for d in runs.iter().flat_map(|m| &m.drain) {
        if !names.contains(&d.family) {
            names.push(d.family.clone());
        }
    }
    names
}

fn families(runs: &[&MixedRun]) -> Vec<FamilyDrain> {
    family_names(runs)
        .into_iter()
        .map(|family| {
            let rows = |m: &MixedRun| -> Vec<DrainRow> {
                m.drain.iter().filter(|d| d.family == family).cloned().collect()
            };
            // Per run: (min, median, max, CV) of the drain, and the spread of the lent share.
            let drain: Vec<_> = runs
                .iter()
                .map(|m| spread(rows(m).iter().map(DrainRow::drain).collect()))
                .collect();
            let lent: Vec<_> = runs
                .iter()
                .map(|m| spread(rows(m).iter().map(DrainRow::lent_share).collect()))
                .collect();
            let of = |x: &[(f64, f64, f64, f64)], f: fn(&(f64, f64, f64, f64)) -> f64| {
                Stat::of(x.iter().map(f).collect())
            };
            FamilyDrain {
                lenders: runs.first().map_or(0, |m| rows(m).len()),
                min: of(&drain, |x| x.0),
                median: of(&drain, |x| x.1),
                max: of(&drain, |x| x.2),
                cv: of(&drain, |x| x.3),
                lent_median: of(&lent, |x| x.1),
                family,
            }
        })
        .collect()
}

fn kinds(runs: &[&MixedRun]) -> Vec<KindStat> {
    let k = runs.len().max(1) as f64;
    let mut names: Vec<&String> = runs.iter().flat_map(|m| m.kinds.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let all: Vec<_> = runs.iter().filter_map(|m| m.kinds.get(name)).collect();
            let mean = |f: &dyn Fn(&crate::outcome::KindRun) -> u64| {
                all.iter().map(|x| f(x)).sum::<u64>() as f64 / k
            };
            KindStat {
                kind: name.clone(),
                servable: all.iter().any(|x| x.servable),
                demand: mean(&|x| x.demand),
                served_own: mean(&|x| x.served_own),
                served_borrowed: mean(&|x| x.served_borrowed),
                nobody_serves: mean(&|x| x.nobody_serves),
                failed: mean(&|x| x.failed),
                attempts: mean(&|x| x.attempts),
                tokens_spent: mean(&|x| x.tokens_spent()),
            }
        })
        .collect()
}

fn lenders(runs: &[&MixedRun]) -> Vec<LenderDrain> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .drain
        .iter()
        .map(|row| {
            let same: Vec<&DrainRow> = runs
                .iter()
                .filter_map(|m| {
                    m.drain
                        .iter()
                        .find(|d| d.member == row.member && d.family == row.family)
                })
                .collect();
            let of = |f: &dyn Fn(&DrainRow) -> f64| Stat::of(same.iter().map(|d| f(d)).collect());
            LenderDrain {
                member: row.member,
                profile: row.profile.clone(),
                family: row.family.clone(),
                drain: of(&DrainRow::drain),
                own_share: of(&|d| ratio(d.own as f64, d.capacity as f64)),
                lent_share: of(&DrainRow::lent_share),
                wanted: ratio(
                    same.iter().map(|d| d.wanted).sum::<u64>() as f64,
                    same.len() as f64,
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_min_median_max_and_cv() {
        let (min, median, max, cv) = spread(vec![0.2, 0.6, 0.4]);
        assert_eq!((min, median, max), (0.2, 0.4, 0.6));
        assert!((cv - (0.08f64 / 3.0).sqrt() / 0.4).abs() < 1e-12);
        assert_eq!(spread(vec![0.5, 0.5]).3, 0.0, "even: no variation");
        assert_eq!(spread(vec![0.1, 0.3]).1, 0.2);
        assert_eq!(spread(vec![]), (0.0, 0.0, 0.0, 0.0));
    }
}
