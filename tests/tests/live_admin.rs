//! Issue-9 acceptance: `lendmesh group invite / remove / show` on a running admin node take effect without a
//! restart; a removed member is refused within 10 s; `remove --rotate` retires every outstanding token at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use lendmesh_protocol::group::Invite;
use lendmesh_protocol::wire::{BorrowRefusal, InnerBorrowResponse};
use lendmesh_tests::rogue::Rogue;
use lendmesh_tests::spend::{http, peer_of, rogue_tokens, spend_direct};
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn roster_status(n: &RunningNode, peer: &str) -> String {
    n.get("/v1/peers").1["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == peer)
        .map(|p| p["roster_status"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn invite_remove_and_rotate_on_a_running_admin() {
    let g = TestGroup::new("live", 2, 100);
    // A rogue member the test drives, holding real tokens of epoch 1.
    let rogue_key = libp2p::identity::Keypair::generate_ed25519();
    let inv = g.admin.path().join("rogue.txt");
    cli_ok(
        g.admin.path(),
        &[
            "group",
            "invite",
            &rogue_key.public().to_peer_id().to_string(),
            "--out",
            inv.to_str().unwrap(),
        ],
    );
    let rogue_invite = Invite::from_file_text(&std::fs::read_to_string(&inv).unwrap()).unwrap();

    let fast = ["--attestation-period", "1s"];
    let mut admin = RunningNode::start(g.admin.path(), &fast);
    let boot = admin.p2p_addr.clone();
    let listen_addr = boot.split("/p2p/").next().unwrap().to_string();
    let mut m1 = RunningNode::start(g.homes[0].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    let mut m2 = RunningNode::start(g.homes[1].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    for n in [&mut admin, &mut m1, &mut m2] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }

    // `group show` works on the running admin and on a running member.
    let shown = cli_ok(g.admin.path(), &["group", "show"]);
    assert!(
        shown.contains("(this node)") && shown.contains("current"),
        "{shown}"
    );
    let shown = cli_ok(g.homes[0].path(), &["group", "show"]);
    assert!(shown.contains("roster:"), "{shown}");
    // A member cannot administer the group.
    let (ok, _, err) = cli(g.homes[0].path(), &["group", "remove", &g.ids[1]]);
    assert!(!ok && err.contains("only the group admin"), "{err}");

    // Invite a new node while the admin runs: it joins without anyone restarting.
    let new_home = temp_home();
    let new_id = init(new_home.path());
    let new_invite = new_home.path().join("invite.txt");
    let out = cli_ok(
        g.admin.path(),
        &[
            "group",
            "invite",
            &new_id,
            "--quota",
            "30",
            "--bootstrap",
            &listen_addr,
            "--out",
            new_invite.to_str().unwrap(),
        ],
    );
    assert!(out.contains("gossiped"), "{out}");
    cli_ok(new_home.path(), &["join", new_invite.to_str().unwrap()]);
    let mut newcomer = RunningNode::start(new_home.path(), &fast);
    newcomer.wait_until("connected to all three", WAIT, |n| connected_peers(n) >= 3);
    newcomer.wait_until("tokens", WAIT, |n| wallet_balance(n) >= 1);
    m1.wait_until("the newcomer on m1's roster", WAIT, |n| {
        roster_status(n, &new_id) == "member"
    });

    // Remove m2 while the admin runs: refused by everyone within 10 s.
    let since = Instant::now();
    let out = cli_ok(g.admin.path(), &["group", "remove", &g.ids[1]]);
    assert!(out.contains("removed"), "{out}");
    m2.wait_until("m2 cut off", Duration::from_secs(10), |n| connected_peers(n) == 0);
    for n in [&mut admin, &mut m1, &mut newcomer] {
        n.wait_until("m2 removed on the roster", Duration::from_secs(10), |n| {
            roster_status(n, &g.ids[1]) == "removed"
        });
    }
    eprintln!("removed member refused by all within {:?}", since.elapsed());
    assert!(since.elapsed() < Duration::from_secs(10));

    // The rogue member's epoch-1 tokens work now…
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rogue = Rogue::new(rogue_key, *rogue_invite.psk.as_bytes());
    let tokens = rt.block_on(async {
        let t = rogue_tokens(&mut rogue, &admin, &rogue_invite, 2).await;
        rogue.connect(m1.p2p_addr.parse().unwrap()).await;
        t
    });
    let spend_at =
        |m1: &RunningNode, rogue: &mut Rogue, token: &lendmesh_protocol::token::WalletToken, id: u8| {
            let (m1_id, _) = peer_of(m1);
            rt.block_on(spend_direct(
                rogue,
                m1,
                token,
                m1_id,
                [id; 16],
                &http("GET", "/rotate", b""),
            ))
        };
    let before = spend_at(&m1, &mut rogue, &tokens[0], 1);
    assert!(matches!(before, InnerBorrowResponse::Served), "{before:?}");

    // …then the newcomer is removed with --rotate: epoch 2 starts at once and every epoch-1 token is refused.
    let out = cli_ok(g.admin.path(), &["group", "remove", &new_id, "--rotate"]);
    assert!(out.contains("rotated: epoch 2"), "{out}");
    newcomer.wait_until("newcomer cut off", Duration::from_secs(10), |n| {
        connected_peers(n) == 0
    });
    m1.wait_until("epoch 2 on m1", Duration::from_secs(10), |n| {
        current_epoch(n) == 2
    });
    let after = spend_at(&m1, &mut rogue, &tokens[1], 2);
    assert!(
        matches!(
            &after,
            InnerBorrowResponse::Refused { reason: BorrowRefusal::TokenRejected(l), .. } if l == "epoch_closed" || l == "unknown_epoch"
        ),
        "{after:?}"
    );
    // The remaining members refill under the new epoch's key.
    m1.wait_until("a refill under epoch 2", WAIT, |n| {
        n.plain_log().contains("wallet refilled epoch=2")
    });
    for n in [newcomer, m2, m1, admin] {
        assert!(n.stop());
    }
}
