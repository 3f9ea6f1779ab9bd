//! Aggregation across seeds (mean ± 1.96·sd/√k) and the `report.json` / `report.md` renderings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::outcome::{Attacks, Bin, RunResult, ratio};
use crate::scenario::Scenario;

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
            let _ = writeln!(
                md,
                "Invariant violations: **0** (capacity, one serve per token per lender, only issued tokens, no borrower in lender records, liveness).\n"
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
        let _ = writeln!(
            md,
            "\n## Linkage: who made this borrow?\n\nEach attacker alone names a borrower for every borrow it \
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
             - `relay`: knows the borrower's network identity **by design** (DESIGN §6: sealed sender hides it from the \
             lender, not the relay); it never sees the token or the content.\n\
             - `admin`: sees only issuance (who got how many blind signatures, when) and, worst case, the spent \
             token; blinding makes the token unlinkable, so it can only guess among members holding tokens.\n\
             - `admin-volume`: the admin's base rate — always the member who drew the most tokens. It links nothing, \
             but refill volume tracks borrowing volume, so heavy borrowers are exposed as heavy borrowers.\n"
        );
        let _ = writeln!(md, "## Adversary members\n\n| attempt | count |\n|---|---|");
        for (k, v) in &self.attacks.attempts {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let _ = writeln!(md, "\n| outcome | count |\n|---|---|");
        for (k, v) in &self.attacks.outcomes {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let _ = writeln!(
            md,
            "\n`rebound_other_lender` (the same token re-signed for a second lender) can be served: spent sets are \
             per lender until group-wide claims land (DESIGN §7). No lender serves a token twice.\n"
        );
        if !self.attestation_rejections.is_empty() {
            let _ = writeln!(
                md,
                "Attestations refused by honest members: {:?}\n",
                self.attestation_rejections
            );
        }
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
