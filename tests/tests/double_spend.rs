//! Issue-4 double spends: the same token replayed to one lender, and the same spend raced to two lenders, are
//! refused by the lender that claimed it — durably, across that lender's restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wire::InnerBorrowResponse;
use lendmesh_tests::rogue::Rogue;
use lendmesh_tests::spend::{
    http, invite_rogue, peer_of, rejection, rogue_tokens, spend_direct, spend_direct_at_once,
};
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Sends one sealed borrow straight to `lender` (as a relay would) and opens the answer.
async fn borrow(
    rogue: &mut Rogue,
    lender: &RunningNode,
    _lender_peer: libp2p::PeerId,
    token: &WalletToken,
    bound_to: PeerId,
    request_id: [u8; 16],
) -> InnerBorrowResponse {
    spend_direct(
        rogue,
        lender,
        token,
        bound_to,
        request_id,
        &http("GET", "/double", b""),
    )
    .await
}

fn rejected(resp: &InnerBorrowResponse) -> Option<String> {
    rejection(resp)
}

#[test]
fn replayed_and_raced_tokens_are_refused_durably() {
    // Admin (issuer), lenders B and C, and a rogue member holding real tokens.
    let TestGroup { admin, homes, .. } = TestGroup::new("ds", 2, 200);
    let (rogue_key, invite) = invite_rogue(admin.path(), 200);

    let a = RunningNode::start(admin.path(), &["--gateway", "127.0.0.1:0"]);
    let lender_args = [
        "--gateway",
        "127.0.0.1:0",
        "--mock-capacity",
        "40",
        "--bootstrap",
        a.p2p_addr.as_str(),
    ];
    let mut b = RunningNode::start(homes[0].path(), &lender_args);
    let c = RunningNode::start(homes[1].path(), &lender_args);
    let (b_id, b_peer) = peer_of(&b);
    let (_, c_peer) = peer_of(&c);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rogue = Rogue::new(rogue_key, *invite.psk.as_bytes());
    let tokens = rt.block_on(async {
        let t = rogue_tokens(&mut rogue, &a, &invite, 3).await;
        rogue.connect(b.p2p_addr.parse().unwrap()).await;
        rogue.connect(c.p2p_addr.parse().unwrap()).await;
        t
    });
    let (t1, t2) = (&tokens[0], &tokens[1]);

    rt.block_on(async {
        // First spend at B: served.
        let first = borrow(&mut rogue, &b, b_peer, t1, b_id, [1; 16]).await;
        assert!(matches!(first, InnerBorrowResponse::Served), "{first:?}");
        // The same request id again: no second upstream call; the answer streamed to the first attempt, so the
        // retry learns that the token is spent.
        let again = borrow(&mut rogue, &b, b_peer, t1, b_id, [1; 16]).await;
        assert_eq!(
            again,
            InnerBorrowResponse::Refused {
                reason: lendmesh_protocol::wire::BorrowRefusal::AlreadyServed,
                retry_after_ms: None
            }
        );
        // A replay under a new request id: a double spend.
        let replay = borrow(&mut rogue, &b, b_peer, t1, b_id, [2; 16]).await;
        assert_eq!(rejected(&replay).as_deref(), Some("double_spend"));
        // The same spend (bound to B) raced to C and B: C refuses it, B serves it once.
        let at_c = borrow(&mut rogue, &c, c_peer, t2, b_id, [3; 16]).await;
        assert_eq!(rejected(&at_c).as_deref(), Some("wrong_lender"));
        let at_b = borrow(&mut rogue, &b, b_peer, t2, b_id, [4; 16]).await;
        assert!(matches!(at_b, InnerBorrowResponse::Served), "{at_b:?}");
    });
    assert_eq!(
        b.get("/v1/node").1["counters"]["lends_served"],
        2,
        "two upstream calls, not three"
    );

    // Restart B: the claim survived (and B has a fresh OHTTP key).
    let b_home = b.home.clone();
    assert!(b.stop());
    b = RunningNode::start(&b_home, &lender_args);
    b.wait_until("B connected", WAIT, |n| {
        n.get("/v1/node").1["connected_peers"].as_u64().unwrap_or(0) >= 1
    });
    rt.block_on(async {
        rogue.connect(b.p2p_addr.parse().unwrap()).await;
        let after_restart = borrow(&mut rogue, &b, b_peer, t1, b_id, [5; 16]).await;
        assert_eq!(
            rejected(&after_restart).as_deref(),
            Some("double_spend"),
            "durable across restart"
        );
        // An unspent token still works after the restart.
        let fresh = borrow(&mut rogue, &b, b_peer, &tokens[2], b_id, [6; 16]).await;
        assert!(matches!(fresh, InnerBorrowResponse::Served), "{fresh:?}");
    });
    assert!(b.stop());
    assert!(c.stop());
    assert!(a.stop());
}

