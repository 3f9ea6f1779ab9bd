//! The wire codec (a leaf): versioned postcard frames, each size-limited before it is decoded, with typed errors.
//! The message types and their frame kinds are in the parent module.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The wire format version this code speaks.
pub const WIRE_VERSION: u8 = 1;
/// Largest borrowed HTTP request or response body plus headers that fits a borrow frame: 8 MiB (the gateway's
/// configurable body limits must stay below this).
pub const MAX_HTTP_MESSAGE: usize = 8 * 1024 * 1024;
/// Overhead allowed around a sealed HTTP message (OHTTP encapsulation, token, spend binding, framing).
pub(super) const SEALED_OVERHEAD: usize = 16 * 1024;
/// Issuance frames: 64 blinded messages or signatures of 512 bytes (4096-bit) and framing.
pub(super) const MAX_ISSUE_FRAME: usize = 64 * 1024;
/// Gossip frames: an epoch announcement with a roster of up to 1 024 members (~60 bytes each) and an RSA key.
pub(super) const MAX_GOSSIP_FRAME: usize = 128 * 1024;

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
    /// [`RelayFrame`].
    RelayFrame = 14,
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

/// Length of the prefix in front of a frame wherever frames follow one another in a byte stream (the streamed
/// protocols, and the head of a sealed response): 4 bytes, big-endian.
pub const FRAME_PREFIX: usize = 4;

/// Encodes a message as a frame with its length in front ([`FRAME_PREFIX`]).
pub fn encode_prefixed<T: WireMessage>(msg: &T) -> Result<Vec<u8>, WireError> {
    let frame = encode(msg)?;
    let len = u32::try_from(frame.len()).map_err(|_| WireError::TooLarge {
        len: frame.len(),
        limit: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(FRAME_PREFIX + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&frame);
    Ok(out)
}

/// The length a frame prefix announces, refused when over `T`'s limit (before anything more is read).
pub fn prefixed_len<T: WireMessage>(prefix: [u8; FRAME_PREFIX]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > T::MAX_LEN {
        return Err(WireError::TooLarge {
            len,
            limit: T::MAX_LEN,
        });
    }
    Ok(len)
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
