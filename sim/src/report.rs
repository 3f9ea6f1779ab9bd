//! Aggregation across seeds (mean ± 1.96·sd/√k) and the `report.json` / `report.md` renderings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::outcome::{Attacks, Bin, EpochRun, RunResult, Window, ratio};
use crate::scenario::Scenario;

mod claims;
mod mixed;

pub use claims::ClaimsReport;
pub use mixed::{FamilyDrain, KindStat, LenderDrain, MixedReport};

/// A metric across seeds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Half-width of the 95 % confidence interval (1.96·sd/√k; 0 for one seed).
    pub ci95: f64,
    /// Per-seed values.
    pub values: Vec<f64>,
}

impl Stat {
    /// From per-seed values.
    pub fn of(values: Vec<f64>) -> Self {
        let k = values.len() as f64;
        let mean = ratio(values.iter().sum(), k);
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1.0)
        } else {
            0.0
        };
        Stat {
            mean,
            ci95: 1.96 * var.sqrt() / k.max(1.0).sqrt(),
            values,
        }
    }

    fn show(&self, scale: f64, digits: usize) -> String {
        format!(
            "{:.*} ± {:.*}",
            digits,
            self.mean * scale,
            digits,
            self.ci95 * scale
        )
    }
}

/// A linkage attacker across seeds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct LinkageStat {
    /// Accuracy.
    pub accuracy: Stat,
    /// Chance.
    pub chance: Stat,
    /// Guesses, all seeds.
    pub guesses: u64,
}

/// One epoch across the seeds that had it (schedules are the admin's, so the same in every seed but for the first
/// epoch's start, which depends on the seed's clocks).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EpochStat {
    /// The epoch number.
    pub epoch: u32,
    /// Seeds that had it.
    pub seeds: usize,
    /// Start, minutes (mean).
    pub start_min: f64,
    /// End, minutes (mean).
    pub end_min: f64,
    /// Tokens taken until, minutes (mean).
    pub accepted_until_min: f64,
    /// Cut short by a rotation.
    pub ended_by_rotation: bool,
    /// Cancelled before it began.
    pub cancelled: bool,
    /// Blind signatures made for it.
    pub tokens_issued: Stat,
    /// Members the issuer signed for in it.
    pub members_refilled: Stat,
    /// Members that borrowed while it was current.
    pub members_borrowing: Stat,
    /// Of those, members with no token of it.
    pub borrowing_not_refilled: Stat,
    /// Borrows started while it was current.
    pub borrows: Stat,
    /// Of those, served.
    pub borrows_served: Stat,
    /// Of those, failed.
    pub borrows_failed: Stat,
    /// Borrows served with its tokens.
    pub served_with_its_tokens: Stat,
    /// Its tokens pruned unspent.
    pub tokens_expired: Stat,
    /// Spent-set entries when retired, all lenders.
    pub spent_at_retirement: Stat,
}

/// One switch, pooled over seeds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SwitchStat {
    /// The epoch that starts.
    pub epoch: u32,
    /// When, minutes.
    pub at_min: f64,
    /// An immediate rotation.
    pub rotation: bool,
    /// Before the switch, summed over seeds.
    pub before: Window,
    /// After the switch, summed over seeds.
    pub after: Window,
}

/// Epochs across seeds (scenarios with `[epochs]`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct EpochReport {
    /// Per epoch.
    pub epochs: Vec<EpochStat>,
    /// Per switch.
    pub switches: Vec<SwitchStat>,
    /// Width of the windows around a switch, minutes.
    pub switch_window_minutes: f64,
    /// Per run: `switches`, `epoch_failures`, `max_epochs_held`, `max_spent_epochs`, `tokens_expired`,
    /// `served_before_switch`, `served_after_switch` (served fraction in the windows, all switches pooled).
    pub summary: BTreeMap<String, Stat>,
    /// Announcements refused by members, all seeds (must be empty).
    pub adoption_rejections: BTreeMap<String, u64>,
    /// Announcements adopted late, all seeds.
    pub adoptions_deferred: u64,
}

