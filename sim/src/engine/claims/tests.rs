use std::cmp::Reverse;

use lendmesh_protocol::claims;
use lendmesh_protocol::token::WalletToken;

use super::super::lend::Lent;
use super::super::tests::issue_one;
use super::*;
use crate::scenario::Crash;

/// `test-claims` without churn, loss, partitions or adversaries: only what a test sets up happens.
fn quiet(mode: ClaimsMode) -> Scenario {
    let path = format!("{}/scenarios/test-claims.toml", env!("CARGO_MANIFEST_DIR"));
    let mut s = Scenario::from_file(std::path::Path::new(&path)).unwrap();
    s.faults = Default::default();
    s.network.loss = 0.0;
    s.adversaries = Default::default();
    s.claims = Some(Claims::with_mode(mode));
    s
}

fn drain(sim: &mut Sim<'_>) {
    while let Some(Reverse(item)) = sim.queue.pop() {
        sim.handle(item.t, item.ev);
    }
}

/// Presents `token` at each of `lenders` at `t` as an adversary would (re-bound to each, its own request id).
fn present(sim: &mut Sim<'_>, token: &WalletToken, lenders: &[usize], t: Ms) {
    for (k, &l) in lenders.iter().enumerate() {
        let spend = token.spend(sim.members[l].id, [k as u8; 32], sim.local(0, t));
        let need = sim.probe_need(l);
        match sim.lend(t, l, [k as u8 + 1; 16], &spend, None, &need) {
            Lent::Later(id) => sim.attach(t, id, Asker::Adversary { kind: "multi_spend" }),
            Lent::Now(answer) => panic!("lender {l} answered {answer:?} before claiming"),
        }
    }
}

fn outcome(sim: &Sim<'_>, label: &str) -> u64 {
    sim.out
        .attacks
        .outcomes
        .get(&format!("multi_spend/{label}"))
        .copied()
        .unwrap_or(0)
}

/// The indices of `token`'s replicas in `sim`.
fn replicas_of(sim: &Sim<'_>, token: &WalletToken) -> Vec<usize> {
    let roster: Vec<PeerId> = sim.members.iter().map(|m| m.id).collect();
    claims::replica_set(&token.token.hash(), &roster, claims::DEFAULT_REPLICAS)
        .iter()
        .map(|p| sim.index[p])
        .collect()
}

#[test]
fn one_token_at_four_lenders_at_once_is_served_at_most_once_and_the_replicas_remember_it_through_a_crash() {
    let s = quiet(ClaimsMode::Strict);
    let mut sim = Sim::new(&s, 3).unwrap();
    let token = issue_one(&mut sim, 0);
    let hash = token.token.hash();
    present(&mut sim, &token, &[1, 2, 3, 4], 1_000);
    drain(&mut sim);
    // At most one lender gets a majority (none, if the four split the vote: then the token is burnt).
    let served = outcome(&sim, "served");
    let refused = outcome(&sim, "refused:spent_elsewhere") + outcome(&sim, "refused:split_vote");
    assert!(
        served <= 1 && served + refused == 4,
        "{:?}",
        sim.out.attacks.outcomes
    );
    assert!(sim.out.violations.is_empty(), "{:?}", sim.out.violations);
    // Every replica stored a claim of the token (one of the four: whichever reached it first).
    let replicas = replicas_of(&sim, &token);
    assert_eq!(replicas.len(), 5);
    for &r in &replicas {
        assert!(sim.members[r].claims.contains_key(&(0, hash)), "replica {r}");
    }
    // A crash loses what a replica holds in memory, not its store: the token re-bound to a fifth lender is denied.
    for &r in &replicas {
        sim.on_crash(r);
    }
    let fifth = (5..sim.n).find(|l| !replicas.contains(l)).unwrap();
    present(&mut sim, &token, &[fifth], 60_000);
    drain(&mut sim);
    assert_eq!(outcome(&sim, "served"), served);
    assert_eq!(
        outcome(&sim, "refused:spent_elsewhere") + outcome(&sim, "refused:split_vote"),
        refused + 1
    );
    assert_eq!(sim.cl.serves.get(&hash).copied().unwrap_or(0), served as u32);
}

