//! Wire messages for lendmesh's protocols, encoded with postcard behind a two-byte header.
//!
//! Frame: `version u8` ([`WIRE_VERSION`]) ‖ `kind u8` ([`MessageKind`]) ‖ postcard body. [`decode`] refuses frames
//! over the message type's size limit *before* decoding, checks version and kind, refuses trailing bytes, and
//! returns a typed [`WireError`] — it never panics on any input (property-tested).
//!
//! | protocol                | request                 | response                |
//! |-------------------------|-------------------------|-------------------------|
//! | `/lendmesh/issue/1`     | [`IssueRequest`]        | [`IssueResponse`]       |
//! | `/lendmesh/relay/1`     | [`RelayRequest`]        | [`RelayResponse`]       |
//! | `/lendmesh/borrow/1`    | [`BorrowRequest`]       | [`BorrowResponse`]      |
//! | `/lendmesh/claim/1`     | [`ClaimRequest`]        | [`ClaimResponse`]       |
//! | gossipsub topic         | [`GossipMessage`]       |                         |
//! | inside OHTTP (sealed)   | [`InnerBorrowRequest`]  | [`InnerBorrowResponse`] |

use serde::{Deserialize, Serialize};

use crate::attestation::Attestation;
use crate::group::{SignedEpochAnnouncement, SignedRoster};
use crate::ids::{PeerId, serde_bytes_compat};
use crate::token::TokenSpend;

pub mod codec;
pub use crate::claims::{Claim, ClaimRefusal};
pub use crate::issuer::{IssueRequest, IssueResponse};
pub use codec::*;
use codec::{MAX_GOSSIP_FRAME, MAX_ISSUE_FRAME, SEALED_OVERHEAD};

/// A borrower asks a relay to forward a sealed request to a lender: the first frame on a `/lendmesh/relay/2`
/// stream (docs/design.md §6). The relay answers [`RelayFrame::Accepted`] before it forwards, then
/// [`RelayFrame::Answer`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RelayRequest {
    /// The lender to forward to.
    pub lender: PeerId,
    /// The OHTTP-encapsulated request; opaque to the relay.
    #[serde(with = "serde_bytes_compat::vec")]
    pub sealed: Vec<u8>,
}

/// What a relay writes on a `/lendmesh/relay/2` stream.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RelayFrame {
    /// The relay has the request and is forwarding it (written and flushed before it opens the lender's stream).
    /// A borrower that has not read this within its acknowledgement timeout treats the request as never sent, resets
    /// the stream and spends the token elsewhere. A relay that was frozen and forwards it late anyway cannot make the
    /// token count twice for long: the spend's timestamp bounds it (the lender's spend-skew check), and docs/design.md
    /// §6 says what remains.
    Accepted,
    /// The outcome: the lender's sealed answer, or why there is none. A refusal before forwarding (busy, bad
    /// lender, too late) comes without `Accepted`.
    Answer(RelayResponse),
}

/// Why a relay or lender could not deliver, in the clear (the relay must be able to say it).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DeliveryFailure {
    /// The relay could not reach the lender.
    LenderUnreachable,
    /// The lender did not answer in time.
    LenderTimeout,
    /// The relay is overloaded.
    RelayBusy,
    /// The lender could not open the envelope (stale key config): re-seal to its current key.
    StaleKeyConfig,
    /// The lender is overloaded.
    LenderBusy,
    /// The relay refuses to relay to itself or a non-member.
    BadLender,
}

/// The relay's answer, the head of what follows on a `/lendmesh/relay/2` stream.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RelayResponse {
    /// The lender answered: its sealed response (chunked OHTTP) follows as raw bytes until the stream ends; a
    /// stream that ends before the sealed response's final chunk was cut short.
    Delivered,
    /// Not delivered.
    Failed(DeliveryFailure),
}

/// A relay (or, in best-effort privacy mode, the borrower) forwards a sealed request to the lender: the first frame
/// on a `/lendmesh/borrow/2` stream, answered by one [`BorrowResponse`] and, when it is `Sealed`, the sealed response.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BorrowRequest {
    /// A chunked-OHTTP-encapsulated [`InnerBorrowRequest`] (draft-ietf-ohai-chunked-ohttp).
    #[serde(with = "serde_bytes_compat::vec")]
    pub sealed: Vec<u8>,
}

