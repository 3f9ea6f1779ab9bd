//! Small scenarios with asserted outcomes (docs/design.md §12, issue 6 "Done when"). Each runs in seconds.

use lendmesh_protocol::routing::Policy;
use lendmesh_sim::outcome::RunResult;
use lendmesh_sim::report::Report;
use lendmesh_sim::scenario::{Claims, ClaimsMode};
use lendmesh_sim::{Scenario, run_seed};

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Scenario::from_file(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn runs(s: &Scenario, seeds: std::ops::Range<u64>) -> Vec<RunResult> {
    seeds.map(|seed| run_seed(s, seed, &mut |_| {})).collect()
}

#[test]
fn same_seed_same_json_other_seed_differs() {
    let s = scenario("test-skew");
    let json = |seed| Report::build(&s, &runs(&s, seed..seed + 1)).to_json().unwrap();
    let a = json(7);
    assert_eq!(a, json(7), "same seed must give a byte-identical report.json");
    assert_ne!(a, json(8), "another seed must give another report");
}

#[test]
fn pooling_serves_more_than_no_sharing_under_skew() {
    let s = scenario("test-skew");
    let r = Report::build(&s, &runs(&s, 7..10));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let (served, alone, oracle) = (r.mean("served"), r.mean("no_sharing"), r.mean("oracle"));
    assert!(served > alone + 0.05, "pooling {served} vs no sharing {alone}");
    assert!(
        served <= oracle + 1e-9,
        "nothing beats the oracle: {served} vs {oracle}"
    );
}

#[test]
fn power_of_two_serves_at_least_greedy_and_herds_less_when_stale() {
    let base = scenario("test-stale");
    let with = |policy| {
        let mut s = base.clone();
        s.routing.policy = policy;
        Report::build(&s, &runs(&s, 11..14))
    };
    let (p2c, greedy) = (with(Policy::PowerOfTwo), with(Policy::Greedy));
    assert!(p2c.violations.is_empty() && greedy.violations.is_empty());
    assert!(
        p2c.mean("served") >= greedy.mean("served"),
        "p2c {} < greedy {}",
        p2c.mean("served"),
        greedy.mean("served")
    );
    assert!(
        p2c.mean("herding") < greedy.mean("herding"),
        "p2c herds {} >= greedy {}",
        p2c.mean("herding"),
        greedy.mean("herding")
    );
}

#[test]
fn double_spenders_and_forgers_are_refused_with_no_violation() {
    let s = scenario("test-adversaries");
    let r = Report::build(&s, &runs(&s, 3..5));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let attempts = |k: &str| r.attacks.attempts.get(k).copied().unwrap_or(0);
    let outcome = |k: &str| r.attacks.outcomes.get(k).copied().unwrap_or(0);
    for kind in [
        "replay_same_lender",
        "respend_same_lender",
        "spend_at_wrong_lender",
        "forged_token",
        "forged_attestation",
        "replayed_attestation",
    ] {
        assert!(attempts(kind) > 0, "no {kind} attempted");
    }
    // A replay is served only when it is the first copy to arrive (the original was lost or refused for lack
    // of headroom): still one serve per token per lender, which the invariants check on every serve.
    let first_missed = outcome("first_spend/lost") + outcome("first_spend/refused:no_headroom");
    assert!(outcome("replay_same_lender/served") <= first_missed);
    assert!(outcome("replay_same_lender/answered_idempotently_no_second_serve") > 0);
    // None of these may ever be served or accepted.
    for kind in ["respend_same_lender", "spend_at_wrong_lender", "forged_token"] {
        assert_eq!(
            outcome(&format!("{kind}/served")),
            0,
            "{kind} served: {:?}",
            r.attacks.outcomes
        );
    }
    assert!(outcome("respend_same_lender/refused:double_spend") > 0);
    assert!(outcome("spend_at_wrong_lender/refused:wrong_lender") > 0);
    assert!(outcome("forged_token/refused:bad_signature") > 0);
    assert_eq!(outcome("forged_attestation/accepted_as_late_gossip"), 0);
    assert!(outcome("forged_attestation/refused:bad_tag") > 0);
}

/// Pooled accuracy and chance of one attacker over several runs.
fn pooled(runs: &[RunResult], who: &str) -> (f64, f64, f64) {
    let (mut n, mut right, mut chance) = (0.0, 0.0, 0.0);
    for r in runs {
        if let Some(l) = r.linkage.get(who) {
            n += l.guesses as f64;
            right += l.correct as f64;
            chance += l.chance_sum;
        }
    }
    (right / n, chance / n, n)
}

#[test]
fn admin_is_at_chance_and_bucketing_beats_exact_headroom() {
    let s = scenario("test-crowded");
    let all = runs(&s, 5..9);
    assert!(all.iter().all(|r| r.violations.is_empty()));
    let (acc, chance, n) = pooled(&all, "admin");
    assert!(n > 100.0, "too few borrows to judge: {n}");
    // Within 3 standard errors of chance.
    let se = (chance * (1.0 - chance) / n).sqrt();
    assert!(
        (acc - chance).abs() < 3.0 * se + 0.01,
        "admin {acc} vs chance {chance} (n {n})"
    );
    let (bucketed, lchance, _) = pooled(&all, "lender");
    let (exact, _, _) = pooled(&all, "lender-exact");
    assert!(
        bucketed < exact,
        "bucketed {bucketed} should be below exact {exact}"
    );
    assert!(
        bucketed > lchance,
        "the lender does learn something from buckets: {bucketed} vs {lchance}"
    );
}

#[test]
fn clocks_beyond_the_window_cut_members_off() {
    let mut s = scenario("test-skew");
    // Every clock 7 minutes apart from the next: each member sees all attestations outside its ±5 min window.
    s.faults.clock_skews = (0..s.members)
        .map(|member| lendmesh_sim::scenario::ClockSkew {
            member,
            skew_ms: member as i64 * 420_000,
        })
        .collect();
    let r = Report::build(&s, &runs(&s, 7..8));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.failures.contains_key("no_lender_available"), "{:?}", r.failures);
    assert!(
        (r.mean("served") - r.mean("no_sharing")).abs() < 1e-9,
        "nobody could borrow"
    );
    assert!(r.attestation_rejections.values().sum::<u64>() > 0);
}