#[test]
fn without_a_majority_strict_refuses_and_releases_and_lenient_serves() {
    // The token's replicas, found in a first run (the same seed and steps issue the same token).
    let s = quiet(ClaimsMode::Strict);
    let mut probe = Sim::new(&s, 5).unwrap();
    let token = issue_one(&mut probe, 0);
    let replicas = replicas_of(&probe, &token);
    // Three of its five replicas are down; the lender and the borrower are neither.
    let down = &replicas[..3];
    let lender = (1..s.members).find(|l| !replicas.contains(l)).unwrap();
    let with_down = |mode| {
        let mut s = quiet(mode);
        s.faults.crashes = down
            .iter()
            .map(|&member| Crash {
                member,
                at_min: 0.0,
                restart_min: 30.0,
            })
            .collect();
        s
    };
    let strict = with_down(ClaimsMode::Strict);
    let mut sim = Sim::new(&strict, 5).unwrap();
    let again = issue_one(&mut sim, 0);
    assert_eq!(again.token.hash(), token.token.hash());
    let hash = token.token.hash();
    present(&mut sim, &again, &[lender], 1_000);
    drain(&mut sim);
    assert_eq!(
        outcome(&sim, "refused:no_quorum"),
        1,
        "{:?}",
        sim.out.attacks.outcomes
    );
    // Nothing spent: not at the lender, not at the replicas that granted it (released), and its unit is back.
    assert!(!sim.members[lender].spent.contains(0, &hash));
    for &r in &replicas[3..] {
        assert!(
            !sim.members[r].claims.contains_key(&(0, hash)),
            "replica {r} kept it"
        );
    }
    assert_eq!(sim.members[lender].upstreams[0].used, 0);
    let c = sim.finish_claims().unwrap();
    assert_eq!(
        (c.adversary.unreachable_refused, c.releases, c.releases_lost),
        (1, 2, 0)
    );
    // Once the replicas are back, the same token is served.
    present(&mut sim, &again, &[lender], 31 * 60_000);
    drain(&mut sim);
    assert_eq!(outcome(&sim, "served"), 1, "{:?}", sim.out.attacks.outcomes);

    let lenient = with_down(ClaimsMode::Lenient);
    let mut sim = Sim::new(&lenient, 5).unwrap();
    let again = issue_one(&mut sim, 0);
    present(&mut sim, &again, &[lender], 1_000);
    drain(&mut sim);
    assert_eq!(outcome(&sim, "served"), 1, "{:?}", sim.out.attacks.outcomes);
    let c = sim.finish_claims().unwrap();
    assert_eq!(c.adversary.unreachable_served, 1);
}

#[test]
fn a_retry_of_a_request_being_claimed_joins_it() {
    let s = quiet(ClaimsMode::Strict);
    let mut sim = Sim::new(&s, 7).unwrap();
    let token = issue_one(&mut sim, 0);
    let spend = token.spend(sim.members[1].id, [9; 32], sim.local(0, 1_000));
    let need = sim.probe_need(1);
    let Lent::Later(id) = sim.lend(1_000, 1, [4; 16], &spend, None, &need) else {
        panic!("answered before claiming");
    };
    sim.attach(1_000, id, Asker::Adversary { kind: "multi_spend" });
    // The same request id again while the claim is out: joined, not claimed twice, and answered once it is in.
    assert_eq!(sim.lend(1_010, 1, [4; 16], &spend, None, &need), Lent::Later(id));
    sim.attach(1_010, id, Asker::Adversary { kind: "multi_spend" });
    drain(&mut sim);
    assert_eq!(outcome(&sim, "served"), 1);
    assert_eq!(outcome(&sim, "answered_idempotently_no_second_serve"), 1);
    assert_eq!(sim.out.lender_load[1], 1);
    assert_eq!(sim.members[1].upstreams[0].used, 1);
}
