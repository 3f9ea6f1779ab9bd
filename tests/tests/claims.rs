//! Issue 12: one spend per token across the group, with replicas down. Seven nodes and a rogue member share an
//! epoch whose roster was frozen with all of them (a rotation after the invites); each token's five replicas are
//! computed the way the nodes compute them (`protocol::claims::replica_set`), so the test knows whose death matters.
//!
//! - With 2 of a token's 5 replicas killed (kill -9), a lend of it still succeeds.
//! - With 3 killed, a `strict` lender refuses it cleanly (`no_quorum`) and the token stays unspent: a `lenient`
//!   lender then serves the same token and counts it for reconciliation.
//! - A replica killed between storing a claim and answering it grants that same claim again after its restart, and
//!   denies any other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::claims::{self, Claim};
use lendmesh_protocol::group::Invite;
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wire::{self, BorrowRefusal, ClaimRequest, ClaimResponse, InnerBorrowResponse};
use lendmesh_tests::rogue::Rogue;
use lendmesh_tests::spend::{http, peer_of, rogue_tokens, spend_direct};
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Sends `c` as a claim to the node at `addr`, as the rogue.
async fn ask_claim(rogue: &mut Rogue, addr: String, c: Claim) -> Result<ClaimResponse, String> {
    let bytes = wire::encode(&ClaimRequest::Claim(c)).unwrap();
    let peer = rogue.connect(addr.parse().unwrap()).await;
    rogue
        .raw_request("/lendmesh/claim/1", peer, bytes)
        .await
        .map(|raw| wire::decode::<ClaimResponse>(&raw).unwrap())
}