/// Issue 9 item 7: several epochs on the protocol's machines, with an immediate rotation.
#[test]
fn epochs_switch_without_failed_borrows_and_a_rotation_drops_the_old_tokens() {
    let s = scenario("test-epochs");
    let quota = s.epochs.as_ref().map(|e| u64::from(e.quota_per_epoch)).unwrap();
    let all = runs(&s, 21..24);
    let r = Report::build(&s, &all);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(all[0], run_seed(&s, 21, &mut |_| {}), "same seed, same run");
    for run in &all {
        let seed = run.seed;
        let e = run
            .epochs
            .as_ref()
            .expect("a scenario with [epochs] reports them");
        assert!(
            e.adoption_rejections.is_empty(),
            "seed {seed}: {:?}",
            e.adoption_rejections
        );
        // At least three regular switches, and the rotation.
        let regular: Vec<_> = e.switches.iter().filter(|x| !x.rotation).collect();
        let rotation: Vec<_> = e.switches.iter().filter(|x| x.rotation).collect();
        assert!(
            regular.len() >= 3,
            "seed {seed}: {} regular switches",
            regular.len()
        );
        assert_eq!(rotation.len(), 1, "seed {seed}: one rotation");
        // No borrow failed because of a switch: no lender refused a token's epoch, and no borrower lacked a
        // spendable token while it had quota left (see `EpochRun::epoch_failures`), around any regular switch or
        // anywhere else. Only the rotation (no grace: every wallet empties at once) may cost the borrows made
        // before the refill lands, a fraction of a second.
        for x in &regular {
            assert_eq!(
                x.before.epoch_failures + x.after.epoch_failures,
                0,
                "seed {seed}: switch to epoch {}",
                x.epoch
            );
        }
        assert!(
            regular
                .iter()
                .any(|x| x.before.borrows > 0 && x.after.borrows > 0),
            "seed {seed}: no switch with borrowing on both sides"
        );
        let at_rotation = rotation[0].after.epoch_failures;
        assert_eq!(
            e.epoch_failures, at_rotation,
            "seed {seed}: epoch failures away from the rotation"
        );
        assert!(
            at_rotation <= 2,
            "seed {seed}: {at_rotation} borrows lost to the rotation"
        );
        assert!(
            !run.failures.contains_key("quota_exhausted"),
            "seed {seed}: {:?}",
            run.failures
        );
        // Each epoch brought fresh quota: every member that borrowed in an epoch got tokens of it, and nobody got
        // more than its quota per epoch in any epoch.
        let live: Vec<_> = e.rows.iter().filter(|x| !x.cancelled).collect();
        assert!(live.len() >= 5, "seed {seed}: {} epochs", live.len());
        for x in &live {
            assert_eq!(x.borrowing_not_refilled, 0, "seed {seed}: epoch {}", x.epoch);
            assert!(x.max_issued_per_member <= quota, "seed {seed}: epoch {}", x.epoch);
            if x.members_borrowing > 0 {
                assert!(
                    x.members_refilled >= x.members_borrowing,
                    "seed {seed}: epoch {}",
                    x.epoch
                );
            }
        }
        // Pruning: members hold at most three epochs, lenders' spent sets at most three, and every epoch over before
        // the end was retired by every member (its spent-set size recorded, then pruned: a spent-set entry of a
        // retired epoch left behind is a violation).
        assert!(
            e.max_epochs_held <= 3,
            "seed {seed}: {} epochs held",
            e.max_epochs_held
        );
        assert!(
            e.max_spent_epochs <= 3,
            "seed {seed}: {} spent sets",
            e.max_spent_epochs
        );
        let end_min = s.duration_hours * 60.0;
        for x in e.rows.iter().filter(|x| x.accepted_until_min + 1.0 < end_min) {
            assert_eq!(
                x.retired_by, s.members as u64,
                "seed {seed}: epoch {} not retired everywhere",
                x.epoch
            );
        }
        let pruned: u64 = e.rows.iter().map(|x| x.spent_at_retirement).sum();
        assert!(pruned > 0, "seed {seed}: no spent-set entries were ever pruned");
        // The rotation cut its epoch short without grace and cancelled the announced next one.
        assert!(
            e.rows
                .iter()
                .any(|x| x.ended_by_rotation && x.accepted_until_min == x.end_min)
        );
        assert!(
            e.rows.iter().any(|x| x.cancelled && x.tokens_issued > 0),
            "seed {seed}: nothing to cancel"
        );
    }
    // After the rotation, tokens of the rotated-out and of the cancelled epoch are refused by every lender.
    let attempts = |k: &str| r.attacks.attempts.get(k).copied().unwrap_or(0);
    let outcome = |k: &str| r.attacks.outcomes.get(k).copied().unwrap_or(0);
    for kind in ["rotated_out_token", "cancelled_epoch_token"] {
        assert!(attempts(kind) > 0, "no {kind} presented");
        assert_eq!(outcome(&format!("{kind}/served")), 0, "{:?}", r.attacks.outcomes);
        // No partition here: the rotation reached every lender before the tokens did.
        assert_eq!(
            outcome(&format!("{kind}/served_before_the_rotation_reached_it")),
            0,
            "{:?}",
            r.attacks.outcomes
        );
        let refused_for_epoch = outcome(&format!("{kind}/refused:unknown_epoch"))
            + outcome(&format!("{kind}/refused:epoch_closed"));
        assert!(refused_for_epoch > 0, "{:?}", r.attacks.outcomes);
    }
    // Served demand across switches: on either side of every switch, within a request or two of the oracle pool
    // (what is not served there is capacity the whole group lacked, not the switch).
    let e = r.epochs.as_ref().unwrap();
    for x in &e.switches {
        for (side, w) in [("before", &x.before), ("after", &x.after)] {
            let slack = (w.demand / 50).max(2);
            assert!(
                w.served + slack >= w.oracle,
                "{side} the switch to {}: {w:?}",
                x.epoch
            );
        }
    }
}