/// Issue 12: one spend across the whole group. A rogue member binds each token to two lenders and presents both
/// spends at once, 50 times: the token's replicas grant one claim, so exactly one lender serves it every time. A
/// token served at B and then re-bound to C is refused by C as spent elsewhere.
#[test]
fn a_token_is_served_once_across_the_group_however_it_is_rebound() {
    let TestGroup { admin, homes, .. } = TestGroup::new("ds-group", 2, 500);
    let (rogue_key, invite) = invite_rogue(admin.path(), 200);
    let a = RunningNode::start(admin.path(), &["--gateway", "127.0.0.1:0"]);
    let lender_args = [
        "--gateway",
        "127.0.0.1:0",
        "--mock-capacity",
        "200",
        "--bootstrap",
        a.p2p_addr.as_str(),
    ];
    let b = RunningNode::start(homes[0].path(), &lender_args);
    let c = RunningNode::start(homes[1].path(), &lender_args);
    let (b_id, b_peer) = peer_of(&b);
    let (c_id, c_peer) = peer_of(&c);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rogue = Rogue::new(rogue_key, *invite.psk.as_bytes());
    let tokens = rt.block_on(async {
        // Two batches, one of them not a multiple of anything convenient.
        let mut t = rogue_tokens(&mut rogue, &a, &invite, 26).await;
        t.extend(rogue_tokens(&mut rogue, &a, &invite, 26).await);
        rogue.connect(b.p2p_addr.parse().unwrap()).await;
        rogue.connect(c.p2p_addr.parse().unwrap()).await;
        t
    });
    assert_eq!(tokens.len(), 52);

    let (mut at_b, mut at_c) = (0, 0);
    rt.block_on(async {
        for (i, t) in tokens[..50].iter().enumerate() {
            let id = [i as u8; 16];
            let req = http("GET", "/double", b"");
            let mut both =
                spend_direct_at_once(&mut rogue, &[(&b, t, b_id, id, &req), (&c, t, c_id, id, &req)]).await;
            let (rc, rb) = (both.pop().unwrap(), both.pop().unwrap());
            let served = [&rb, &rc]
                .iter()
                .filter(|r| matches!(r, InnerBorrowResponse::Served))
                .count();
            assert_eq!(served, 1, "token {i}: B {rb:?}, C {rc:?}");
            for r in [&rb, &rc] {
                if !matches!(r, InnerBorrowResponse::Served) {
                    let why = rejected(r);
                    assert!(
                        matches!(why.as_deref(), Some("spent_elsewhere" | "split_vote")),
                        "token {i}: the loser is told it was spent elsewhere: {r:?}"
                    );
                }
            }
            at_b += usize::from(matches!(rb, InnerBorrowResponse::Served));
            at_c += usize::from(matches!(rc, InnerBorrowResponse::Served));
        }
        // Served at B, then re-bound to C and presented there: refused, spent elsewhere.
        let t = &tokens[50];
        let first = borrow(&mut rogue, &b, b_peer, t, b_id, [200; 16]).await;
        assert!(matches!(first, InnerBorrowResponse::Served), "{first:?}");
        let rebound = borrow(&mut rogue, &c, c_peer, t, c_id, [201; 16]).await;
        assert_eq!(
            rejected(&rebound).as_deref(),
            Some("spent_elsewhere"),
            "{rebound:?}"
        );
    });
    assert_eq!(at_b + at_c, 50);
    let served = |n: &RunningNode| n.get("/v1/node").1["counters"]["lends_served"].as_u64().unwrap();
    assert_eq!(served(&b) + served(&c), 51, "one upstream call per token");
    for n in [b, c, a] {
        assert!(n.stop());
    }
}
