//! The claims part of the report (scenarios with `[claims]`): tokens served more than once anywhere in the group,
//! the verdicts of honest and adversarial claims, how many reached a majority, the time to a verdict, and the
//! multi-spender's results.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Stat, percentile};
use crate::outcome::{ClaimCounts, ClaimsRun, RunResult, ratio};
use crate::scenario::Scenario;

/// Group-wide single spend across seeds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ClaimsReport {
    /// `off`, `strict` or `lenient`.
    pub mode: String,
    /// Replicas per token asked for.
    pub replicas: usize,
    /// Per-replica timeout, ms.
    pub timeout_ms: f64,
    /// Member uptime under churn (1 without `[faults.churn]`).
    pub uptime: f64,
    /// Per run: `tokens_served_twice`, `honest_tokens_served_twice`, `extra_serves`, `max_serves`, `honest_claims`,
    /// `majority` (share of honest claims a majority of replicas answered), `borrows_majority` (share of claimed
    /// borrows with such a claim), `serve`, `spent_elsewhere`, `split_vote`, `unreachable_refused`,
    /// `unreachable_served` (shares of honest claims), `claim_p50_ms`, `claim_p99_ms`, `multi_tokens`,
    /// `multi_served_twice` (share of the multi-spender's tokens served by two lenders or more), `releases`,
    /// `releases_lost`, `grants_unheard`, `no_majority_again` (share of honest claims without a majority whose token
    /// had found none before), `honest_burnt` (share of honest claims denied: spent elsewhere or split
    /// vote), `max_replica_claims`.
    pub summary: BTreeMap<String, Stat>,
    /// Tokens served more than once, all seeds.
    pub tokens_served_twice: u64,
    /// Seeds run.
    pub seeds: usize,
    /// Seeds with a token served more than once.
    pub seeds_with_double_serves: Vec<u64>,
    /// Honest claims by verdict, all seeds.
    pub honest: ClaimCounts,
    /// Adversaries' claims by verdict, all seeds.
    pub adversary: ClaimCounts,
    /// Multi-spenders' tokens by the number of lenders that served them, all seeds.
    pub multi_served_at: BTreeMap<String, u64>,
    /// Replicas' refusals by reason, all seeds.
    pub refusals: BTreeMap<String, u64>,
}

fn add(into: &mut ClaimCounts, c: &ClaimCounts) {
    into.claims += c.claims;
    into.serve += c.serve;
    into.spent_elsewhere += c.spent_elsewhere;
    into.split_vote += c.split_vote;
    into.unreachable_refused += c.unreachable_refused;
    into.unreachable_served += c.unreachable_served;
}