/// Mixed upstreams (issue 18): lenders of different APIs and models, borrowers routing only among capable lenders.
#[test]
fn mixed_upstreams_route_only_to_capable_lenders_and_refuse_what_nobody_serves_at_once() {
    let mut s = scenario("mixed");
    s.duration_hours = 1.0;
    let all = runs(&s, 1..3);
    let r = Report::build(&s, &all);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    for run in &all {
        let seed = run.seed;
        let m = run
            .mixed
            .as_ref()
            .expect("a scenario with profiles reports mixed upstreams");
        // Capabilities are attested truthfully and routed on by `protocol::capability`: no attempt ever reaches a
        // lender that cannot serve it.
        assert_eq!(m.misrouted, 0, "seed {seed}");
        assert!(!run.failures.contains_key("lender_not_serving"), "seed {seed}");
        // The model nobody shares: refused at once (no attempt, no token), never served.
        let unserved: Vec<_> = m.kinds.iter().filter(|(_, k)| !k.servable).collect();
        assert_eq!(unserved.len(), 1, "seed {seed}: {:?}", m.kinds.keys());
        let (name, k) = unserved[0];
        assert!(name.contains("gemini-2.5-pro"), "{name}");
        assert!(k.demand > 0, "seed {seed}: no request for {name}");
        assert_eq!(k.served_own + k.served_borrowed, 0, "seed {seed}");
        assert_eq!(
            (k.attempts, k.tokens_taken),
            (0, 0),
            "seed {seed}: {name} cost a token"
        );
        // Only a request made before the first attestation arrived (no lender known yet) fails otherwise.
        assert_eq!(k.nobody_serves + k.failed, k.demand, "seed {seed}");
        assert!(k.nobody_serves * 10 >= k.demand * 9, "seed {seed}: {k:?}");
        assert_eq!(run.failures.get("no_capable_lender"), Some(&m.nobody_serves));
        assert_eq!(
            m.nobody_serves, k.nobody_serves,
            "seed {seed}: a servable kind was refused"
        );
        // Every lender whose family had demand from others lent some of it.
        for d in &m.drain {
            if d.wanted > 0 {
                assert!(d.lent > 0 && d.drain() > 0.0, "seed {seed}: {d:?}");
            }
        }
        for family in ["openai", "anthropic", "generic"] {
            assert!(
                m.drain.iter().any(|d| d.family == family && d.lent > 0),
                "seed {seed}: no {family} lender lent"
            );
        }
    }
    let mixed = r.mixed.as_ref().unwrap();
    assert!(mixed.mean("served_servable") > 0.97, "{:?}", mixed.summary);
    assert!(r.mean("served") > 0.95, "{:?}", r.metrics);
    assert!(r.mean("served") > r.mean("no_sharing") + 0.2, "{:?}", r.metrics);
    assert_eq!(mixed.families.len(), 3);
}

