//! Issue 12: one spend per token across the group. Seven nodes and a rogue member share an epoch whose roster was
//! frozen with all of them (`group rotate` after the invites); each token's five replicas are computed the way the
//! nodes compute them (`protocol::claims::replica_set`), so the test knows whose vote and whose death matters.
//!
//! - One token presented at two lenders at once, 50 times: exactly one serves it every time; a token served at one
//!   lender and re-bound to another is refused there as spent elsewhere.
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
use lendmesh_tests::spend::{
    http, invite_key, peer_of, rejection, rogue_tokens, spend_direct, spend_direct_at_once,
};
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
    metric_value(n, &format!("{name}{{outcome=\"{outcome}\"}} "))
}

/// Admin + six members + the rogue, in an epoch whose frozen roster holds all eight. Member 0 lends strictly,
/// member 1 lends with `second_claims` (`strict` or `lenient`); the others only answer claims (and relay).
struct ClaimsGroup {
    g: TestGroup,
    nodes: Vec<Option<RunningNode>>,
    a: RunningNode,
    rt: tokio::runtime::Runtime,
    rogue: Rogue,
    rogue_id: PeerId,
    invite: Invite,
    epoch: u32,
    frozen: Vec<PeerId>,
    id_of: HashMap<PeerId, usize>,
    second_claims: &'static str,
    boot: String,
}

impl ClaimsGroup {
    fn start(name: &str, second_claims: &'static str) -> ClaimsGroup {
        let g = TestGroup::new(name, 6, 500);
        let rogue_key = libp2p::identity::Keypair::generate_ed25519();
        let rogue_id: PeerId = rogue_key.public().to_peer_id().to_string().parse().unwrap();
        invite_key(g.admin.path(), &rogue_key, 400);
        // The first epoch was frozen with the admin alone; a rotation freezes the roster as it now is. The rogue's
        // invite is reissued to carry the new epoch.
        cli_ok(g.admin.path(), &["group", "rotate"]);
        let invite = invite_key(g.admin.path(), &rogue_key, 400);
        let epoch = invite.epoch.announcement.epoch;
        assert!(epoch >= 2, "the rotation made a new epoch");
        let frozen = invite.epoch.announcement.frozen_roster();
        assert!(
            frozen.contains(&rogue_id) && frozen.len() == 8,
            "{} members frozen",
            frozen.len()
        );

        let admin_port = free_port();
        let boot = format!("/ip4/127.0.0.1/tcp/{admin_port}/p2p/{}", g.admin_id);
        let mut group = ClaimsGroup {
            nodes: Vec::new(),
            a: RunningNode::start_on(
                g.admin.path(),
                &format!("/ip4/127.0.0.1/tcp/{admin_port}"),
                &["--attestation-period", "1s", "--mock-capacity", "0"],
            ),
            id_of: g
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.parse().unwrap(), i))
                .collect(),
            g,
            rt: tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap(),
            rogue: Rogue::new(rogue_key, *invite.psk.as_bytes()),
            rogue_id,
            invite,
            epoch,
            frozen,
            second_claims,
            boot,
        };
        // Members start alongside the admin, in no particular order.
        group.nodes = (0..6)
            .map(|i| Some(RunningNode::start(group.g.homes[i].path(), &group.args(i))))
            .collect();
        wait_ready(&mut group.a, 6);
        for n in group.nodes.iter_mut().flatten() {
            n.wait_until("the rotated epoch", WAIT, |n| {
                current_epoch(n) == u64::from(epoch)
            });
        }
        let ClaimsGroup { rt, rogue, nodes, .. } = &mut group;
        rt.block_on(async {
            for n in nodes.iter().flatten() {
                rogue.connect(n.p2p_addr.parse().unwrap()).await;
            }
        });
        group
    }

    /// The node flags of member `i`.
    fn args(&self, i: usize) -> Vec<&str> {
        let mut a = vec!["--attestation-period", "1s", "--bootstrap", self.boot.as_str()];
        match i {
            0 => a.extend(["--mock-capacity", "100"]),
            1 => a.extend(["--mock-capacity", "100", "--claims", self.second_claims]),
            _ => a.extend(["--mock-capacity", "0"]),
        }
        a
    }

    /// The replica set of `t`, as every node computes it.
    fn set(&self, t: &WalletToken) -> Vec<PeerId> {
        claims::replica_set(&t.token.hash(), &self.frozen, claims::DEFAULT_REPLICAS)
    }

    /// `n` of the rogue's tokens, issued by the admin.
    fn tokens(&mut self, n: u32) -> Vec<WalletToken> {
        let ClaimsGroup {
            rt, rogue, a, invite, ..
        } = self;
        rt.block_on(rogue_tokens(rogue, a, invite, n))
    }

    fn stop(self) {
        // Eight members that started at once throttled none of each other (issue 19's limits, the admin's
        // republished roster and epochs included).
        for n in self.nodes.iter().flatten().chain([&self.a]) {
            let text = http_get_raw(&n.api, "/metrics", None).1;
            let throttled: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("lendmesh_peer_throttled_total{") && !l.ends_with(" 0"))
                .collect();
            assert!(throttled.is_empty(), "honest members throttled: {throttled:?}");
        }
        for n in self.nodes.into_iter().flatten() {
            assert!(n.stop());
        }
        assert!(self.a.stop());
    }
}

