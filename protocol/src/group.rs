//! Group material (docs/design.md §3): the pre-shared network key, the signed roster, the epoch announcement, and the
//! invite bundle an admin hands a new member.
//!
//! Everything the admin vouches for (roster, epoch announcement) is signed with the admin node's ed25519 key over
//! a domain-separated postcard encoding; members verify against the admin's [`PeerId`] they got in the invite.

use std::fmt;

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::attestation::key::AttestationKey;
use crate::blind_rsa::PublicKey;
use crate::ids::{GroupId, PeerId, serde_bytes_compat};

const ROSTER_DOMAIN: &[u8] = b"lendmesh/roster/v1";
const EPOCH_DOMAIN: &[u8] = b"lendmesh/epoch/v1";
/// The largest roster accepted (docs/design.md §1 groups are 3–100; headroom for growth).
pub const MAX_ROSTER_MEMBERS: usize = 1024;
/// The longest group name.
pub const MAX_GROUP_NAME: usize = 64;
/// Most bootstrap addresses an invite may carry, and the longest one.
pub const MAX_BOOTSTRAP: usize = 32;
const MAX_BOOTSTRAP_LEN: usize = 256;
/// Largest invite file accepted, before decoding.
pub const MAX_INVITE_BYTES: usize = 256 * 1024;

/// Errors in group material. Messages say what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// The swarm.key text is malformed.
    #[error(
        "group key is not in swarm.key format ({0}); expected '/key/swarm/psk/1.0.0/', '/base16/', 64 hex digits"
    )]
    BadSwarmKey(&'static str),
    /// A signature by the admin does not verify.
    #[error("{what} is not signed by the group admin {admin}")]
    BadAdminSignature {
        /// What was being checked.
        what: &'static str,
        /// The admin it should be signed by (short id).
        admin: String,
    },
    /// The signing key is not the roster's admin.
    #[error("signing key is not the admin named in the roster")]
    NotAdmin,
    /// Two pieces name different groups.
    #[error("wrong group id (expected {expected}, got {got})")]
    WrongGroup {
        /// Expected group id (short).
        expected: String,
        /// Found group id (short).
        got: String,
    },
    /// A limit was exceeded.
    #[error("{0} is too large")]
    TooLarge(&'static str),
    /// The epoch announcement's issuer key is unusable.
    #[error("epoch announcement carries an unusable issuer key: {0}")]
    BadIssuerKey(String),
    /// The invite file is malformed.
    #[error("invite file is malformed: {0}; ask the group admin for a fresh invite")]
    MalformedInvite(String),
    /// The invite's checksum does not match: it was truncated or altered.
    #[error("invite file is corrupted (checksum mismatch); ask the group admin for a fresh invite")]
    InviteChecksum,
    /// The invite was made for another node.
    #[error("this invite is for node {expected}, but this node is {got}; send the admin this node's peer id")]
    InviteForAnotherNode {
        /// Who the invite names (short id).
        expected: String,
        /// This node (short id).
        got: String,
    },
}

/// The private network's pre-shared key (libp2p pnet), in IPFS `swarm.key` text format. Secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreSharedKey([u8; 32]);

impl Drop for PreSharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreSharedKey(<redacted>)")
    }
}

impl PreSharedKey {
    /// A fresh random key.
    pub fn random(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        let key = PreSharedKey(k);
        k.zeroize();
        key
    }

    /// The raw key bytes (for libp2p's `PreSharedKey::new`).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        PreSharedKey(bytes)
    }

    /// The `swarm.key` text: `/key/swarm/psk/1.0.0/`, `/base16/`, then the key in lowercase hex.
    pub fn to_swarm_key(&self) -> String {
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", hex::encode(self.0))
    }

    /// Parses `swarm.key` text (as libp2p and IPFS write it).
    pub fn from_swarm_key(text: &str) -> Result<Self, GroupError> {
        let mut lines = text.lines().map(str::trim);
        if lines.next() != Some("/key/swarm/psk/1.0.0/") {
            return Err(GroupError::BadSwarmKey("missing header"));
        }
        if lines.next() != Some("/base16/") {
            return Err(GroupError::BadSwarmKey("only /base16/ encoding is supported"));
        }
        let hex_line = lines.next().ok_or(GroupError::BadSwarmKey("missing key"))?;
        let mut bytes = hex::decode(hex_line).map_err(|_| GroupError::BadSwarmKey("key is not hex"))?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| GroupError::BadSwarmKey("key is not 32 bytes"))?;
        bytes.zeroize();
        if lines.any(|l| !l.is_empty()) {
            return Err(GroupError::BadSwarmKey("unexpected text after the key"));
        }
        Ok(PreSharedKey(key))
    }
}

