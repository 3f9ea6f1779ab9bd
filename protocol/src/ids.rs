//! Identities: member [`PeerId`]s and the [`GroupId`].
//!
//! A member's identity is its node's ed25519 key. [`PeerId`] uses exactly libp2p's encoding for ed25519 keys (an
//! identity multihash over the protobuf-encoded public key), so the bytes and the base58 text match what libp2p
//! prints, while `protocol` stays free of libp2p. Because the multihash inlines the key, a `PeerId` is enough to
//! verify that peer's signatures.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identity-multihash and protobuf prefix of an ed25519 libp2p `PeerId`:
/// multihash code 0x00 (identity), length 36, protobuf `KeyType = Ed25519 (1)`, field 2 of 32 bytes.
const ED25519_PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// Length of an ed25519 `PeerId` in bytes.
pub const PEER_ID_LEN: usize = 38;

/// Errors reading a [`PeerId`] or [`GroupId`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdError {
    /// Not base58 text.
    #[error("peer id is not base58: {0}")]
    NotBase58(String),
    /// Right encoding, but not an ed25519 peer id of 38 bytes.
    #[error("not an ed25519 peer id (lendmesh members use ed25519 node keys); got {len} bytes")]
    NotEd25519 {
        /// Length of the decoded bytes.
        len: usize,
    },
    /// The embedded public key is not a valid ed25519 point.
    #[error("peer id holds an invalid ed25519 public key")]
    InvalidKey,
    /// A group id is 32 hex characters.
    #[error("group id must be 32 hex characters")]
    BadGroupId,
}

/// A member's identity: its node's ed25519 public key in libp2p `PeerId` encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; PEER_ID_LEN]);

impl PeerId {
    /// The `PeerId` of an ed25519 public key.
    pub fn from_public_key(key: &VerifyingKey) -> Self {
        let mut bytes = [0u8; PEER_ID_LEN];
        bytes[..6].copy_from_slice(&ED25519_PEER_ID_PREFIX);
        bytes[6..].copy_from_slice(key.as_bytes());
        PeerId(bytes)
    }

    /// Parses the libp2p byte form; only ed25519 peer ids with a valid key are accepted.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        if bytes.len() != PEER_ID_LEN || bytes[..6] != ED25519_PEER_ID_PREFIX {
            return Err(IdError::NotEd25519 { len: bytes.len() });
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[6..]);
        VerifyingKey::from_bytes(&key).map_err(|_| IdError::InvalidKey)?;
        let mut out = [0u8; PEER_ID_LEN];
        out.copy_from_slice(bytes);
        Ok(PeerId(out))
    }

    /// The libp2p byte form (what libp2p's `PeerId::to_bytes` returns).
    pub fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }

    /// The ed25519 public key this id names.
    pub fn public_key(&self) -> VerifyingKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(&self.0[6..]);
        // Checked when the id was built or parsed.
        VerifyingKey::from_bytes(&key).unwrap_or_else(|_| unreachable!("PeerId holds a validated key"))
    }

    /// A short form for logs and tables: the last 8 base58 characters (the first ones are the same for every
    /// ed25519 id).
    pub fn short(&self) -> String {
        let full = self.to_string();
        full[full.len().saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(&self.0).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = bs58::decode(s.trim())
            .into_vec()
            .map_err(|e| IdError::NotBase58(e.to_string()))?;
        PeerId::from_bytes(&bytes)
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = <serde_bytes_compat::Bytes>::deserialize(d)?;
            PeerId::from_bytes(&bytes.0).map_err(serde::de::Error::custom)
        }
    }
}

/// The random 16-byte identifier of a group, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    /// A fresh random group id.
    pub fn random(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        GroupId(id)
    }

    /// The first 4 bytes in hex, for display next to the group name.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({})", self.short())
    }
}

impl FromStr for GroupId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s.trim()).map_err(|_| IdError::BadGroupId)?;
        let id: [u8; 16] = bytes.try_into().map_err(|_| IdError::BadGroupId)?;
        Ok(GroupId(id))
    }
}

/// Byte-buffer helpers for serde: postcard encodes these as a length and raw bytes (not one varint per byte).
pub(crate) mod serde_bytes_compat {
    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
    use std::fmt;

    /// An owned byte buffer that deserializes from bytes or a sequence of u8.
    pub(crate) struct Bytes(pub(crate) Vec<u8>);

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_bytes(V)
        }
    }

    /// `#[serde(with = "bytes")]` for `Vec<u8>` fields.
    pub(crate) mod vec {
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            Ok(super::Bytes::deserialize(d)?.0)
        }
    }

    /// `#[serde(with = "…")]` for `Vec<Vec<u8>>` fields.
    pub(crate) mod vec_vec {
        use serde::ser::SerializeSeq;
        use serde::{Deserialize, Deserializer, Serializer};

        struct Wrap<'a>(&'a [u8]);
        impl serde::Serialize for Wrap<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }

        pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for item in v {
                seq.serialize_element(&Wrap(item))?;
            }
            seq.end()
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            Ok(Vec::<super::Bytes>::deserialize(d)?
                .into_iter()
                .map(|b| b.0)
                .collect())
        }
    }

    /// `#[serde(with = "…")]` for fixed arrays longer than serde's 32-element limit.
    pub(crate) mod array64 {
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        pub(crate) fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
            let b = super::Bytes::deserialize(d)?.0;
            let len = b.len();
            b.try_into()
                .map_err(|_| D::Error::invalid_length(len, &"64 bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn peer_id_matches_libp2p_encoding() {
        for seed in 0u8..8 {
            let sk = SigningKey::from_bytes(&[seed; 32]);
            let ours = PeerId::from_public_key(&sk.verifying_key());
            let kp = libp2p_identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
            let theirs = kp.public().to_peer_id();
            assert_eq!(ours.as_bytes().as_slice(), theirs.to_bytes().as_slice());
            assert_eq!(ours.to_string(), theirs.to_string());
            let parsed: PeerId = theirs.to_string().parse().unwrap();
            assert_eq!(parsed, ours);
            assert_eq!(parsed.public_key(), sk.verifying_key());
        }
    }

    #[test]
    fn rejects_non_ed25519_and_garbage() {
        assert!(matches!(
            "not-base58-0OIl".parse::<PeerId>(),
            Err(IdError::NotBase58(_))
        ));
        assert!(matches!(
            PeerId::from_bytes(&[0u8; 10]),
            Err(IdError::NotEd25519 { len: 10 })
        ));
        let mut bytes = [0u8; PEER_ID_LEN];
        bytes[..6].copy_from_slice(&ED25519_PEER_ID_PREFIX);
        // Find a 32-byte string that is not a point on the curve; a peer id holding it must be refused.
        let invalid = (0u8..=255)
            .map(|b| {
                let mut k = [0u8; 32];
                k[0] = b;
                k[1] = 1;
                k
            })
            .find(|k| VerifyingKey::from_bytes(k).is_err())
            .unwrap();
        bytes[6..].copy_from_slice(&invalid);
        assert_eq!(PeerId::from_bytes(&bytes), Err(IdError::InvalidKey));
    }

    #[test]
    fn group_id_round_trips() {
        let id = GroupId([7; 16]);
        assert_eq!(id.to_string().parse::<GroupId>().unwrap(), id);
        assert!("abc".parse::<GroupId>().is_err());
    }
}