impl EpochReport {
    /// From the runs that have epochs; `None` if none has.
    pub fn build(runs: &[&EpochRun]) -> Option<Self> {
        if runs.is_empty() {
            return None;
        }
        let mut numbers: Vec<u32> = runs.iter().flat_map(|r| r.rows.iter().map(|x| x.epoch)).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let epochs = numbers
            .into_iter()
            .map(|e| {
                let rows: Vec<_> = runs
                    .iter()
                    .filter_map(|r| r.rows.iter().find(|x| x.epoch == e))
                    .collect();
                let k = rows.len() as f64;
                let mean =
                    |f: &dyn Fn(&crate::outcome::EpochRow) -> f64| ratio(rows.iter().map(|x| f(x)).sum(), k);
                let stat = |f: &dyn Fn(&crate::outcome::EpochRow) -> u64| {
                    Stat::of(rows.iter().map(|x| f(x) as f64).collect())
                };
                EpochStat {
                    epoch: e,
                    seeds: rows.len(),
                    start_min: mean(&|x| x.start_min),
                    end_min: mean(&|x| x.end_min),
                    accepted_until_min: mean(&|x| x.accepted_until_min),
                    ended_by_rotation: rows.iter().any(|x| x.ended_by_rotation),
                    cancelled: rows.iter().any(|x| x.cancelled),
                    tokens_issued: stat(&|x| x.tokens_issued),
                    members_refilled: stat(&|x| x.members_refilled),
                    members_borrowing: stat(&|x| x.members_borrowing),
                    borrowing_not_refilled: stat(&|x| x.borrowing_not_refilled),
                    borrows: stat(&|x| x.borrows),
                    borrows_served: stat(&|x| x.borrows_served),
                    borrows_failed: stat(&|x| x.borrows_failed),
                    served_with_its_tokens: stat(&|x| x.served_with_its_tokens),
                    tokens_expired: stat(&|x| x.tokens_expired),
                    spent_at_retirement: stat(&|x| x.spent_at_retirement),
                }
            })
            .collect();
        let mut switches: Vec<SwitchStat> = Vec::new();
        for r in runs {
            for sw in &r.switches {
                let i = match switches.iter().position(|x| x.epoch == sw.epoch) {
                    Some(i) => i,
                    None => {
                        switches.push(SwitchStat {
                            epoch: sw.epoch,
                            at_min: sw.at_min,
                            rotation: sw.rotation,
                            ..SwitchStat::default()
                        });
                        switches.len() - 1
                    }
                };
                add(&mut switches[i].before, &sw.before);
                add(&mut switches[i].after, &sw.after);
            }
        }
        switches.sort_by(|a, b| a.at_min.total_cmp(&b.at_min).then(a.epoch.cmp(&b.epoch)));
        let stat = |f: &dyn Fn(&EpochRun) -> f64| Stat::of(runs.iter().map(|r| f(r)).collect());
        let pooled = |r: &EpochRun, after: bool| {
            let mut w = Window::default();
            for sw in &r.switches {
                add(&mut w, if after { &sw.after } else { &sw.before });
            }
            w.served_fraction()
        };
        let mut summary = BTreeMap::new();
        summary.insert("switches".into(), stat(&|r| r.switches.len() as f64));
        summary.insert("epoch_failures".into(), stat(&|r| r.epoch_failures as f64));
        summary.insert("max_epochs_held".into(), stat(&|r| r.max_epochs_held as f64));
        summary.insert("max_spent_epochs".into(), stat(&|r| r.max_spent_epochs as f64));
        summary.insert(
            "tokens_expired".into(),
            stat(&|r| r.rows.iter().map(|x| x.tokens_expired).sum::<u64>() as f64),
        );
        summary.insert("served_before_switch".into(), stat(&|r| pooled(r, false)));
        summary.insert("served_after_switch".into(), stat(&|r| pooled(r, true)));
        let mut adoption_rejections = BTreeMap::new();
        for r in runs {
            for (k, v) in &r.adoption_rejections {
                *adoption_rejections.entry(k.clone()).or_default() += v;
            }
        }
        Some(EpochReport {
            epochs,
            switches,
            switch_window_minutes: runs.first().map_or(0.0, |r| r.switch_window_minutes),
            summary,
            adoption_rejections,
            adoptions_deferred: runs.iter().map(|r| r.adoptions_deferred).sum(),
        })
    }

    /// A summary metric's mean (0 if absent).
    pub fn mean(&self, metric: &str) -> f64 {
        self.summary.get(metric).map_or(0.0, |s| s.mean)
    }

