//! Replica sets, the replica's checks and the lender's tally.

use proptest::prelude::*;

use super::*;

fn pid(seed: u8) -> PeerId {
    PeerId::from_public_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key())
}

fn roster(n: u8) -> Vec<PeerId> {
    (1..=n).map(pid).collect()
}

fn token(seed: u8) -> TokenHash {
    TokenHash([seed; 32])
}

#[test]
fn replica_sets_are_odd_capped_stable_and_independent_of_roster_order() {
    assert_eq!(replica_count(5, 20), 5);
    assert_eq!(replica_count(5, 4), 3);
    assert_eq!(replica_count(4, 20), 3);
    assert_eq!(replica_count(5, 1), 1);
    assert_eq!(replica_count(0, 3), 1);
    let members = roster(20);
    let set = replica_set(&token(1), &members, 5);
    assert_eq!(set.len(), 5);
    let mut reversed = members.clone();
    reversed.reverse();
    assert_eq!(
        replica_set(&token(1), &reversed, 5),
        set,
        "the order of the roster does not matter"
    );
    assert_ne!(
        replica_set(&token(2), &members, 5),
        set,
        "another token, (almost surely) another set"
    );
    assert_eq!(roster_digest(&members), roster_digest(&reversed));
    assert_ne!(roster_digest(&members), roster_digest(&roster(19)));
}

#[test]
fn a_live_roster_change_moves_replica_sets_the_frozen_roster_does_not() {
    // Why claims use the roster frozen in the epoch announcement: one member more moves some tokens' replica sets,
    // and an old and a new set can then hold disjoint majorities.
    let old = roster(20);
    let mut new = old.clone();
    new.push(pid(21));
    let moved = (0..=255u8)
        .filter(|s| replica_set(&token(*s), &old, 5) != replica_set(&token(*s), &new, 5))
        .count();
    // About r/(n+1) = 5/21 of the tokens.
    assert!((30..=95).contains(&moved), "{moved} of 256 replica sets moved");
}

#[test]
fn replicas_refuse_claims_not_meant_for_them() {
    let members = roster(9);
    let set = replica_set(&token(3), &members, 5);
    let (me, outsider) = (set[0], *members.iter().find(|p| !set.contains(p)).unwrap());
    let claim = Claim {
        token_hash: token(3),
        epoch: 1,
        lender: pid(1),
        request_id: [7; 16],
        roster: roster_digest(&members),
    };
    assert_eq!(check_claim(&claim, &pid(1), &me, &members, 5), Ok(()));
    assert_eq!(
        check_claim(&claim, &pid(2), &me, &members, 5),
        Err(ClaimRefusal::WrongLender)
    );
    assert_eq!(
        check_claim(&claim, &pid(1), &outsider, &members, 5),
        Err(ClaimRefusal::NotReplica)
    );
    let other = Claim {
        roster: roster_digest(&roster(10)),
        ..claim
    };
    assert_eq!(
        check_claim(&other, &pid(1), &me, &members, 5),
        Err(ClaimRefusal::WrongRoster)
    );
    // A claim's identity is its lender and request: the same request at another lender is another claim.
    let elsewhere = Claim {
        lender: pid(2),
        ..claim
    };
    assert_ne!(claim.id(), elsewhere.id());
    assert_eq!(claim.id(), Claim { epoch: 1, ..claim }.id());
}

fn tally(votes: &[Vote]) -> Tally {
    let replicas: Vec<PeerId> = (1..=votes.len() as u8).map(pid).collect();
    let mut t = Tally::new(replicas.clone());
    for (p, v) in replicas.iter().zip(votes) {
        t.record(*p, *v);
    }
    t
}

#[test]
fn verdicts() {
    use Vote::*;
    let r = Refused(ClaimRefusal::UnknownEpoch);
    assert_eq!(
        tally(&[Granted, Granted, Granted, Denied, Denied]).verdict(true),
        Verdict::Serve
    );
    assert_eq!(tally(&[Granted, Granted, Granted]).verdict(false), Verdict::Serve);
    assert_eq!(
        tally(&[Denied, Denied, Denied, Granted, Granted]).verdict(true),
        Verdict::SpentElsewhere
    );
    assert_eq!(
        tally(&[Granted, Granted, Denied, Denied, Unreachable]).verdict(true),
        Verdict::SplitVote
    );
    assert_eq!(
        tally(&[Granted, Granted, Unreachable, Unreachable, r]).verdict(true),
        Verdict::Unreachable
    );
    assert_eq!(
        tally(&[Granted, Granted, Unreachable, Unreachable, Unreachable]).verdict(true),
        Verdict::Unreachable
    );
    assert_eq!(
        tally(&[Granted, Denied, Unreachable, Unreachable, Unreachable]).verdict(true),
        Verdict::Unreachable
    );
    // Not yet decided while missing answers could decide it.
    let mut t = Tally::new(roster(5));
    t.record(pid(1), Granted);
    t.record(pid(2), Granted);
    assert_eq!(t.verdict(false), Verdict::Pending);
    t.record(pid(3), Denied);
    t.record(pid(4), Denied);
    assert_eq!(t.verdict(false), Verdict::Pending, "the fifth decides");
    t.record(pid(5), Granted);
    assert_eq!(t.verdict(false), Verdict::Serve);
    assert_eq!(t.granted(), [pid(1), pid(2), pid(5)]);
    // A second answer from a replica, or one from outside the set, changes nothing.
    t.record(pid(5), Denied);
    t.record(pid(9), Denied);
    assert_eq!(t.verdict(true), Verdict::Serve);
    assert_eq!(Tally::new(roster(1)).majority(), 1);
}

proptest! {
    /// Each replica grants one claim of a token at most: whatever the replicas answer and whatever is lost, two
    /// lenders never both serve.
    #[test]
    fn two_claims_never_both_serve(first in proptest::collection::vec(0u8..4, 1..=7), lost in proptest::collection::vec(any::<bool>(), 7)) {
        let n = if first.len() % 2 == 0 { first.len() - 1 } else { first.len() };
        let replicas: Vec<PeerId> = (1..=n as u8).map(pid).collect();
        let (mut a, mut b) = (Tally::new(replicas.clone()), Tally::new(replicas.clone()));
        for (i, p) in replicas.iter().enumerate() {
            // Which claim the replica holds: 0 = A's, 1 = B's, 2 = neither (down), 3 = refuses.
            let (va, vb) = match first[i] {
                0 => (Vote::Granted, Vote::Denied),
                1 => (Vote::Denied, Vote::Granted),
                2 => (Vote::Unreachable, Vote::Unreachable),
                _ => (Vote::Refused(ClaimRefusal::UnknownEpoch), Vote::Refused(ClaimRefusal::UnknownEpoch)),
            };
            let (va, vb) = if lost[i] { (Vote::Unreachable, vb) } else { (va, vb) };
            a.record(*p, va);
            b.record(*p, vb);
        }
        let (va, vb) = (a.verdict(true), b.verdict(true));
        prop_assert!(!(va == Verdict::Serve && vb == Verdict::Serve), "{va:?} {vb:?}");
        prop_assert_ne!(va, Verdict::Pending);
    }
}