/// One member's roster entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RosterEntry {
    /// The member's node identity.
    pub peer: PeerId,
    /// Tokens the issuer will sign for this member per epoch.
    pub quota_per_epoch: u32,
    /// After this instant (ms since the Unix epoch) the member gets no tokens and is not served.
    pub expires_at_ms: u64,
}

/// The group's members, versioned; the admin signs each version.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Roster {
    /// The group.
    pub group_id: GroupId,
    /// Increases with every change; members keep the highest verified version.
    pub version: u64,
    /// The admin (and issuer).
    pub admin: PeerId,
    /// Current members.
    pub members: Vec<RosterEntry>,
    /// Removed members: blocked from the network and from issuance.
    pub removed: Vec<PeerId>,
}

impl Roster {
    /// The entry for a peer, if it is a current (not removed) member.
    pub fn entry(&self, peer: &PeerId) -> Option<&RosterEntry> {
        if self.removed.contains(peer) {
            return None;
        }
        self.members.iter().find(|e| &e.peer == peer)
    }

    /// Whether a peer is a current member whose entry has not expired.
    pub fn is_active(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.entry(peer).is_some_and(|e| now_ms < e.expires_at_ms)
    }

    /// Whether a peer was removed.
    pub fn is_removed(&self, peer: &PeerId) -> bool {
        self.removed.contains(peer)
    }

    /// Current members' ids.
    pub fn member_ids(&self) -> impl Iterator<Item = &PeerId> {
        self.members
            .iter()
            .map(|e| &e.peer)
            .filter(|p| !self.removed.contains(p))
    }

    /// Signs this roster with the admin's node key.
    pub fn sign(self, admin_key: &SigningKey) -> Result<SignedRoster, GroupError> {
        if PeerId::from_public_key(&admin_key.verifying_key()) != self.admin {
            return Err(GroupError::NotAdmin);
        }
        if self.members.len() > MAX_ROSTER_MEMBERS || self.removed.len() > MAX_ROSTER_MEMBERS {
            return Err(GroupError::TooLarge("roster"));
        }
        let signature = admin_key.sign(&signed_bytes(ROSTER_DOMAIN, &self)).to_bytes();
        Ok(SignedRoster {
            roster: self,
            signature,
        })
    }
}

/// A roster with the admin's signature.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedRoster {
    /// The roster.
    pub roster: Roster,
    /// ed25519 signature by `roster.admin`.
    #[serde(with = "serde_bytes_compat::array64")]
    pub signature: [u8; 64],
}

impl SignedRoster {
    /// Checks the group, the admin and the signature.
    pub fn verify(&self, group_id: &GroupId, admin: &PeerId) -> Result<&Roster, GroupError> {
        check_group(group_id, &self.roster.group_id)?;
        if &self.roster.admin != admin {
            return Err(GroupError::BadAdminSignature {
                what: "roster",
                admin: admin.short(),
            });
        }
        if self.roster.members.len() > MAX_ROSTER_MEMBERS || self.roster.removed.len() > MAX_ROSTER_MEMBERS {
            return Err(GroupError::TooLarge("roster"));
        }
        admin
            .public_key()
            .verify(
                &signed_bytes(ROSTER_DOMAIN, &self.roster),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| GroupError::BadAdminSignature {
                what: "roster",
                admin: admin.short(),
            })?;
        Ok(&self.roster)
    }
}