    fn to_markdown(&self, md: &mut String) {
        let g = |k: &str, d: usize| self.summary.get(k).map_or(String::new(), |s| s.show(1.0, d));
        let pct = |k: &str| self.summary.get(k).map_or(String::new(), |s| s.show(100.0, 2));
        let _ = writeln!(
            md,
            "## Epochs\n\nPer run: **{}** switches; borrows failed for an epoch reason: {} (`epoch_closed`, \
             `unknown_epoch`, `wrong_key_id`, `no_spendable_token`, `tokens_expired`); at most {} epochs in a member's book and {} in \
             a lender's spent set at once; {} tokens expired unspent. Announcements refused by members: {:?}; \
             adopted late: {}.\n",
            g("switches", 1),
            g("epoch_failures", 1),
            g("max_epochs_held", 1),
            g("max_spent_epochs", 1),
            g("tokens_expired", 1),
            self.adoption_rejections,
            self.adoptions_deferred
        );
        let _ = writeln!(
            md,
            "Minutes on the admin's clock; counts are means across seeds. Borrows count in the epoch that was \
             current when they started; *served with its tokens* counts by the token's epoch (spends in the grace \
             period included); *borrowing, not refilled* counts members that borrowed in the epoch but got no token \
             of it.\n\n\
             | epoch | start | end | tokens taken until | issued | members refilled | borrows | served | failed | \
             borrowing, not refilled | served with its tokens | expired unspent | spent set at retirement |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for e in &self.epochs {
            let note = if e.cancelled {
                " (cancelled)"
            } else if e.ended_by_rotation {
                " (rotated out)"
            } else {
                ""
            };
            let _ = writeln!(
                md,
                "| {}{note} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | \
                 {:.1} |",
                e.epoch,
                e.start_min,
                e.end_min,
                e.accepted_until_min,
                e.tokens_issued.mean,
                e.members_refilled.mean,
                e.borrows.mean,
                e.borrows_served.mean,
                e.borrows_failed.mean,
                e.borrowing_not_refilled.mean,
                e.served_with_its_tokens.mean,
                e.tokens_expired.mean,
                e.spent_at_retirement.mean,
            );
        }
        let _ = writeln!(
            md,
            "\n### Served demand across switches\n\nServed fraction of the requests made in the {w} minutes before \
             and the {w} minutes after each switch, all seeds pooled (all switches, mean ± 95 % CI across seeds: {} % \
             before, {} % after).\n\n\
             | switch to | at (min) | served before (oracle) | served after (oracle) | borrows before: failed, for an \
             epoch reason | borrows after: failed, for an epoch reason |\n\
             |---|---|---|---|---|---|",
            pct("served_before_switch"),
            pct("served_after_switch"),
            w = self.switch_window_minutes
        );
        for sw in &self.switches {
            let rot = if sw.rotation { " (rotation)" } else { "" };
            let _ = writeln!(
                md,
                "| {}{rot} | {:.2} | {:.2} % ({:.2} %) of {} | {:.2} % ({:.2} %) of {} | {}: {}, {} | {}: {}, {} |",
                sw.epoch,
                sw.at_min,
                sw.before.served_fraction() * 100.0,
                ratio(sw.before.oracle as f64, sw.before.demand as f64) * 100.0,
                sw.before.demand,
                sw.after.served_fraction() * 100.0,
                ratio(sw.after.oracle as f64, sw.after.demand as f64) * 100.0,
                sw.after.demand,
                sw.before.borrows,
                sw.before.borrows_failed,
                sw.before.epoch_failures,
                sw.after.borrows,
                sw.after.borrows_failed,
                sw.after.epoch_failures,
            );
        }
        let _ = writeln!(
            md,
            "\nAt a rotation, the first member holding a token of the rotated-out epoch, and of a cancelled next epoch, \
             keeps one and presents it to every other member a minute later (a removed member's leftover tokens): \
             `rotated_out_token` and `cancelled_epoch_token` under *Adversary members*. A lender the rotation has \
             reached refuses them (serving one is a violation); one it has not reached yet (a partition) still takes \
             them (`served_before_the_rotation_reached_it`)."
        );
        md.push('\n');
    }
}