/// Issue 12: one spend per token across the group. In `test-claims` a multi-spender presents each token at four
/// lenders at once (and a double spender re-binds the tokens it spent) while members go down and come back: with
/// strict claims no token is ever served by two lenders; with claims off the same group serves the multi-spender's
/// tokens at several lenders, so the test can fail.
#[test]
fn strict_claims_never_serve_a_token_twice_and_claims_off_let_a_multi_spender_through() {
    let mut s = scenario("test-claims");
    assert_eq!(s.claims.as_ref().map(|c| c.mode), Some(ClaimsMode::Strict));
    // Half of it, for CI (`lendmesh-sim run sim/scenarios/test-claims.toml --seeds 100` runs it whole).
    s.duration_hours = 0.5;
    let strict = runs(&s, 1..4);
    let r = Report::build(&s, &strict);
    // A token served twice with strict claims is a violation, named with its seed.
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    for run in &strict {
        let seed = run.seed;
        let c = run
            .claims
            .as_ref()
            .expect("a scenario with [claims] reports them");
        assert_eq!(c.tokens_served_twice, 0, "seed {seed}");
        assert!(c.max_serves <= 1, "seed {seed}");
        assert!(
            c.multi_tokens > 20,
            "seed {seed}: {} tokens presented",
            c.multi_tokens
        );
        let served_twice: u64 = c
            .multi_served_at
            .iter()
            .filter(|(k, _)| k.as_str() > "1")
            .map(|(_, v)| v)
            .sum();
        assert_eq!(served_twice, 0, "seed {seed}: {:?}", c.multi_served_at);
        assert!(
            c.multi_served_at.get("1").is_some_and(|&n| n > 0),
            "seed {seed}: never served once"
        );
        // The replicas turned the copies away, and honest borrows went on (a majority answered almost always).
        assert!(
            c.adversary.spent_elsewhere + c.adversary.split_vote > 0,
            "seed {seed}"
        );
        assert!(
            c.honest.claims > 0 && c.honest.serve * 10 >= c.honest.claims * 9,
            "seed {seed}: {:?}",
            c.honest
        );
    }
    let outcome = |r: &Report, k: &str| r.attacks.outcomes.get(k).copied().unwrap_or(0);
    assert!(outcome(&r, "multi_spend/served") > 0);
    assert!(outcome(&r, "multi_spend/refused:spent_elsewhere") > 0);
    assert!(outcome(&r, "rebound_other_lender/refused:spent_elsewhere") > 0);
    let claims = r.claims.as_ref().unwrap();
    assert_eq!(claims.tokens_served_twice, 0);
    assert!(claims.seeds_with_double_serves.is_empty());
    // The same group and seeds with per-lender spent sets only.
    let mut off = s.clone();
    off.claims = Some(Claims::with_mode(ClaimsMode::Off));
    let off_runs = runs(&off, 1..3);
    let r = Report::build(&off, &off_runs);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    for run in &off_runs {
        let c = run.claims.as_ref().unwrap();
        let at_several: u64 = c
            .multi_served_at
            .iter()
            .filter(|(k, _)| k.as_str() > "1")
            .map(|(_, v)| v)
            .sum();
        assert!(at_several > 0, "seed {}: {:?}", run.seed, c.multi_served_at);
        assert!(
            c.tokens_served_twice >= at_several && c.max_serves >= 3,
            "seed {}: {c:?}",
            run.seed
        );
        assert_eq!(
            c.honest.claims + c.adversary.claims,
            0,
            "no claims with claims off"
        );
    }
    assert!(outcome(&r, "rebound_other_lender/served") > 0);
}

