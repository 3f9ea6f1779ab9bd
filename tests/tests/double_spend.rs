//! Issue-4 double spends: the same token replayed to one lender, and the same spend raced to two lenders, are
//! refused by the lender that claimed it — durably, across that lender's restart. (The group-wide rule, one spend
//! whatever lender a token is re-bound to, is tested with five replicas in `claims.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wire::InnerBorrowResponse;
use lendmesh_tests::rogue::Rogue;
use lendmesh_tests::spend::{http, invite_rogue, peer_of, rejection, rogue_tokens, spend_direct};
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
    // The lender counts a lend once its answer has gone out: the rogue can see the end of the answer before B's
    // lender actor has counted it.
    b.wait_until("B counted its served lends", WAIT, |n| {
        n.get("/v1/node").1["counters"]["lends_served"].as_u64() >= Some(2)
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