fn add(into: &mut Window, w: &Window) {
    into.demand += w.demand;
    into.served += w.served;
    into.oracle += w.oracle;
    into.borrows += w.borrows;
    into.borrows_failed += w.borrows_failed;
    into.epoch_failures += w.epoch_failures;
}

/// Everything across the seeds of one scenario and policy.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    /// The scenario as run (after overrides).
    pub scenario: Scenario,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Headline metrics (`served`, `no_sharing`, `oracle`, `latency_p50_ms`, `latency_p90_ms`, `latency_p99_ms`,
    /// `jain`, `herding`, `borrowed_share`, `tokens_issued`).
    pub metrics: BTreeMap<String, Stat>,
    /// Unserved requests by cause, as a fraction of demand.
    pub failures: BTreeMap<String, Stat>,
    /// Linkage attackers.
    pub linkage: BTreeMap<String, LinkageStat>,
    /// Adversary members, summed over seeds.
    pub attacks: Attacks,
    /// Attestations refused by honest acceptors, summed over seeds.
    pub attestation_rejections: BTreeMap<String, u64>,
    /// Violations (must be empty).
    pub violations: Vec<String>,
    /// Served over time, mean across seeds.
    pub bins: Vec<Bin>,
    /// Bin width, minutes.
    pub bin_minutes: f64,
    /// Borrow latency CDF points (ms, fraction), all seeds pooled.
    pub latency_cdf: Vec<(u64, f64)>,
    /// Lender load per member (sum over seeds), with each member's share of all lending.
    pub lender_load: Vec<u64>,
    /// Events processed, all seeds.
    pub events: u64,
    /// Epochs (scenarios with `[epochs]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<EpochReport>,
    /// Mixed upstreams (scenarios with `[[profiles]]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixed: Option<MixedReport>,
    /// Group-wide single spend (scenarios with `[claims]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<ClaimsReport>,
    /// The node's default per-member limits over the honest traffic, all seeds: admitted and throttled requests
    /// (summed), and the busiest second of one sender at one receiver (the largest), by surface.
    pub limits: crate::outcome::LimitsRun,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

impl Report {
    /// Aggregates runs (one per seed).
    pub fn build(scenario: &Scenario, runs: &[RunResult]) -> Self {
        let stat = |f: &dyn Fn(&RunResult) -> f64| Stat::of(runs.iter().map(f).collect());
        let mut metrics = BTreeMap::new();
        metrics.insert("served".into(), stat(&|r| r.served_fraction));
        metrics.insert("no_sharing".into(), stat(&|r| r.no_sharing_fraction));
        metrics.insert("oracle".into(), stat(&|r| r.oracle_fraction));
        metrics.insert(
            "latency_p50_ms".into(),
            stat(&|r| percentile(&r.borrow_latency_ms, 0.5)),
        );
        metrics.insert(
            "latency_p90_ms".into(),
            stat(&|r| percentile(&r.borrow_latency_ms, 0.9)),
        );
        metrics.insert(
            "latency_p99_ms".into(),
            stat(&|r| percentile(&r.borrow_latency_ms, 0.99)),
        );
        metrics.insert("jain".into(), stat(&|r| r.jain));
        metrics.insert("herding".into(), stat(&|r| r.herding));
        metrics.insert(
            "borrowed_share".into(),
            stat(&|r| ratio(r.served_borrowed as f64, r.demand as f64)),
        );
        metrics.insert("tokens_issued".into(), stat(&|r| r.tokens_issued as f64));
        metrics.insert(
            "borrow_messages_share".into(),
            stat(&|r| ratio(r.borrow_messages as f64, r.demand as f64)),
        );
        let mut causes: Vec<String> = runs.iter().flat_map(|r| r.failures.keys().cloned()).collect();
        causes.sort();
        causes.dedup();
        let failures = causes
            .into_iter()
            .map(|c| {
                let s = stat(&|r| ratio(r.failures.get(&c).copied().unwrap_or(0) as f64, r.demand as f64));
                (c, s)
            })
            .collect();
        let mut names: Vec<String> = runs.iter().flat_map(|r| r.linkage.keys().cloned()).collect();
        names.sort();
        names.dedup();
        let linkage = names
            .into_iter()
            .map(|name| {
                let get = |r: &RunResult| r.linkage.get(&name).cloned().unwrap_or_default();
                let with: Vec<&RunResult> = runs.iter().filter(|r| get(r).guesses > 0).collect();
                let l = LinkageStat {
                    accuracy: Stat::of(with.iter().map(|r| get(r).accuracy()).collect()),
                    chance: Stat::of(with.iter().map(|r| get(r).chance()).collect()),
                    guesses: runs.iter().map(|r| get(r).guesses).sum(),
                };
                (name, l)
            })
            .collect();
        let mut attacks = Attacks::default();
        let mut attestation_rejections = BTreeMap::new();
        for r in runs {
            for (k, v) in &r.attacks.attempts {
                *attacks.attempts.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.attacks.outcomes {
                *attacks.outcomes.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.attestation_rejections {
                *attestation_rejections.entry(k.clone()).or_default() += v;
            }
        }
        let k = runs.len().max(1) as u64;
        let nbins = runs.iter().map(|r| r.bins.len()).max().unwrap_or(0);
        let bins = (0..nbins)
            .map(|i| {
                let sum = |f: &dyn Fn(&Bin) -> u64| {
                    runs.iter().filter_map(|r| r.bins.get(i)).map(f).sum::<u64>() / k
                };
                Bin {
                    demand: sum(&|b| b.demand),
                    served: sum(&|b| b.served),
                    no_sharing: sum(&|b| b.no_sharing),
                    oracle: sum(&|b| b.oracle),
                }
            })
            .collect();
        let mut all: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.borrow_latency_ms.iter().copied())
            .collect();
        all.sort_unstable();
        let latency_cdf = (0..=100)
            .map(|i| {
                let p = f64::from(i) / 100.0;
                (percentile(&all, p) as u64, p)
            })
            .collect();
        let n = runs.iter().map(|r| r.lender_load.len()).max().unwrap_or(0);
        let lender_load = (0..n)
            .map(|i| runs.iter().filter_map(|r| r.lender_load.get(i)).sum())
            .collect();
        Report {
            scenario: scenario.clone(),
            seeds: runs.iter().map(|r| r.seed).collect(),
            metrics,
            failures,
            linkage,
            attacks,
            attestation_rejections,
            violations: runs.iter().flat_map(|r| r.violations.iter().cloned()).collect(),
            bins,
            bin_minutes: runs.first().map_or(0.0, |r| r.bin_minutes),
            latency_cdf,
            lender_load,
            events: runs.iter().map(|r| r.events).sum(),
            epochs: EpochReport::build(&runs.iter().filter_map(|r| r.epochs.as_ref()).collect::<Vec<_>>()),
            mixed: MixedReport::build(runs),
            claims: ClaimsReport::build(scenario, runs),
            limits: {
                let mut l = crate::outcome::LimitsRun::default();
                for r in runs {
                    for (k, v) in &r.limits.admitted {
                        *l.admitted.entry(k.clone()).or_default() += v;
                    }
                    for (k, v) in &r.limits.throttled {
                        *l.throttled.entry(k.clone()).or_default() += v;
                    }
                    for (k, v) in &r.limits.busiest_second {
                        let top = l.busiest_second.entry(k.clone()).or_default();
                        *top = (*top).max(*v);
                    }
                }
                l
            },
        }
    }

    /// A metric's mean (0 if absent).
    pub fn mean(&self, metric: &str) -> f64 {
        self.metrics.get(metric).map_or(0.0, |s| s.mean)
    }

    /// Pretty JSON; deterministic for a given scenario and seeds.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The markdown report. `commit` and `wall` describe the build and the run (not part of the JSON, which
    /// must be reproducible).
    pub fn to_markdown(&self, commit: &str, wall: &str, charts: &[(&str, &str)]) -> String {
        let s = &self.scenario;
        let mut md = String::new();
        let _ = writeln!(md, "# lendmesh-sim report: `{}`\n", s.name);
        let _ = writeln!(
            md,
            "- members: {}, duration: {} h, policy: `{}`, attestation period: {} s, privacy: {:?}",
            s.members,
            s.duration_hours,
            s.routing.policy.name(),
            s.attestation_period_s,
            s.privacy
        );
        let _ = writeln!(md, "- seeds: {:?}", self.seeds);
        let _ = writeln!(
            md,
            "- commit: `{commit}`; wall time: {wall}; events: {}",
            self.events
        );
        let _ = writeln!(md, "- intervals are mean ± 1.96·sd/√k across the k seeds\n");
        let _ = writeln!(md, "## Safety\n");
        if self.violations.is_empty() {
            let group = match &self.claims {
                Some(c) if c.mode == "strict" => ", one serve per token in the group",
                _ => "",
            };
            let _ = writeln!(
                md,
                "Invariant violations: **0** (capacity, one serve per token per lender{group}, only issued tokens, no borrower in lender records, liveness).\n"
            );
        } else {
            let _ = writeln!(md, "**{} invariant violations:**\n", self.violations.len());
            for v in self.violations.iter().take(20) {
                let _ = writeln!(md, "- {v}");
            }
            md.push('\n');
        }
        let _ = writeln!(md, "## Served demand\n\n| | served fraction |\n|---|---|");
        for (label, key) in [
            ("lendmesh (this policy)", "served"),
            ("baseline: no sharing", "no_sharing"),
            ("baseline: oracle central pool", "oracle"),
        ] {
            if let Some(st) = self.metrics.get(key) {
                let _ = writeln!(md, "| {label} | {} % |", st.show(100.0, 2));
            }
        }
        let _ = writeln!(md, "\n## Borrowing\n\n| metric | value |\n|---|---|");
        for (label, key, scale, digits) in [
            ("served by a lender (% of demand)", "borrowed_share", 100.0, 2),
            ("borrow latency p50 (ms)", "latency_p50_ms", 1.0, 0),
            ("borrow latency p90 (ms)", "latency_p90_ms", 1.0, 0),
            ("borrow latency p99 (ms)", "latency_p99_ms", 1.0, 0),
            ("Jain's fairness of lender load / capacity", "jain", 1.0, 3),
            ("herding: max / mean lender load", "herding", 1.0, 2),
            ("tokens issued per run", "tokens_issued", 1.0, 0),
        ] {
            if let Some(st) = self.metrics.get(key) {
                let _ = writeln!(md, "| {label} | {} |", st.show(scale, digits));
            }
        }
        let _ = writeln!(
            md,
            "\n## Unserved requests by cause (% of demand)\n\n| cause | % |\n|---|---|"
        );
        for (c, st) in &self.failures {
            let _ = writeln!(md, "| {c} | {} |", st.show(100.0, 3));
        }
        md.push('\n');
        if let Some(m) = &self.mixed {
            m.to_markdown(&mut md);
        }
        if let Some(e) = &self.epochs {
            e.to_markdown(&mut md);
        }
        if let Some(c) = &self.claims {
            c.to_markdown(&mut md);
        }
        let _ = writeln!(
            md,
            "## Linkage: who made this borrow?\n\nEach attacker alone names a borrower for every borrow it \
             sees; chance is 1 / (members it cannot rule out).\n\n| attacker | accuracy % | chance % | guesses |\n|---|---|---|---|"
        );
        for (name, l) in &self.linkage {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                l.accuracy.show(100.0, 1),
                l.chance.show(100.0, 1),
                l.guesses
            );
        }
        let _ = writeln!(
            md,
            "\n- `lender`: sees arrival time and everyone's attested headroom **bucket**; guesses the lowest.\n\
             - `lender-exact`: the same attack if attestations carried exact headroom — the gap is what bucketing buys.\n\
             - `relay`: knows the borrower's network identity **by design** (docs/design.md §6: sealed sender hides it from the \
             lender, not the relay); it never sees the token or the content.\n\
             - `admin`: sees only issuance (who got how many blind signatures, when) and, worst case, the spent \
             token; blinding makes the token unlinkable, so it can only guess among members holding tokens.\n\
             - `admin-volume`: the admin's base rate — always the member who drew the most tokens. It links nothing, \
             but refill volume tracks borrowing volume, so heavy borrowers are exposed as heavy borrowers.\n"
        );
        if self.linkage.contains_key("replica") {
            let _ = writeln!(
                md,
                "With claims, a replica gets each claim of the tokens it is a replica of (token hash, epoch, lender, \
                 request id, roster digest), scored at the token's first replica other than the lender; a claim of \
                 its own token is not scored (it knows its own borrows):\n\
                 - `replica`: from the claim alone it can rule out the lender and itself, and names one of the rest.\n\
                 - `replica-headroom`: the claim says when and at which lender a borrow happened; with the headroom \
                 buckets it holds as a member it runs the `lender` attack from its own seat. The gap to `replica` is \
                 the buckets' leak, which claims hand to the replicas too.\n"
            );
        }
        let _ = writeln!(md, "## Adversary members\n\n| attempt | count |\n|---|---|");
        for (k, v) in &self.attacks.attempts {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let _ = writeln!(md, "\n| outcome | count |\n|---|---|");
        for (k, v) in &self.attacks.outcomes {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let note = match &self.claims {
            Some(c) if c.mode != "off" => {
                "`rebound_other_lender` (the same token re-signed for a second lender) and `multi_spend` (one token \
                 at several lenders at once) meet the token's replicas: a lender serves only with a majority of \
                 grants (see *Claims*)."
            }
            _ => {
                "`rebound_other_lender` (the same token re-signed for a second lender) can be served: spent sets are \
                 per lender until group-wide claims land (docs/design.md §7). No lender serves a token twice."
            }
        };
        let _ = writeln!(md, "\n{note}\n");
        if !self.attestation_rejections.is_empty() {
            let _ = writeln!(
                md,
                "Attestations refused by honest members: {:?}\n",
                self.attestation_rejections
            );
        }
        let _ = writeln!(
            md,
            "## Per-member limits\n\nThe node's default limits (`protocol::limits`, docs/design.md §9.3) run over \
             the honest traffic at every receiving member (gossip at the admin), all seeds. Honest use must \
             never be throttled.\n\n| surface | requests | throttled | busiest second (one sender, one receiver) | \
             default rate, burst |\n|---|---|---|---|---|"
        );
        let defaults = lendmesh_protocol::limits::Limits::default();
        for surface in lendmesh_protocol::limits::Surface::ALL {
            let k = surface.label();
            let rate = defaults.rate(surface);
            let _ = writeln!(
                md,
                "| {k} | {} | {} | {} | {}/s, {} |",
                self.limits.admitted.get(k).copied().unwrap_or(0)
                    + self.limits.throttled.get(k).copied().unwrap_or(0),
                self.limits.throttled.get(k).copied().unwrap_or(0),
                self.limits.busiest_second.get(k).copied().unwrap_or(0),
                rate.per_s,
                rate.burst
            );
        }
        let _ = writeln!(md);
        let config = serde_json::to_string_pretty(&self.scenario).unwrap_or_default();
        let _ = writeln!(md, "## Scenario as run\n\n```json\n{config}\n```\n");
        if !charts.is_empty() {
            let _ = writeln!(md, "## Charts\n");
            for (title, file) in charts {
                let _ = writeln!(md, "### {title}\n\n![{title}]({file})\n");
            }
        }
        md
    }
}

/// A markdown table comparing policies on the same scenario and seeds.
pub fn compare_markdown(reports: &[Report]) -> String {
    let mut md = String::new();
    let name = reports.first().map_or("", |r| r.scenario.name.as_str());
    let _ = writeln!(md, "# lendmesh-sim policy comparison: `{name}`\n");
    if let Some(r) = reports.first() {
        let _ = writeln!(
            md,
            "Baselines: no sharing {} %, oracle pool {} %. Seeds {:?}.\n",
            r.metrics
                .get("no_sharing")
                .map_or(String::new(), |s| s.show(100.0, 2)),
            r.metrics
                .get("oracle")
                .map_or(String::new(), |s| s.show(100.0, 2)),
            r.seeds
        );
    }
    let _ = writeln!(
        md,
        "| policy | served % | borrowed % | p50 ms | p99 ms | Jain | herding | violations |\n|---|---|---|---|---|---|---|---|"
    );
    for r in reports {
        let g = |k: &str, scale: f64, d: usize| r.metrics.get(k).map_or(String::new(), |s| s.show(scale, d));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario.routing.policy.name(),
            g("served", 100.0, 2),
            g("borrowed_share", 100.0, 2),
            g("latency_p50_ms", 1.0, 0),
            g("latency_p99_ms", 1.0, 0),
            g("jain", 1.0, 3),
            g("herding", 1.0, 2),
            r.violations.len()
        );
    }
    md
}