/// An epoch: its issuer key, validity and roster snapshot (docs/design.md §8), announced ahead of time by the admin.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EpochAnnouncement {
    /// The group.
    pub group_id: GroupId,
    /// The epoch number tokens carry.
    pub epoch: u32,
    /// Start of validity (ms since the Unix epoch).
    pub starts_at_ms: u64,
    /// End of validity. A re-announcement may move it earlier (an immediate rotation), never later.
    pub ends_at_ms: u64,
    /// After `ends_at_ms`, lenders still accept this epoch's tokens for this long (docs/design.md §8 grace period).
    pub grace_ms: u64,
    /// The issuer's RSA public key for this epoch, SPKI DER.
    #[serde(with = "serde_bytes_compat::vec")]
    pub issuer_key_spki: Vec<u8>,
    /// The roster as of the announcement.
    pub roster: SignedRoster,
}

impl EpochAnnouncement {
    /// The members of the roster frozen in this announcement: every token of the epoch has its claim replicas
    /// among them (docs/design.md §7).
    pub fn frozen_roster(&self) -> Vec<PeerId> {
        self.roster.roster.member_ids().copied().collect()
    }

    /// Signs the announcement with the admin's node key.
    pub fn sign(self, admin_key: &SigningKey) -> Result<SignedEpochAnnouncement, GroupError> {
        if PeerId::from_public_key(&admin_key.verifying_key()) != self.roster.roster.admin {
            return Err(GroupError::NotAdmin);
        }
        let signature = admin_key.sign(&signed_bytes(EPOCH_DOMAIN, &self)).to_bytes();
        Ok(SignedEpochAnnouncement {
            announcement: self,
            signature,
        })
    }

    /// The issuer's public key.
    pub fn issuer_key(&self) -> Result<PublicKey, GroupError> {
        PublicKey::from_spki_der(&self.issuer_key_spki).map_err(|e| GroupError::BadIssuerKey(e.to_string()))
    }
}

/// An epoch announcement with the admin's signature.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignedEpochAnnouncement {
    /// The announcement.
    pub announcement: EpochAnnouncement,
    /// ed25519 signature by the admin.
    #[serde(with = "serde_bytes_compat::array64")]
    pub signature: [u8; 64],
}

impl SignedEpochAnnouncement {
    /// Checks group, admin signature, the embedded roster's signature and the issuer key; returns the key.
    pub fn verify(&self, group_id: &GroupId, admin: &PeerId) -> Result<PublicKey, GroupError> {
        let a = &self.announcement;
        check_group(group_id, &a.group_id)?;
        admin
            .public_key()
            .verify(
                &signed_bytes(EPOCH_DOMAIN, a),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| GroupError::BadAdminSignature {
                what: "epoch announcement",
                admin: admin.short(),
            })?;
        a.roster.verify(group_id, admin)?;
        a.issuer_key()
    }
}

/// What a new member needs to join: one file, handed over out of band. **Holds secrets** (the network key and the
/// attestation key): written with mode 0600, never logged; `Debug` redacts them.
///
/// File format (text):
/// ```text
/// # comment lines (a warning that the file is secret)
/// lendmesh-invite-v1
/// <base64 of the postcard encoding of `Invite`, wrapped at 76 columns>
/// sha256:<hex SHA-256 of the decoded bytes>
/// ```
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Invite {
    /// The group.
    pub group_id: GroupId,
    /// Its human name.
    pub group_name: String,
    /// The admin, whose signatures the member will trust.
    pub admin: PeerId,
    /// The node this invite is for.
    pub member: PeerId,
    /// The network key.
    pub psk: PreSharedKey,
    /// The attestation HMAC key.
    pub attestation_key: AttestationKey,
    /// The current epoch (issuer key and roster snapshot).
    pub epoch: SignedEpochAnnouncement,
    /// The next epoch, if already announced.
    pub next_epoch: Option<SignedEpochAnnouncement>,
    /// The newest roster (the epoch's snapshot may be older).
    pub roster: SignedRoster,
    /// Multiaddrs of nodes to dial first.
    pub bootstrap: Vec<String>,
}

const INVITE_HEADER: &str = "lendmesh-invite-v1";