fn counter(n: &RunningNode, name: &str, outcome: &str) -> u64 {
    let prefix = format!("{name}{{outcome=\"{outcome}\"}} ");
    http_get_raw(&n.api, "/metrics", None)
        .1
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn claims_survive_two_dead_replicas_and_refuse_or_record_without_a_majority() {
    // Admin + 6 members + the rogue; a dummy is invited and removed with a rotation, so the new epoch's frozen
    // roster holds everyone.
    let g = TestGroup::new("claims", 6, 500);
    let rogue_key = libp2p::identity::Keypair::generate_ed25519();
    let rogue_id: PeerId = rogue_key.public().to_peer_id().to_string().parse().unwrap();
    let inv = g.admin.path().join("rogue.txt");
    let invite_rogue = |out: &std::path::Path| {
        cli_ok(
            g.admin.path(),
            &[
                "group",
                "invite",
                &rogue_id.to_string(),
                "--quota",
                "200",
                "--out",
                out.to_str().unwrap(),
            ],
        );
    };
    invite_rogue(&inv);
    let dummy = init(temp_home().path());
    cli_ok(g.admin.path(), &["group", "invite", &dummy, "--out", "/dev/null"]);
    cli_ok(g.admin.path(), &["group", "remove", &dummy, "--rotate"]);
    // The rogue's invite again, now carrying the rotated epoch.
    invite_rogue(&inv);
    let invite = Invite::from_file_text(&std::fs::read_to_string(&inv).unwrap()).unwrap();
    let epoch = invite.epoch.announcement.epoch;
    assert!(epoch >= 2, "the rotation made a new epoch");
    let frozen: Vec<PeerId> = invite
        .epoch
        .announcement
        .roster
        .roster
        .member_ids()
        .copied()
        .collect();
    assert!(
        frozen.contains(&rogue_id) && frozen.len() >= 8,
        "{} members frozen",
        frozen.len()
    );

    // Members 0 and 1 lend (0 strict, 1 lenient); the others only answer claims (and relay).
    let admin_port = free_port();
    let boot = format!("/ip4/127.0.0.1/tcp/{admin_port}/p2p/{}", g.admin_id);
    let common = ["--attestation-period", "1s", "--bootstrap", boot.as_str()];
    let args = |i: usize| -> Vec<&str> {
        let mut a = common.to_vec();
        match i {
            0 => a.extend(["--mock-capacity", "100"]),
            1 => a.extend(["--mock-capacity", "100", "--claims", "lenient"]),
            _ => a.extend(["--mock-capacity", "0"]),
        }
        a
    };
    let mut nodes: Vec<Option<RunningNode>> = (0..6)
        .map(|i| Some(RunningNode::start(g.homes[i].path(), &args(i))))
        .collect();
    let mut a = RunningNode::start_on(
        g.admin.path(),
        &format!("/ip4/127.0.0.1/tcp/{admin_port}"),
        &["--attestation-period", "1s", "--mock-capacity", "0"],
    );
    wait_ready(&mut a, 6);
    let id_of: HashMap<PeerId, usize> = g
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.parse().unwrap(), i))
        .collect();
    for n in nodes.iter_mut().flatten() {
        n.wait_until("the rotated epoch", WAIT, |n| {
            current_epoch(n) == u64::from(epoch)
        });
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rogue = Rogue::new(rogue_key, *invite.psk.as_bytes());
    let tokens = rt.block_on(async {
        let t = rogue_tokens(&mut rogue, &a, &invite, 40).await;
        for n in nodes.iter().flatten() {
            rogue.connect(n.p2p_addr.parse().unwrap()).await;
        }
        t
    });
    let set = |t: &WalletToken| claims::replica_set(&t.token.hash(), &frozen, claims::DEFAULT_REPLICAS);
    let (l_strict, l_lenient) = (
        peer_of(nodes[0].as_ref().unwrap()).0,
        peer_of(nodes[1].as_ref().unwrap()).0,
    );
    // A token whose replicas are all running members other than the two lenders (not the rogue, not the admin).
    let killable = |t: &&WalletToken| {
        let s = set(t);
        s.iter().filter(|p| id_of.get(p).is_some_and(|&i| i >= 2)).count() >= 3 && !s.contains(&rogue_id)
    };
    let t2 = tokens
        .iter()
        .find(killable)
        .expect("a token with three killable replicas");
    let victims: Vec<usize> = set(t2)
        .iter()
        .filter_map(|p| id_of.get(p).copied().filter(|&i| i >= 2))
        .take(3)
        .collect();
    let req = http("GET", "/claims", b"");

    // Two of t2's replicas down: a token whose replica set contains no other dead one still gets a majority.
    for &v in &victims[..2] {
        nodes[v].take().unwrap().kill9();
    }
    let t1 = tokens
        .iter()
        .find(|t| {
            *t != t2
                && !set(t).contains(&rogue_id)
                && set(t).iter().any(|p| id_of.get(p) == Some(&victims[0]))
        })
        .expect("another token that had a dead replica");
    rt.block_on(async {
        let served = spend_direct(
            &mut rogue,
            nodes[0].as_ref().unwrap(),
            t1,
            l_strict,
            [1; 16],
            &req,
        )
        .await;
        assert!(
            matches!(served, InnerBorrowResponse::Served),
            "2 of 5 replicas down: {served:?}"
        );
    });

    // A third: strict refuses before any work, and the token stays unspent — a lenient lender serves it.
    nodes[victims[2]].take().unwrap().kill9();
    rt.block_on(async {
        let refused = spend_direct(
            &mut rogue,
            nodes[0].as_ref().unwrap(),
            t2,
            l_strict,
            [2; 16],
            &req,
        )
        .await;
        assert_eq!(
            refused,
            InnerBorrowResponse::Refused {
                reason: BorrowRefusal::NoQuorum,
                retry_after_ms: None
            },
            "3 of 5 replicas down, strict"
        );
        let lenient = spend_direct(
            &mut rogue,
            nodes[1].as_ref().unwrap(),
            t2,
            l_lenient,
            [3; 16],
            &req,
        )
        .await;
        assert!(
            matches!(lenient, InnerBorrowResponse::Served),
            "lenient: {lenient:?}"
        );
    });
    let strict_node = nodes[0].as_ref().unwrap();
    assert_eq!(
        counter(strict_node, "lendmesh_claims_total", "unreachable_refused"),
        1
    );
    assert_eq!(
        counter(strict_node, "lendmesh_lends_total", "served"),
        1,
        "no work for the refused one"
    );
    let lenient_node = nodes[1].as_ref().unwrap();
    assert_eq!(
        counter(lenient_node, "lendmesh_claims_total", "unreachable_served"),
        1
    );

    // A replica killed between storing a claim and answering it: after its restart it grants the same claim again
    // and denies another. The rogue claims as a lender itself, at a replica started with the failpoint.
    let v = victims[0];
    let crash_home = g.homes[v].path().to_path_buf();
    let mut crashing = RunningNode::start_with_env(
        &crash_home,
        "/ip4/127.0.0.1/tcp/0",
        &args(v),
        &[("LENDMESH_FAILPOINT", "replica-after-store")],
    );
    wait_ready(&mut crashing, 3);
    let v_peer: PeerId = g.ids[v].parse().unwrap();
    let t3 = tokens
        .iter()
        .find(|t| *t != t1 && *t != t2 && set(t).contains(&v_peer))
        .expect("a token the crashing replica holds");
    let claim = |request_id: [u8; 16]| Claim {
        token_hash: t3.token.hash(),
        epoch,
        lender: rogue_id,
        request_id,
        roster: claims::roster_digest(&frozen),
    };
    rt.block_on(async {
        let first = ask_claim(&mut rogue, crashing.p2p_addr.clone(), claim([7; 16])).await;
        assert!(first.is_err(), "the replica died before answering: {first:?}");
    });
    let status = crashing.exit_status(WAIT).expect("the replica died");
    assert!(!status.success(), "it aborted at the failpoint: {status:?}");
    let mut back = RunningNode::start(&crash_home, &args(v));
    wait_ready(&mut back, 3);
    rt.block_on(async {
        let again = ask_claim(&mut rogue, back.p2p_addr.clone(), claim([7; 16])).await;
        assert_eq!(
            again,
            Ok(ClaimResponse::Granted),
            "the stored claim, granted again"
        );
        let other = ask_claim(&mut rogue, back.p2p_addr.clone(), claim([8; 16])).await;
        assert_eq!(
            other,
            Ok(ClaimResponse::Denied),
            "another claim of the same token"
        );
    });

    assert!(back.stop());
    for n in nodes.into_iter().flatten() {
        assert!(n.stop());
    }
    assert!(a.stop());
}