/// The lender's answer to the relay, the head of what follows on a `/lendmesh/borrow/2` stream. The lender writes it
/// when it has something to send: a refusal at once, a served answer when its upstream's response head arrives.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BorrowResponse {
    /// The sealed response follows as raw bytes (chunked OHTTP) until the stream ends. Its plaintext is a
    /// length-prefixed [`InnerBorrowResponse`] frame, then, when served, the Binary HTTP response (RFC 9292,
    /// indeterminate length) as it streams.
    Sealed,
    /// The lender could not open or answer it.
    Failed(DeliveryFailure),
}

/// What the borrower seals to the lender: the HTTP request (Binary HTTP, RFC 9292) and the token spend.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct InnerBorrowRequest {
    /// Random per request; a retry at the same lender reuses it and the lender answers idempotently.
    pub request_id: [u8; 16],
    /// The token, bound to this lender and to `request_digest(http_request)`.
    pub spend: TokenSpend,
    /// The HTTP request as Binary HTTP (RFC 9292, known length: the `bhttp` module's `encode_request`).
    #[serde(with = "serde_bytes_compat::vec")]
    pub http_request: Vec<u8>,
}

/// Why a lender refused a borrow after opening it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BorrowRefusal {
    /// No headroom (before claiming: the token stays unspent).
    NoHeadroom,
    /// The token was refused; the label says why (see `RedeemError::label`).
    TokenRejected(String),
    /// The upstream refused before doing any work (claim released: the token stays unspent).
    UpstreamRefused {
        /// The upstream's status.
        status: u16,
    },
    /// The upstream failed (token spent: work may have been done).
    UpstreamFailed(String),
    /// The request was malformed.
    BadRequest(String),
    /// This request id was already served (its answer went to an earlier attempt): the token is spent.
    AlreadyServed,
    /// None of the lender's upstreams serves the request's API or model (before claiming: the token stays
    /// unspent). The borrower's view of the lender was stale.
    NotServed,
    /// No majority of the token's replicas could be reached (`strict`): refused before any work, the claims
    /// released; the token stays unspent (docs/design.md §7).
    NoQuorum,
}

/// What the lender seals back first (a length-prefixed frame at the start of the sealed plaintext).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum InnerBorrowResponse {
    /// Served: the Binary HTTP response follows in the same sealed stream.
    Served,
    /// Refused.
    Refused {
        /// Why.
        reason: BorrowRefusal,
        /// When to try this lender again, if it said.
        retry_after_ms: Option<u64>,
    },
}

/// The HTTP request a borrower asks a lender to make (the `http_request` bytes of [`InnerBorrowRequest`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path_and_query: String,
    /// End-to-end headers (hop-by-hop and identifying ones are stripped by the borrower's gateway).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    #[serde(with = "serde_bytes_compat::vec")]
    pub body: Vec<u8>,
}

/// The upstream's answer, as the lender returns it (the `http_response` bytes of [`InnerBorrowResponse`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    #[serde(with = "serde_bytes_compat::vec")]
    pub body: Vec<u8>,
}

/// A lender asks a replica to record its claim of a token, or to forget it (`/lendmesh/claim/1`,
/// docs/design.md §7).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClaimRequest {
    /// Record this claim if it is the token's first; answer whether it is.
    Claim(Claim),
    /// Forget this claim (the lender refused the request before any work, `strict` with no majority): the
    /// token may be claimed again. A replica forgets only the claim it holds, and only for its own lender.
    Release(Claim),
}

impl ClaimRequest {
    /// The claim it is about.
    pub fn claim(&self) -> &Claim {
        match self {
            ClaimRequest::Claim(c) | ClaimRequest::Release(c) => c,
        }
    }
}

/// A replica's answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClaimResponse {
    /// This claim is the first (or the same claim again).
    Granted,
    /// Another claim came first.
    Denied,
    /// The replica will not vote on it.
    Refused(ClaimRefusal),
    /// The claim is forgotten (or was not held).
    Released,
}

