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

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::attestation::Attestation;
use crate::group::{SignedEpochAnnouncement, SignedRoster};
use crate::ids::{PeerId, serde_bytes_compat};
use crate::issuer::IssueError;
use crate::token::{TokenHash, TokenSpend};

/// The wire format version this code speaks.
pub const WIRE_VERSION: u8 = 1;
/// Largest borrowed HTTP request or response body plus headers that fits a borrow frame: 8 MiB (the gateway's
/// configurable body limits must stay below this).
pub const MAX_HTTP_MESSAGE: usize = 8 * 1024 * 1024;
/// Overhead allowed around a sealed HTTP message (OHTTP encapsulation, token, spend binding, framing).
const SEALED_OVERHEAD: usize = 16 * 1024;
/// Issuance frames: 64 blinded messages or signatures of 512 bytes (4096-bit) and framing.
const MAX_ISSUE_FRAME: usize = 64 * 1024;
/// Gossip frames: an epoch announcement with a roster of up to 1 024 members (~60 bytes each) and an RSA key.
const MAX_GOSSIP_FRAME: usize = 128 * 1024;

/// Wire errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Bigger than this message type allows.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Shorter than the header.
    #[error("frame too short")]
    Truncated,
    /// Another wire version.
    #[error("unsupported wire version {got} (this node speaks {WIRE_VERSION}); upgrade the older node")]
    UnsupportedVersion {
        /// The version found.
        got: u8,
    },
    /// Another message kind than expected on this protocol.
    #[error("expected message kind {expected}, got {got}")]
    WrongKind {
        /// Expected kind byte.
        expected: u8,
        /// Found kind byte.
        got: u8,
    },
    /// The body does not decode.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Message kinds (the second header byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    /// [`IssueRequest`].
    IssueRequest = 1,
    /// [`IssueResponse`].
    IssueResponse = 2,
    /// [`RelayRequest`].
    RelayRequest = 3,
    /// [`RelayResponse`].
    RelayResponse = 4,
    /// [`BorrowRequest`].
    BorrowRequest = 5,
    /// [`BorrowResponse`].
    BorrowResponse = 6,
    /// [`ClaimRequest`].
    ClaimRequest = 7,
    /// [`ClaimResponse`].
    ClaimResponse = 8,
    /// [`GossipMessage`].
    Gossip = 9,
    /// [`InnerBorrowRequest`].
    InnerBorrowRequest = 10,
    /// [`InnerBorrowResponse`].
    InnerBorrowResponse = 11,
    /// [`HttpRequest`].
    HttpRequest = 12,
    /// [`HttpResponse`].
    HttpResponse = 13,
}

/// A message with a kind byte and a size limit.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// Its kind byte.
    const KIND: MessageKind;
    /// Largest encoded frame accepted.
    const MAX_LEN: usize;
}

/// Encodes a message into a frame; refuses one over its type's limit.
pub fn encode<T: WireMessage>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![WIRE_VERSION, T::KIND as u8];
    let out = postcard::to_extend(msg, std::mem::take(&mut out))
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if out.len() > T::MAX_LEN {
        return Err(WireError::TooLarge {
            len: out.len(),
            limit: T::MAX_LEN,
        });
    }
    Ok(out)
}

/// Decodes a frame within its type's limit.
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, WireError> {
    decode_with_limit(bytes, T::MAX_LEN)
}

/// Decodes a frame within `limit` (at most the type's own limit).
pub fn decode_with_limit<T: WireMessage>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    let limit = limit.min(T::MAX_LEN);
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let [version, kind, body @ ..] = bytes else {
        return Err(WireError::Truncated);
    };
    if *version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { got: *version });
    }
    if *kind != T::KIND as u8 {
        return Err(WireError::WrongKind {
            expected: T::KIND as u8,
            got: *kind,
        });
    }
    decode_plain(body, limit)
}

/// Decodes a headerless postcard value within `limit`, refusing trailing bytes.
pub(crate) fn decode_plain<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes a headerless postcard value (for storage and tests; frames use [`encode`]).
pub fn encode_plain<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// SHA-256 of a request, as bound into a token spend.
pub fn request_digest(request: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(request).into()
}

/// A member asks the issuer to blind-sign a batch (`/lendmesh/issue/1`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct IssueRequest {
    /// Random; a retry of the same batch reuses it.
    pub request_id: [u8; 16],
    /// The epoch asked for.
    pub epoch: u32,
    /// The epoch key's id.
    pub key_id: [u8; 32],
    /// Blinded messages, each of the modulus length.
    #[serde(with = "serde_bytes_compat::vec_vec")]
    pub blinded: Vec<Vec<u8>>,
}

/// The issuer's answer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum IssueResponse {
    /// Signed.
    Granted {
        /// The request answered.
        request_id: [u8; 16],
        /// Blind signatures in request order.
        #[serde(with = "serde_bytes_compat::vec_vec")]
        blind_signatures: Vec<Vec<u8>>,
        /// Tokens the member has left in this epoch after this batch.
        remaining: u32,
    },
    /// Refused, with the reason.
    Refused(IssueError),
}

/// A borrower asks a relay to forward a sealed request to a lender (`/lendmesh/relay/1`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RelayRequest {
    /// The lender to forward to.
    pub lender: PeerId,
    /// The OHTTP-encapsulated request; opaque to the relay.
    #[serde(with = "serde_bytes_compat::vec")]
    pub sealed: Vec<u8>,
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

/// The relay's answer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RelayResponse {
    /// The lender's sealed response.
    Delivered {
        /// OHTTP-encapsulated response; opaque to the relay.
        #[serde(with = "serde_bytes_compat::vec")]
        sealed: Vec<u8>,
    },
    /// Not delivered.
    Failed(DeliveryFailure),
}

/// A relay forwards a sealed request to the lender (`/lendmesh/borrow/1`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BorrowRequest {
    /// OHTTP-encapsulated [`InnerBorrowRequest`].
    #[serde(with = "serde_bytes_compat::vec")]
    pub sealed: Vec<u8>,
}

/// The lender's answer to the relay.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BorrowResponse {
    /// OHTTP-encapsulated [`InnerBorrowResponse`].
    Sealed {
        /// The sealed bytes.
        #[serde(with = "serde_bytes_compat::vec")]
        sealed: Vec<u8>,
    },
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
    /// The Binary HTTP request.
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
}

/// What the lender seals back.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum InnerBorrowResponse {
    /// Served: the Binary HTTP response.
    Served {
        /// The response.
        #[serde(with = "serde_bytes_compat::vec")]
        http_response: Vec<u8>,
    },
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

/// A lender asks a replica to record its claim of a token (`/lendmesh/claim/1`, DESIGN §7).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The token.
    pub token_hash: TokenHash,
    /// The claiming lender's claim id (idempotent retries reuse it).
    pub claim_id: [u8; 16],
    /// The token's epoch.
    pub epoch: u32,
}

/// A replica's answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ClaimResponse {
    /// This claim is the first (or the same claim again).
    Granted,
    /// Another claim came first.
    Denied,
    /// The replica does not accept that epoch.
    UnknownEpoch,
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
        let msg = ClaimRequest {
            token_hash: TokenHash([3; 32]),
            claim_id: [4; 16],
            epoch: 9,
        };
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