impl Invite {
    /// Checks limits and every signature, and that the invite names `me`; returns the epoch's issuer key.
    pub fn verify(&self, me: &PeerId) -> Result<PublicKey, GroupError> {
        if self.group_name.len() > MAX_GROUP_NAME {
            return Err(GroupError::TooLarge("group name"));
        }
        if self.bootstrap.len() > MAX_BOOTSTRAP || self.bootstrap.iter().any(|b| b.len() > MAX_BOOTSTRAP_LEN)
        {
            return Err(GroupError::TooLarge("bootstrap list"));
        }
        if &self.member != me {
            return Err(GroupError::InviteForAnotherNode {
                expected: self.member.short(),
                got: me.short(),
            });
        }
        self.roster.verify(&self.group_id, &self.admin)?;
        if let Some(next) = &self.next_epoch {
            next.verify(&self.group_id, &self.admin)?;
        }
        self.epoch.verify(&self.group_id, &self.admin)
    }

    /// The invite file's text.
    pub fn to_file_text(&self) -> String {
        let payload = postcard::to_allocvec(self).unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
        let mut out = String::from(
            "# lendmesh invite: holds the group's secret network and attestation keys.\n\
             # Keep it private (mode 0600) and delete it after `lendmesh join`.\n",
        );
        out.push_str(INVITE_HEADER);
        out.push('\n');
        for chunk in b64.as_bytes().chunks(76) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str(&format!("sha256:{}\n", hex::encode(Sha256::digest(&payload))));
        out
    }

    /// Parses an invite file's text (size-limited, checksummed). Signatures are checked by [`Invite::verify`].
    pub fn from_file_text(text: &str) -> Result<Self, GroupError> {
        if text.len() > MAX_INVITE_BYTES {
            return Err(GroupError::TooLarge("invite file"));
        }
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        if lines.next() != Some(INVITE_HEADER) {
            return Err(GroupError::MalformedInvite(format!(
                "first line is not '{INVITE_HEADER}'"
            )));
        }
        let mut b64 = String::new();
        let mut checksum = None;
        for line in lines {
            if let Some(sum) = line.strip_prefix("sha256:") {
                checksum = Some(sum.to_string());
                break;
            }
            b64.push_str(line);
        }
        let checksum =
            checksum.ok_or_else(|| GroupError::MalformedInvite("no checksum line (truncated?)".into()))?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| GroupError::MalformedInvite(format!("not base64: {e}")))?;
        if hex::encode(Sha256::digest(&payload)) != checksum.to_ascii_lowercase() {
            return Err(GroupError::InviteChecksum);
        }
        crate::wire::codec::decode_plain(&payload, MAX_INVITE_BYTES)
            .map_err(|e| GroupError::MalformedInvite(e.to_string()))
    }
}

fn check_group(expected: &GroupId, got: &GroupId) -> Result<(), GroupError> {
    if expected != got {
        return Err(GroupError::WrongGroup {
            expected: expected.short(),
            got: got.short(),
        });
    }
    Ok(())
}

fn signed_bytes<T: Serialize>(domain: &[u8], value: &T) -> Vec<u8> {
    let mut out = domain.to_vec();
    // Serialising these plain structs into a Vec cannot fail.
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn swarm_key_round_trips_and_libp2p_parses_it() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let key = PreSharedKey::random(&mut rng);
        let text = key.to_swarm_key();
        assert_eq!(PreSharedKey::from_swarm_key(&text).unwrap(), key);
        let theirs: libp2p_pnet::PreSharedKey = text.parse().unwrap();
        assert_eq!(theirs, libp2p_pnet::PreSharedKey::new(*key.as_bytes()));
        // And we read what libp2p writes.
        assert_eq!(PreSharedKey::from_swarm_key(&theirs.to_string()).unwrap(), key);
        assert!(!format!("{key:?}").contains(&hex::encode(key.as_bytes())));
    }

    #[test]
    fn swarm_key_rejects_garbage() {
        for bad in [
            "",
            "/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n",
            "/key/swarm/psk/1.0.0/\n/base16/\nzz\n",
            "/key/swarm/psk/1.0.0/\n/base16/\nabcd\n",
        ] {
            assert!(PreSharedKey::from_swarm_key(bad).is_err(), "{bad:?}");
        }
    }
}