impl ClaimsReport {
    /// From the runs of a scenario with `[claims]`; `None` if no run has claims.
    pub fn build(s: &Scenario, runs: &[RunResult]) -> Option<Self> {
        let cfg = s.claims.as_ref()?;
        let with: Vec<(u64, &ClaimsRun)> = runs
            .iter()
            .filter_map(|r| r.claims.as_ref().map(|c| (r.seed, c)))
            .collect();
        if with.is_empty() {
            return None;
        }
        let stat = |f: &dyn Fn(&ClaimsRun) -> f64| Stat::of(with.iter().map(|(_, c)| f(c)).collect());
        let share = |f: fn(&ClaimCounts) -> u64| {
            move |c: &ClaimsRun| ratio(f(&c.honest) as f64, c.honest.claims as f64)
        };
        let mut summary = BTreeMap::new();
        let mut put = |k: &str, v: Stat| {
            summary.insert(k.to_owned(), v);
        };
        put("tokens_served_twice", stat(&|c| c.tokens_served_twice as f64));
        put(
            "honest_tokens_served_twice",
            stat(&|c| c.honest_tokens_served_twice as f64),
        );
        put("extra_serves", stat(&|c| c.extra_serves as f64));
        put("max_serves", stat(&|c| c.max_serves as f64));
        put("honest_claims", stat(&|c| c.honest.claims as f64));
        put("majority", stat(&share(ClaimCounts::majority)));
        put(
            "borrows_majority",
            stat(&|c| ratio(c.borrows_majority as f64, c.borrows_claimed as f64)),
        );
        put("serve", stat(&share(|x| x.serve)));
        put("spent_elsewhere", stat(&share(|x| x.spent_elsewhere)));
        put("split_vote", stat(&share(|x| x.split_vote)));
        put("unreachable_refused", stat(&share(|x| x.unreachable_refused)));
        put("unreachable_served", stat(&share(|x| x.unreachable_served)));
        put("claim_p50_ms", stat(&|c| percentile(&c.claim_ms, 0.5)));
        put("claim_p99_ms", stat(&|c| percentile(&c.claim_ms, 0.99)));
        put("multi_tokens", stat(&|c| c.multi_tokens as f64));
        put(
            "multi_served_twice",
            stat(&|c| {
                let twice: u64 = c
                    .multi_served_at
                    .iter()
                    .filter(|(k, _)| k.parse::<u64>().is_ok_and(|k| k > 1))
                    .map(|(_, v)| v)
                    .sum();
                ratio(twice as f64, c.multi_tokens as f64)
            }),
        );
        put("releases", stat(&|c| c.releases as f64));
        put("releases_lost", stat(&|c| c.releases_lost as f64));
        put("grants_unheard", stat(&|c| c.grants_unheard as f64));
        put(
            "no_majority_again",
            stat(&|c| {
                let none = c.honest.unreachable_refused + c.honest.unreachable_served;
                ratio(c.no_majority_again as f64, none as f64)
            }),
        );
        put("honest_burnt", stat(&share(|x| x.spent_elsewhere + x.split_vote)));
        put("max_replica_claims", stat(&|c| c.max_replica_claims as f64));
        let mut r = ClaimsReport {
            mode: cfg.mode.name().to_owned(),
            replicas: cfg.replicas,
            timeout_ms: cfg.timeout_ms,
            uptime: s.faults.churn.as_ref().map_or(1.0, |c| c.uptime),
            seeds: with.len(),
            summary,
            ..ClaimsReport::default()
        };
        for (seed, c) in &with {
            r.tokens_served_twice += c.tokens_served_twice;
            if c.tokens_served_twice > 0 {
                r.seeds_with_double_serves.push(*seed);
            }
            add(&mut r.honest, &c.honest);
            add(&mut r.adversary, &c.adversary);
            for (k, v) in &c.multi_served_at {
                *r.multi_served_at.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &c.refusals {
                *r.refusals.entry(k.clone()).or_default() += v;
            }
        }
        Some(r)
    }

    /// A summary metric's mean (0 if absent).
    pub fn mean(&self, metric: &str) -> f64 {
        self.summary.get(metric).map_or(0.0, |s| s.mean)
    }

    /// One line for the command's output.
    pub fn summary_line(&self) -> String {
        let mut twice = format!(
            "tokens served more than once {} in all ({} of {} seeds)",
            self.tokens_served_twice,
            self.seeds_with_double_serves.len(),
            self.seeds,
        );
        if self.mean("multi_tokens") > 0.0 {
            twice += &format!(
                ", the multi-spender's served by two lenders or more {:.1} %",
                self.mean("multi_served_twice") * 100.0
            );
        }
        if self.mode == "off" {
            return format!(
                "claims off (per-lender spent sets), uptime {:.0} %: {twice}",
                self.uptime * 100.0
            );
        }
        format!(
            "claims {} ({} replicas, {} ms, uptime {:.0} %): {twice}; honest claims reaching a majority {:.2} %, \
             without one {:.2} % ({}); claim p50 {:.0} ms, p99 {:.0} ms",
            self.mode,
            self.replicas,
            self.timeout_ms,
            self.uptime * 100.0,
            self.mean("majority") * 100.0,
            (self.mean("unreachable_refused") + self.mean("unreachable_served")) * 100.0,
            if self.mode == "lenient" {
                "served anyway"
            } else {
                "refused"
            },
            self.mean("claim_p50_ms"),
            self.mean("claim_p99_ms"),
        )
    }

    pub(super) fn to_markdown(&self, md: &mut String) {
        let g =
            |k: &str, scale: f64, d: usize| self.summary.get(k).map_or(String::new(), |s| s.show(scale, d));
        let what = match self.mode.as_str() {
            "off" => {
                "Lenders keep their own spent sets only (no claims): a token can be served once at each lender."
            }
            "strict" => {
                "Each lender claims every redeemed token at its replicas before any work and serves only with a \
                 majority of grants; without a majority it refuses (`no_quorum`), releases the grants, and the token \
                 stays unspent."
            }
            _ => {
                "Each lender claims every redeemed token at its replicas before any work and serves with a majority \
                 of grants; without a majority it serves anyway (lenient), so a double spend can slip through while \
                 replicas are unreachable."
            }
        };
        let _ = writeln!(
            md,
            "## Claims\n\nMode **{}**, {} replicas per token over the epoch's frozen roster, {} ms per replica, \
             member uptime {:.0} %. {what}\n\n\
             **Tokens served more than once anywhere in the group: {}** in all {} seeds{}.\n\n\
             | per run | value |\n|---|---|\n\
             | tokens served more than once (of them honest borrowers') | {} ({}) |\n\
             | serves beyond a token's first / most lenders serving one token | {} / {} |\n\
             | honest claims | {} |\n\
             | … a majority of the token's replicas answered (%) | {} |\n\
             | claimed borrows with a claim that reached a majority (%) | {} |\n\
             | … granted: served (%) | {} |\n\
             | … denied: spent elsewhere / split vote (%) | {} / {} |\n\
             | … no majority: refused / served anyway (%) | {} / {} |\n\
             | … of those, a token that had found no majority before (same replicas again, %) | {} |\n\
             | claim to verdict p50 / p99 (ms) | {} / {} |\n\
             | releases sent / that never reached their replica / grants the refusing lender never heard of | {} / {} \
             / {} |\n\
             | claims held by the fullest replica at the end | {} |\n\
             | multi-spender: tokens presented / share served by two lenders or more (%) | {} / {} |\n",
            self.mode,
            self.replicas,
            self.timeout_ms,
            self.uptime * 100.0,
            self.tokens_served_twice,
            self.seeds,
            match self.seeds_with_double_serves.len() {
                0 => String::new(),
                k if k <= 10 => format!(" (seeds {:?})", self.seeds_with_double_serves),
                k => format!(
                    " ({k} seeds, the first {:?})",
                    &self.seeds_with_double_serves[..10]
                ),
            },
            g("tokens_served_twice", 1.0, 2),
            g("honest_tokens_served_twice", 1.0, 2),
            g("extra_serves", 1.0, 2),
            g("max_serves", 1.0, 2),
            g("honest_claims", 1.0, 1),
            g("majority", 100.0, 2),
            g("borrows_majority", 100.0, 2),
            g("serve", 100.0, 2),
            g("spent_elsewhere", 100.0, 3),
            g("split_vote", 100.0, 3),
            g("unreachable_refused", 100.0, 2),
            g("unreachable_served", 100.0, 2),
            g("no_majority_again", 100.0, 1),
            g("claim_p50_ms", 1.0, 0),
            g("claim_p99_ms", 1.0, 0),
            g("releases", 1.0, 1),
            g("releases_lost", 1.0, 2),
            g("grants_unheard", 1.0, 2),
            g("max_replica_claims", 1.0, 0),
            g("multi_tokens", 1.0, 1),
            g("multi_served_twice", 100.0, 1),
        );
        let counts = |c: &ClaimCounts| {
            format!(
                "{} claims: {} served, {} spent elsewhere, {} split vote, {} unreachable refused, {} unreachable \
                 served",
                c.claims,
                c.serve,
                c.spent_elsewhere,
                c.split_vote,
                c.unreachable_refused,
                c.unreachable_served
            )
        };
        let _ = writeln!(
            md,
            "All seeds — honest claims: {}. Adversaries' claims: {}. The multi-spender's tokens by the number of \
             lenders that served them: {:?}. Replicas' refusals: {:?}.\n",
            counts(&self.honest),
            counts(&self.adversary),
            self.multi_served_at,
            self.refusals,
        );
        if self.honest.spent_elsewhere + self.honest.split_vote > 0 {
            let _ = writeln!(
                md,
                "Honest claims denied ({} spent elsewhere, {} split vote, all seeds) were never served anywhere: an \
                 earlier claim of the token was refused for want of a majority (strict) and a replica that had \
                 granted it kept it (its grant never reached the lender, or it was down when the release came), so \
                 with replicas down the next claim meets a denial and loses; a split vote then leaves its grants \
                 behind too. The borrower keeps presenting the token: `protocol::borrow::BURNING_REJECTIONS` does \
                 not list `spent_elsewhere` or `split_vote`.\n",
                self.honest.spent_elsewhere, self.honest.split_vote,
            );
        }
        let _ = writeln!(
            md,
            "A multi-spender presents one token at several lenders at once, the spend re-bound to each \
             (`multi_spend` under *Adversary members*). Per-lender spent sets cannot see it; the token's replicas \
             store its first claim and deny the others, so at most one lender gets a majority. The replica linkage \
             attackers are under *Linkage*: `replica` names the borrower from the claim alone, `replica-headroom` \
             adds the headroom buckets every member gets by gossip.\n"
        );
    }
}
