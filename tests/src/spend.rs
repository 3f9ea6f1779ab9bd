//! Spending real tokens by hand, as a member that drives the protocol itself: tokens issued to a rogue member,
//! and a sealed borrow sent straight to a lender (as a relay would forward it).

use lendmesh_protocol::PeerId;
use lendmesh_protocol::group::Invite;
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wallet::Wallet;
use lendmesh_protocol::wire::{
    self, BorrowRefusal, BorrowRequest, BorrowResponse, HttpRequest, InnerBorrowRequest, InnerBorrowResponse,
    IssueResponse,
};

use futures::AsyncReadExt;
use lendmesh_node::roles::borrowed::SealedRequest;

use crate::RunningNode;
use crate::rogue::Rogue;

/// A request with no headers.
pub fn http(method: &str, path: &str, body: &[u8]) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        path_and_query: path.into(),
        headers: vec![],
        body: body.to_vec(),
    }
}

/// `lender`'s peer id, as the protocol and as libp2p spell it.
pub fn peer_of(n: &RunningNode) -> (PeerId, libp2p::PeerId) {
    let id = n.get("/v1/node").1["peer_id"].as_str().unwrap().to_string();
    (id.parse().unwrap(), id.parse().unwrap())
}

/// Sends `token`, bound to `bound_to`, with `request` sealed to `lender`'s key straight to `lender`, and opens the
/// answer. Panics if the lender does not answer.
pub async fn spend_direct(
    rogue: &mut Rogue,
    lender: &RunningNode,
    token: &WalletToken,
    bound_to: PeerId,
    request_id: [u8; 16],
    request: &HttpRequest,
) -> InnerBorrowResponse {
    spend_direct_at_once(rogue, &[(lender, token, bound_to, request_id, request)])
        .await
        .remove(0)
}

/// One spend for [`spend_direct_at_once`]: the lender, the token, whom it is bound to, the request id, the request.
pub type DirectSpend<'a> = (
    &'a RunningNode,
    &'a WalletToken,
    PeerId,
    [u8; 16],
    &'a HttpRequest,
);

/// Like [`spend_direct`] for several spends sent at once (each stream written before any answer is read): a
/// double spender presenting one token at several lenders concurrently. Panics if a lender does not answer.
pub async fn spend_direct_at_once(rogue: &mut Rogue, spends: &[DirectSpend<'_>]) -> Vec<InnerBorrowResponse> {
    let mut sealed_requests = Vec::new();
    let mut frames = Vec::new();
    for (lender, token, bound_to, request_id, request) in spends {
        let (_, lender_peer) = peer_of(lender);
        let key_config = hex::decode(lender.get("/v1/node").1["ohttp_key_config"].as_str().unwrap()).unwrap();
        let http_bytes = lendmesh_protocol::bhttp::encode_request(request);
        let inner = InnerBorrowRequest {
            request_id: *request_id,
            spend: token.spend(
                *bound_to,
                wire::request_digest(&http_bytes),
                lendmesh_node::now_ms(),
            ),
            http_request: http_bytes,
        };
        let mut sealed = SealedRequest::seal(&key_config, &wire::encode(&inner).unwrap())
            .await
            .unwrap();
        let bytes = std::mem::take(&mut sealed.bytes);
        frames.push((
            "/lendmesh/borrow/2".to_string(),
            lender_peer,
            crate::rogue::frame(&wire::encode(&BorrowRequest { sealed: bytes }).unwrap()),
        ));
        sealed_requests.push(sealed);
    }
    let answers = rogue.raw_streams(frames).await;
    let mut out = Vec::new();
    for (sealed, raw) in sealed_requests.into_iter().zip(answers) {
        let raw = raw.expect("the lender answers");
        let head = crate::rogue::unframe(&raw);
        out.push(match wire::decode::<BorrowResponse>(head).unwrap() {
            BorrowResponse::Sealed => {
                let rest = raw[wire::FRAME_PREFIX + head.len()..].to_vec();
                let mut reader = sealed.open(futures::io::Cursor::new(rest)).unwrap();
                let mut prefix = [0u8; wire::FRAME_PREFIX];
                reader.read_exact(&mut prefix).await.unwrap();
                let len = wire::prefixed_len::<InnerBorrowResponse>(prefix).unwrap();
                let mut frame = vec![0u8; len];
                reader.read_exact(&mut frame).await.unwrap();
                wire::decode(&frame).unwrap()
            }
            BorrowResponse::Failed(f) => panic!("delivery failed: {f:?}"),
        });
    }
    out
}

/// Invites a rogue member with a fresh key and `quota` tokens per epoch; returns its key and invite.
pub fn invite_rogue(admin: &std::path::Path, quota: u32) -> (libp2p::identity::Keypair, Invite) {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let invite = invite_key(admin, &key, quota);
    (key, invite)
}

/// Invites (or invites again, with the admin's current epoch) the member with `key`, with `quota` tokens per epoch,
/// through `lendmesh group invite` on the stopped admin node; returns the invite.
pub fn invite_key(admin: &std::path::Path, key: &libp2p::identity::Keypair, quota: u32) -> Invite {
    let out = admin.join("rogue.txt");
    let quota = quota.to_string();
    let id = key.public().to_peer_id().to_string();
    crate::cli_ok(
        admin,
        &[
            "group",
            "invite",
            &id,
            "--quota",
            &quota,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    Invite::from_file_text(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

/// `n` tokens of the invite's epoch, issued to the rogue by the running `admin` over the issue protocol.
pub async fn rogue_tokens(
    rogue: &mut Rogue,
    admin: &RunningNode,
    invite: &Invite,
    n: u32,
) -> Vec<WalletToken> {
    let key = invite.epoch.announcement.issuer_key().unwrap();
    let epoch = invite.epoch.announcement.epoch;
    let admin_peer = rogue.connect(admin.p2p_addr.parse().unwrap()).await;
    let (req, batch) = Wallet::prepare_batch(&key, epoch, n, &mut rand::rngs::OsRng).unwrap();
    let raw = rogue
        .raw_request("/lendmesh/issue/1", admin_peer, wire::encode(&req).unwrap())
        .await
        .unwrap();
    let IssueResponse::Granted { blind_signatures, .. } = wire::decode(&raw).unwrap() else {
        panic!("issue refused")
    };
    let mut w = Wallet::new();
    assert_eq!(w.finalize(&key, &batch, &blind_signatures).unwrap(), n as usize);
    w.iter().cloned().collect()
}

/// The redeemer's label when the lender rejected the token.
pub fn rejection(resp: &InnerBorrowResponse) -> Option<String> {
    match resp {
        InnerBorrowResponse::Refused {
            reason: BorrowRefusal::TokenRejected(label),
            ..
        } => Some(label.clone()),
        _ => None,
    }
}