/// Issue 12: a replica learns a token hash and which lender claimed it. Naming the borrower of each claim from the
/// claim itself, it is at chance; with the headroom buckets it gets as a member it does as well as a lender.
#[test]
fn a_replica_naming_the_borrower_of_each_claim_is_at_chance() {
    let mut s = scenario("office-claims");
    s.duration_hours = 1.0;
    let all = runs(&s, 1..3);
    assert!(all.iter().all(|r| r.violations.is_empty()));
    let (acc, chance, n) = pooled(&all, "replica");
    assert!(n > 300.0, "too few claims to judge: {n}");
    let se = (chance * (1.0 - chance) / n).sqrt();
    assert!(
        (acc - chance).abs() < 3.0 * se + 0.01,
        "replica {acc} vs chance {chance} (n {n})"
    );
    let (headroom, _, _) = pooled(&all, "replica-headroom");
    let (lender, _, _) = pooled(&all, "lender");
    assert!(
        headroom > chance + 0.1,
        "the buckets leak to a replica as to a lender: {headroom}"
    );
    assert!(
        (headroom - lender).abs() < 0.15,
        "replica-headroom {headroom} vs lender {lender}"
    );
}

/// Issue 19: the node's default per-member limits, run over honest traffic at every receiving member, throttle
/// nothing — while every surface is exercised (the community scenario's 100 members are in the README).
#[test]
fn honest_traffic_never_reaches_the_nodes_default_limits() {
    for (name, seeds) in [("test-skew", 7..9), ("test-claims", 7..8)] {
        let s = scenario(name);
        let r = Report::build(&s, &runs(&s, seeds));
        assert!(r.limits.throttled.is_empty(), "{name}: {:?}", r.limits);
        let surfaces: &[&str] = if name == "test-claims" {
            &["issue", "gossip", "relay", "borrow", "claim"]
        } else {
            &["issue", "gossip", "relay", "borrow"]
        };
        for k in surfaces {
            assert!(
                r.limits.admitted.get(*k).copied().unwrap_or(0) > 0,
                "{name}: no {k} traffic: {:?}",
                r.limits
            );
        }
    }
}