impl ClaimResponse {
    /// What a replica's answer (`None`: no answer) counts as in the lender's tally.
    pub fn vote(answer: Option<ClaimResponse>) -> crate::claims::Vote {
        use crate::claims::Vote;
        match answer {
            Some(ClaimResponse::Granted) => Vote::Granted,
            Some(ClaimResponse::Denied) => Vote::Denied,
            Some(ClaimResponse::Refused(why)) => Vote::Refused(why),
            Some(ClaimResponse::Released) | None => Vote::Unreachable,
        }
    }
}

/// What travels on the group's gossipsub topic.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum GossipMessage {
    /// A lender's headroom.
    Attestation(Attestation),
    /// A new roster version.
    Roster(SignedRoster),
    /// An epoch announcement.
    Epoch(Box<SignedEpochAnnouncement>),
}

macro_rules! wire_message {
    ($($ty:ty => $kind:ident, $max:expr;)*) => {
        $(impl WireMessage for $ty {
            const KIND: MessageKind = MessageKind::$kind;
            const MAX_LEN: usize = $max;
        })*
    };
}

wire_message! {
    IssueRequest => IssueRequest, MAX_ISSUE_FRAME;
    IssueResponse => IssueResponse, MAX_ISSUE_FRAME;
    RelayRequest => RelayRequest, MAX_HTTP_MESSAGE + SEALED_OVERHEAD;
    RelayResponse => RelayResponse, MAX_HTTP_MESSAGE + SEALED_OVERHEAD;
    RelayFrame => RelayFrame, MAX_HTTP_MESSAGE + SEALED_OVERHEAD;
    BorrowRequest => BorrowRequest, MAX_HTTP_MESSAGE + SEALED_OVERHEAD;
    BorrowResponse => BorrowResponse, MAX_HTTP_MESSAGE + SEALED_OVERHEAD;
    InnerBorrowRequest => InnerBorrowRequest, MAX_HTTP_MESSAGE + SEALED_OVERHEAD;
    InnerBorrowResponse => InnerBorrowResponse, MAX_HTTP_MESSAGE + SEALED_OVERHEAD;
    ClaimRequest => ClaimRequest, 256;
    ClaimResponse => ClaimResponse, 16;
    GossipMessage => Gossip, MAX_GOSSIP_FRAME;
    HttpRequest => HttpRequest, MAX_HTTP_MESSAGE;
    HttpResponse => HttpResponse, MAX_HTTP_MESSAGE;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_version_and_kind() {
        let msg = ClaimRequest::Claim(Claim {
            token_hash: crate::token::TokenHash([3; 32]),
            epoch: 9,
            lender: crate::ids::PeerId::from_public_key(
                &ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key(),
            ),
            request_id: [4; 16],
            roster: [6; 32],
        });
        let bytes = encode(&msg).unwrap();
        assert_eq!(&bytes[..2], &[WIRE_VERSION, MessageKind::ClaimRequest as u8]);
        assert_eq!(decode::<ClaimRequest>(&bytes).unwrap(), msg);

        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            decode::<ClaimRequest>(&v2),
            Err(WireError::UnsupportedVersion { got: 2 })
        );
        assert_eq!(
            decode::<GossipMessage>(&bytes),
            Err(WireError::WrongKind {
                expected: MessageKind::Gossip as u8,
                got: 7
            })
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode::<ClaimRequest>(&trailing),
            Err(WireError::TrailingBytes(1))
        );
        assert_eq!(decode::<ClaimRequest>(&bytes[..1]), Err(WireError::Truncated));
        assert!(matches!(
            decode::<ClaimRequest>(&bytes[..10]),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode::<ClaimRequest>(&[0u8; 300]),
            Err(WireError::TooLarge { len: 300, limit: 256 })
        ));
    }

    #[test]
    fn byte_fields_are_compact() {
        // 1000 bytes must cost ~1000 bytes on the wire, not one varint per element.
        let msg = BorrowRequest {
            sealed: vec![0xff; 1000],
        };
        assert!(encode(&msg).unwrap().len() < 1010);
    }

    #[test]
    fn limit_is_enforced_on_encode_too() {
        let msg = IssueRequest {
            request_id: [0; 16],
            epoch: 1,
            key_id: [0; 32],
            blinded: vec![vec![0; 512]; 200],
        };
        assert!(matches!(encode(&msg), Err(WireError::TooLarge { .. })));
    }
}
