//! Issue-3 crash safety: kill -9 a member during a refill and an issuer mid-issuance; afterwards every token the
//! issuer charged is in the member's wallet exactly once, and no member ever exceeds its quota.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lendmesh_node::store::Store;
use lendmesh_protocol::PeerId;
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(90);

fn group_with_member(quota: u32) -> (tempfile::TempDir, tempfile::TempDir, String) {
    let mut g = TestGroup::new("crash", 1, quota);
    (g.admin, g.homes.remove(0), g.ids.remove(0))
}

fn balance(n: &RunningNode) -> u64 {
    n.get("/v1/node").1["wallet_balance"].as_u64().unwrap_or(0)
}

/// Polls quickly until the balance is positive; returns it.
fn first_tokens(n: &RunningNode) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let b = balance(n);
        if b > 0 {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "no tokens within {WAIT:?}:\n{}",
            n.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Checks the stores of stopped nodes: wallet == issuer's charge for the member, every token valid and unique.
/// With `quota_hit`, the last batch was refused for quota (never charged) and may stay pending for a retry.
fn check_stores(admin: &std::path::Path, member: &std::path::Path, member_id: &str, quota_hit: bool) -> u64 {
    let m = Store::open(member).unwrap();
    let tokens = m.wallet_tokens().unwrap();
    let pending = m.pending().unwrap();
    if quota_hit {
        assert!(pending.len() <= 1, "at most the refused batch is pending");
    } else {
        assert!(
            pending.is_empty(),
            "no batch left pending once the wallet is full"
        );
    }
    let group = m.group().unwrap().unwrap();
    let key = group.epochs.get(1).unwrap().key.clone();
    let mut hashes = HashSet::new();
    let mut spend_keys = HashSet::new();
    for t in &tokens {
        key.verify_ring(&t.token.input.to_bytes(), &t.token.signature)
            .expect("every stored token is valid");
        assert!(hashes.insert(t.token.hash()), "no token twice");
        assert!(spend_keys.insert(t.token.input.spend_key), "no spend key twice");
    }
    drop(m);
    let a = Store::open(admin).unwrap();
    let peer: PeerId = member_id.parse().unwrap();
    let used = a
        .quota_records(1)
        .unwrap()
        .iter()
        .find(|r| r.peer == peer)
        .map_or(0, |r| r.used);
    assert_eq!(
        tokens.len() as u64,
        used as u64,
        "every token the issuer charged is in the wallet, once"
    );
    used as u64
}

#[test]
fn kill9_member_during_refill_loses_and_duplicates_nothing() {
    let (admin_home, member_home, member_id) = group_with_member(1000);
    let admin = RunningNode::start(admin_home.path(), &[]);
    let boot = admin.p2p_addr.clone();
    let refill = [
        "--low-water",
        "120",
        "--batch",
        "2",
        "--issuance",
        "demand",
        "--bootstrap",
        boot.as_str(),
    ];
    // Three crashes at the first sign of tokens, each mid-refill (the wallet is still far below 120; on demand,
    // so a full wallet is the low-water mark rather than the whole quota).
    for round in 0..3 {
        let node = RunningNode::start(member_home.path(), &refill);
        let b = first_tokens(&node);
        node.kill9();
        eprintln!("round {round}: killed with {b} tokens visible");
    }
    let mut node = RunningNode::start(member_home.path(), &refill);
    node.wait_until("a full wallet after the crashes", WAIT, |n| balance(n) >= 120);
    assert!(node.stop());
    assert!(admin.stop());
    let used = check_stores(admin_home.path(), member_home.path(), &member_id, false);
    assert!(used >= 120);
}

#[test]
fn issuer_restart_never_lets_a_member_exceed_its_quota() {
    let (admin_home, member_home, member_id) = group_with_member(24);
    let admin = RunningNode::start(admin_home.path(), &[]);
    let listen = admin.p2p_addr.split("/p2p/").next().unwrap().to_string();
    let boot = admin.p2p_addr.clone();
    // The member wants far more than its quota.
    let mut member = RunningNode::start(
        member_home.path(),
        &["--low-water", "100", "--batch", "4", "--bootstrap", &boot],
    );
    first_tokens(&member);
    admin.kill9();
    let admin = RunningNode::start_on(admin_home.path(), &listen, &[]);
    member.wait_until("the quota to be used up", WAIT, |n| balance(n) >= 24);
    // The issuer says how many tokens are left in every answer: the member stops asking at zero (issue 9).
    member.wait_for_log("quota for epoch 1 is spent", WAIT);
    assert_eq!(balance(&member), 24, "never above the quota");
    assert!(member.stop());
    assert!(admin.stop());
    assert_eq!(
        check_stores(admin_home.path(), member_home.path(), &member_id, true),
        24
    );
}

#[test]
fn a_removed_member_gets_no_more_tokens_and_is_disconnected() {
    let (admin_home, member_home, member_id) = group_with_member(1000);
    let admin = RunningNode::start(admin_home.path(), &[]);
    let listen = admin.p2p_addr.split("/p2p/").next().unwrap().to_string();
    let boot = admin.p2p_addr.clone();
    // On demand, so the wallet stops at the low-water mark and `before` is not raced by a scheduled draw.
    let mut member = RunningNode::start(
        member_home.path(),
        &[
            "--low-water",
            "10",
            "--batch",
            "5",
            "--issuance",
            "demand",
            "--bootstrap",
            &boot,
        ],
    );
    member.wait_until("tokens", WAIT, |n| balance(n) >= 10);
    let before = balance(&member);
    assert!(admin.stop());
    cli_ok(admin_home.path(), &["group", "remove", &member_id]);
    // The member now wants more; the admin (restarted) refuses it at the connection.
    assert!(member.stop());
    let mut admin = RunningNode::start_on(admin_home.path(), &listen, &[]);
    let mut member = RunningNode::start(
        member_home.path(),
        &["--low-water", "50", "--batch", "5", "--bootstrap", &boot],
    );
    admin.wait_for_log("not an active member", WAIT);
    member.wait_until("a refused refill attempt", WAIT, |n| {
        n.log().contains("refill failed") || n.log().contains("refused")
    });
    assert_eq!(balance(&member), before, "no more tokens after removal");
    assert!(member.stop());
    assert!(admin.stop());
}