/// Issue 13: the exposure settings are followed — cover borrows happen at about their share of the requests a
/// member could serve and threshold borrows below the reserve, a borrow by choice that fails is served by the member
/// itself (served demand holds), and on the schedule every member draws the whole quota of every epoch whatever it
/// spends.
#[test]
fn exposure_settings_are_followed() {
    use lendmesh_protocol::exposure::Exposure;
    use lendmesh_protocol::refill::Issuance;
    let base = scenario("test-skew");
    assert_eq!(base.exposure, Exposure::EXPOSED, "absent: no lever");
    let mut cover = base.clone();
    cover.exposure.cover_share = 0.3;
    let mut early = base.clone();
    early.exposure.reserve = 0.5;
    let (base_runs, cover_runs, early_runs) = (runs(&base, 7..8), runs(&cover, 7..8), runs(&early, 7..8));
    let b = Report::build(&base, &base_runs);
    let r = &cover_runs[0];
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let own_and_cover = r.served_own + r.cover_borrows;
    assert!(
        r.cover_borrows as f64 > 0.2 * own_and_cover as f64
            && (r.cover_borrows as f64) < 0.4 * own_and_cover as f64,
        "{} cover borrows of {} requests members could serve",
        r.cover_borrows,
        own_and_cover
    );
    assert!(early_runs[0].early_borrows > 0, "threshold borrows happen");
    assert_eq!(early_runs[0].cover_borrows, 0);
    for (name, s, rs) in [("cover", &cover, &cover_runs), ("threshold", &early, &early_runs)] {
        let served = Report::build(s, rs).mean("served");
        assert!(
            served >= b.mean("served") - 0.01,
            "{name} borrows cost served demand: {served} vs {}",
            b.mean("served")
        );
    }
    assert_eq!(base_runs[0].cover_borrows + base_runs[0].early_borrows, 0);

    // Constant-rate issuance: every member draws the whole quota of every epoch that ended in the run; on demand,
    // members that borrow little draw less.
    let demand = scenario("test-epochs");
    let mut schedule = demand.clone();
    schedule.exposure.issuance = Issuance::Schedule;
    let quota = u64::from(demand.epochs.as_ref().unwrap().quota_per_epoch);
    let full = demand.members as u64 * quota;
    let issued = |s: &Scenario| -> Vec<(u32, u64)> {
        let r = &runs(s, 21..22)[0];
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        let e = r.epochs.as_ref().unwrap();
        let end = s.duration_hours * 60.0;
        e.rows
            .iter()
            .filter(|row| !row.cancelled && row.end_min < end)
            .map(|row| (row.epoch, row.tokens_issued))
            .collect()
    };
    let (on_demand, scheduled) = (issued(&demand), issued(&schedule));
    assert!(scheduled.len() >= 3, "{scheduled:?}");
    assert!(
        scheduled.iter().all(|&(_, n)| n == full),
        "every member's whole quota ({full} in all) in every epoch: {scheduled:?}"
    );
    assert!(
        on_demand.iter().any(|&(_, n)| n < full),
        "on demand, issuance follows spending: {on_demand:?}"
    );
    let mut bad = demand.clone();
    bad.epochs = None;
    bad.exposure.issuance = Issuance::Schedule;
    assert!(bad.validate().is_err(), "the schedule needs a quota");
}