/// A double spender binds each token to two lenders and presents both spends at once, 50 times: the token's five
/// replicas each grant the claim they stored first, so one lender always holds a majority and exactly one serves.
/// (Only tokens whose replicas are all honest running members: a replica the rogue plays itself does not answer, and
/// with four votes the two claims can split 2-2, which burns the token as `split_vote` — the double spender's loss.)
#[test]
fn one_token_at_two_lenders_at_once_is_served_exactly_once() {
    let mut cg = ClaimsGroup::start("claims-race", "strict");
    let mut tokens = Vec::new();
    while tokens.len() < 51 {
        let batch = cg.tokens(50);
        tokens.extend(batch.into_iter().filter(|t| {
            let s = cg.set(t);
            assert_eq!(s.len(), 5);
            !s.contains(&cg.rogue_id)
        }));
    }
    let req = http("GET", "/double", b"");
    let (mut at_b, mut at_c) = (0, 0);
    let ClaimsGroup { rt, rogue, nodes, .. } = &mut cg;
    let (b, c) = (nodes[0].as_ref().unwrap(), nodes[1].as_ref().unwrap());
    let (b_id, c_id) = (peer_of(b).0, peer_of(c).0);
    rt.block_on(async {
        for (i, t) in tokens[..50].iter().enumerate() {
            let id = [i as u8; 16];
            let mut both =
                spend_direct_at_once(rogue, &[(b, t, b_id, id, &req), (c, t, c_id, id, &req)]).await;
            let (rc, rb) = (both.pop().unwrap(), both.pop().unwrap());
            let served = [&rb, &rc]
                .iter()
                .filter(|r| matches!(r, InnerBorrowResponse::Served))
                .count();
            assert_eq!(served, 1, "token {i}: B {rb:?}, C {rc:?}");
            let loser = if matches!(rb, InnerBorrowResponse::Served) {
                &rc
            } else {
                &rb
            };
            assert_eq!(
                rejection(loser).as_deref(),
                Some("spent_elsewhere"),
                "token {i}: the loser is told it was spent elsewhere"
            );
            at_b += usize::from(matches!(rb, InnerBorrowResponse::Served));
            at_c += usize::from(matches!(rc, InnerBorrowResponse::Served));
        }
        // Served at B, then re-bound to C and presented there: refused, spent elsewhere.
        let t = &tokens[50];
        let first = spend_direct(rogue, b, t, b_id, [200; 16], &req).await;
        assert!(matches!(first, InnerBorrowResponse::Served), "{first:?}");
        let rebound = spend_direct(rogue, c, t, c_id, [201; 16], &req).await;
        assert_eq!(
            rejection(&rebound).as_deref(),
            Some("spent_elsewhere"),
            "{rebound:?}"
        );
    });
    assert_eq!(at_b + at_c, 50);
    eprintln!("served at B {at_b}, at C {at_c}");
    let served = |n: &RunningNode| counter(n, "lendmesh_lends_total", "served");
    assert_eq!(served(b) + served(c), 51, "one upstream call per token");
    cg.stop();
}

#[test]
fn claims_survive_two_dead_replicas_and_refuse_or_record_without_a_majority() {
    let mut cg = ClaimsGroup::start("claims", "lenient");
    let tokens = cg.tokens(40);
    let (rogue_id, epoch) = (cg.rogue_id, cg.epoch);
    let all_args: Vec<Vec<String>> = (0..6)
        .map(|i| cg.args(i).into_iter().map(String::from).collect())
        .collect();
    let args = |i: usize| all_args[i].iter().map(String::as_str).collect::<Vec<_>>();
    let ClaimsGroup {
        g,
        mut nodes,
        a,
        rt,
        mut rogue,
        frozen,
        id_of,
        ..
    } = cg;
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
