//! Issue-3 acceptance: an admin and three members as separate `lendmesh` processes on 127.0.0.1, driven only
//! through the CLI: they connect, every member's wallet fills from the admin's issuer (its whole quota, on the
//! default schedule), and every node holds a fresh attestation from every other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Creates a group with `members` invited members; returns (admin home, member homes, member ids).
fn setup(members: usize) -> (tempfile::TempDir, Vec<tempfile::TempDir>, Vec<String>) {
    // The admin's own quota as small as the members' (100): on the schedule it is drawn at one batch a second.
    let g = TestGroup::with_args("testers", members, 100, &["--quota", "100"], &[]);
    (g.admin, g.homes, g.ids)
}

fn balance(n: &RunningNode) -> u64 {
    n.get("/v1/node").1["wallet_balance"].as_u64().unwrap_or(0)
}

fn fresh_attestations(n: &RunningNode) -> usize {
    let (_, peers) = n.get("/v1/peers");
    peers["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| {
                    p["attestation"]["age_ms"]
                        .as_u64()
                        .is_some_and(|age| age < 300_000)
                })
                .count()
        })
        .unwrap_or(0)
}

fn tokens_received(n: &RunningNode) -> u64 {
    n.get("/v1/node").1["tokens_received"].as_u64().unwrap_or(0)
}

fn connected(n: &RunningNode) -> u64 {
    n.get("/v1/node").1["connected_peers"].as_u64().unwrap_or(0)
}

#[test]
fn admin_and_three_members_connect_fill_wallets_and_attest() {
    let (admin_home, homes, _ids) = setup(3);
    let fast = ["--attestation-period", "2s", "--low-water", "5", "--batch", "8"];
    let mut admin = RunningNode::start(admin_home.path(), &fast);
    let boot = admin.p2p_addr.clone();
    let mut nodes: Vec<RunningNode> = homes
        .iter()
        .map(|h| {
            let mut args = fast.to_vec();
            args.extend(["--bootstrap", &boot]);
            RunningNode::start(h.path(), &args)
        })
        .collect();
    for n in nodes.iter_mut().chain(std::iter::once(&mut admin)) {
        n.wait_until("3 connected peers", WAIT, |n| connected(n) == 3);
        n.wait_until("a filled wallet", WAIT, |n| balance(n) >= 5);
        n.wait_until("fresh attestations from all 3 others", WAIT, |n| {
            fresh_attestations(n) == 3
        });
    }
    // Every wallet fills to its whole quota (constant-rate issuance, the default: 100 each), whatever is spent;
    // then nothing is in flight and every token the issuer signed is in a wallet.
    for n in nodes.iter_mut() {
        n.wait_until("the whole quota", WAIT, |n| tokens_received(n) == 100);
    }
    admin.wait_until("the admin's whole quota", WAIT, |n| tokens_received(n) == 100);
    // Every member's tokens came from the admin's issuer.
    let (_, admin_node) = admin.get("/v1/node");
    assert!(
        admin_node["roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "issuer")
    );
    let issued = admin_node["tokens_issued"].as_u64().unwrap();
    let received: u64 = nodes
        .iter()
        .chain(std::iter::once(&admin))
        .map(tokens_received)
        .sum();
    assert_eq!(issued, received, "every token the issuer signed reached a wallet");
    for n in nodes {
        assert!(n.stop(), "member stops cleanly on SIGTERM");
    }
    assert!(admin.stop(), "admin stops cleanly on SIGTERM");
}

#[test]
fn a_node_with_another_group_key_cannot_connect() {
    let (admin_home, _homes, _) = setup(0);
    let mut admin = RunningNode::start(admin_home.path(), &[]);
    // An outsider with its own group (so its own network key) dials the admin.
    let outsider = temp_home();
    init(outsider.path());
    cli_ok(
        outsider.path(),
        &["group", "create", "--name", "other", "--rsa-bits", "2048"],
    );
    let mut out = RunningNode::start(outsider.path(), &["--bootstrap", &admin.p2p_addr.clone()]);
    out.wait_for_log("check the group key", WAIT);
    admin.wait_for_log("check the group key", WAIT);
    assert_eq!(connected(&out), 0);
    assert_eq!(connected(&admin), 0);
    // The key itself never appears in a log.
    assert!(!out.log().contains("/key/swarm/psk"));
}
