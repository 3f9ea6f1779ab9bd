//! Headroom attestations with a replay window (docs/design.md §5).
//!
//! A lender periodically announces how much capacity it can lend, in a coarse [`HeadroomBucket`] (exact numbers
//! would single out the exhausted member, i.e. the likely borrower), with its OHTTP key config so borrowers can
//! seal requests to it. Each attestation is tagged with HMAC-SHA256 under the group's attestation key (only members
//! can make one) and signed with the sender's ed25519 node key (only that member can make its own).
//!
//! [`AttestationAcceptor`] takes one only if: it is for this group, the sender is an active roster member, the tag
//! and signature verify, `|now − issued_at| ≤ window` (default ±5 min), its `seq` is newer than the last accepted
//! from that peer, and `(peer, seq)` is not in the bounded replay cache. Every refusal is a typed
//! [`AttestationRejection`] with a metric label.

use std::collections::{HashMap, HashSet, VecDeque};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use serde::{Deserialize, Serialize};

use crate::group::Roster;

pub mod key;
use crate::ids::{GroupId, PeerId, serde_bytes_compat};
pub use key::{AttestationKey, hmac_sha256};

const SIG_DOMAIN: &[u8] = b"lendmesh/attestation-sig/v1";
/// Default acceptance window either side of now: 5 minutes.
pub const DEFAULT_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Default replay-cache size: a 100-member group attesting every 10 s fills 3 000 entries in a 5-minute window;
/// 4 096 leaves headroom, and at ~50 bytes an entry costs about 200 KiB.
pub const DEFAULT_REPLAY_CACHE: usize = 4096;
/// Most `(epoch, key id)` pairs an attestation carries (previous, current, next, and one to spare).
pub const MAX_ANNOUNCED_KEYS: usize = 4;
/// Largest OHTTP key config carried (an X25519 config is 41 bytes; a few configs fit).
pub const MAX_KEY_CONFIG_LEN: usize = 512;

pub use crate::headroom::HeadroomBucket;

/// What a lender claims.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AttestationBody {
    /// The group.
    pub group_id: GroupId,
    /// The lender.
    pub peer_id: PeerId,
    /// Increases with every attestation the lender makes (persisted across restarts).
    pub seq: u64,
    /// When it was made (ms since the Unix epoch, lender's clock).
    pub issued_at_ms: u64,
    /// Coarse headroom.
    pub headroom: HeadroomBucket,
    /// When the lender's capacity window resets.
    pub window_resets_at_ms: u64,
    /// The lender's current OHTTP key config (RFC 9458 §3), to seal borrow requests to it.
    #[serde(with = "serde_bytes_compat::vec")]
    pub ohttp_key_config: Vec<u8>,
    /// `(epoch, issuer key id)` of the epochs the lender holds (at most
    /// [`MAX_ANNOUNCED_KEYS`]): receivers compare them with their own (key consistency, docs/design.md §4).
    pub epoch_keys: Vec<(u32, [u8; 32])>,
    /// What each of the lender's upstreams serves and can lend (at most
    /// [`crate::capability::MAX_CAPABILITIES`]; docs/design.md §5.1). `headroom` above is the best of them.
    pub capabilities: Vec<crate::capability::Capability>,
}

impl AttestationBody {
    /// The lender's capabilities. A lender that lists none shares nothing if it attests no headroom (a member whose
    /// every upstream has a capacity of zero), else it serves any request from one upstream (`Api::Any`, any model)
    /// with the body's headroom.
    pub fn offered(&self) -> Vec<crate::capability::Capability> {
        if self.capabilities.is_empty() && self.headroom == HeadroomBucket::None {
            vec![]
        } else if self.capabilities.is_empty() {
            vec![crate::capability::Capability {
                api: crate::capability::Api::Any,
                models: vec![],
                headroom: self.headroom,
                resets_at_ms: self.window_resets_at_ms,
            }]
        } else {
            self.capabilities.clone()
        }
    }
}

/// A tagged and signed attestation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Attestation {
    /// The claim.
    pub body: AttestationBody,
    /// HMAC-SHA256 under the group attestation key.
    pub tag: [u8; 32],
    /// ed25519 signature by `body.peer_id` over the body and tag.
    #[serde(with = "serde_bytes_compat::array64")]
    pub signature: [u8; 64],
}

/// Errors making an attestation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AttestationError {
    /// The body names another peer than the signing key.
    #[error("attestation body names another peer than the signing node")]
    WrongSigner,
    /// The key config is too large.
    #[error("OHTTP key config of {0} bytes exceeds {MAX_KEY_CONFIG_LEN}")]
    KeyConfigTooLarge(usize),
}

impl Attestation {
    /// Tags and signs a body with the group key and this node's key.
    pub fn create(
        body: AttestationBody,
        key: &AttestationKey,
        node_key: &SigningKey,
    ) -> Result<Self, AttestationError> {
        if PeerId::from_public_key(&node_key.verifying_key()) != body.peer_id {
            return Err(AttestationError::WrongSigner);
        }
        if body.ohttp_key_config.len() > MAX_KEY_CONFIG_LEN {
            return Err(AttestationError::KeyConfigTooLarge(body.ohttp_key_config.len()));
        }
        let encoded = encode_body(&body);
        let tag = key.tag(&encoded);
        let signature = node_key.sign(&sig_message(&encoded, &tag)).to_bytes();
        Ok(Attestation { body, tag, signature })
    }
}

fn encode_body(body: &AttestationBody) -> Vec<u8> {
    postcard::to_allocvec(body).unwrap_or_default()
}

fn sig_message(encoded: &[u8], tag: &[u8; 32]) -> Vec<u8> {
    let mut msg = SIG_DOMAIN.to_vec();
    msg.extend_from_slice(encoded);
    msg.extend_from_slice(tag);
    msg
}

/// Why an attestation was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AttestationRejection {
    /// For another group.
    #[error("attestation for another group")]
    WrongGroup,
    /// The sender is not an active roster member.
    #[error("attestation from a peer not on the roster")]
    NotOnRoster,
    /// Issued more than the window ago.
    #[error("attestation is {age_ms} ms old, beyond the window")]
    TooOld {
        /// Its age.
        age_ms: u64,
    },
    /// Issued more than the window in the future.
    #[error("attestation is {ahead_ms} ms in the future, beyond the window")]
    FromFuture {
        /// How far ahead.
        ahead_ms: u64,
    },
    /// The HMAC tag does not verify under the group key.
    #[error("attestation tag does not verify under the group attestation key")]
    BadTag,
    /// The signature is not the named peer's.
    #[error("attestation signature is not the named peer's")]
    BadSignature,
    /// Exactly this `(peer, seq)` was already accepted.
    #[error("attestation replayed")]
    Replayed,
    /// Older than the last accepted from that peer.
    #[error("attestation seq {seq} is not newer than the last accepted ({last})")]
    StaleSeq {
        /// Its seq.
        seq: u64,
        /// The last accepted seq.
        last: u64,
    },
    /// Malformed contents (oversized key config).
    #[error("attestation is malformed")]
    Malformed,
}

impl AttestationRejection {
    /// A stable label for the `reason` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AttestationRejection::WrongGroup => "wrong_group",
            AttestationRejection::NotOnRoster => "not_on_roster",
            AttestationRejection::TooOld { .. } => "too_old",
            AttestationRejection::FromFuture { .. } => "from_future",
            AttestationRejection::BadTag => "bad_tag",
            AttestationRejection::BadSignature => "bad_signature",
            AttestationRejection::Replayed => "replayed",
            AttestationRejection::StaleSeq { .. } => "stale_seq",
            AttestationRejection::Malformed => "malformed",
        }
    }
}

/// Acceptor settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptorConfig {
    /// Accept `|now − issued_at| ≤ window_ms`.
    pub window_ms: u64,
    /// Replay-cache entries kept at most.
    pub replay_cache: usize,
}

impl Default for AcceptorConfig {
    fn default() -> Self {
        AcceptorConfig {
            window_ms: DEFAULT_WINDOW_MS,
            replay_cache: DEFAULT_REPLAY_CACHE,
        }
    }
}

/// Verifies incoming attestations and remembers what it accepted.
#[derive(Debug)]
pub struct AttestationAcceptor {
    group_id: GroupId,
    key: AttestationKey,
    config: AcceptorConfig,
    last_seq: HashMap<PeerId, u64>,
    replay: ReplayCache,
}

impl AttestationAcceptor {
    /// An acceptor for one group.
    pub fn new(group_id: GroupId, key: AttestationKey, config: AcceptorConfig) -> Self {
        AttestationAcceptor {
            group_id,
            key,
            config,
            last_seq: HashMap::new(),
            replay: ReplayCache::new(config.replay_cache),
        }
    }

    /// Checks an attestation (see the module doc for the order) and, if accepted, records its seq.
    pub fn accept(
        &mut self,
        att: &Attestation,
        roster: &Roster,
        now_ms: u64,
    ) -> Result<(), AttestationRejection> {
        let body = &att.body;
        if body.group_id != self.group_id {
            return Err(AttestationRejection::WrongGroup);
        }
        if !roster.is_active(&body.peer_id, now_ms) {
            return Err(AttestationRejection::NotOnRoster);
        }
        if body.ohttp_key_config.len() > MAX_KEY_CONFIG_LEN
            || body.epoch_keys.len() > MAX_ANNOUNCED_KEYS
            || crate::capability::check(&body.capabilities).is_err()
        {
            return Err(AttestationRejection::Malformed);
        }
        if body.issued_at_ms + self.config.window_ms < now_ms {
            return Err(AttestationRejection::TooOld {
                age_ms: now_ms - body.issued_at_ms,
            });
        }
        if body.issued_at_ms > now_ms + self.config.window_ms {
            return Err(AttestationRejection::FromFuture {
                ahead_ms: body.issued_at_ms - now_ms,
            });
        }
        let encoded = encode_body(body);
        let expected = self.key.tag(&encoded);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &att.tag[..])) {
            return Err(AttestationRejection::BadTag);
        }
        body.peer_id
            .public_key()
            .verify(
                &sig_message(&encoded, &att.tag),
                &Signature::from_bytes(&att.signature),
            )
            .map_err(|_| AttestationRejection::BadSignature)?;
        self.replay.expire(now_ms.saturating_sub(self.config.window_ms));
        if self.replay.contains(&body.peer_id, body.seq) {
            return Err(AttestationRejection::Replayed);
        }
        if let Some(&last) = self.last_seq.get(&body.peer_id)
            && body.seq <= last
        {
            return Err(AttestationRejection::StaleSeq { seq: body.seq, last });
        }
        self.last_seq.insert(body.peer_id, body.seq);
        self.replay.insert(body.peer_id, body.seq, body.issued_at_ms);
        Ok(())
    }

    /// Forgets peers no longer on the roster (keeps the seq map bounded by the roster).
    pub fn retain_roster(&mut self, roster: &Roster) {
        self.last_seq.retain(|p, _| roster.entry(p).is_some());
    }

    /// Entries in the replay cache.
    pub fn replay_cache_len(&self) -> usize {
        self.replay.len()
    }
}

/// Remembers accepted `(peer, seq)` for the window, bounded: when full, the oldest entry goes.
#[derive(Debug)]
struct ReplayCache {
    capacity: usize,
    order: VecDeque<(PeerId, u64, u64)>,
    set: HashSet<(PeerId, u64)>,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn contains(&self, peer: &PeerId, seq: u64) -> bool {
        self.set.contains(&(*peer, seq))
    }

    fn insert(&mut self, peer: PeerId, seq: u64, issued_at_ms: u64) {
        while self.order.len() >= self.capacity {
            if let Some((p, s, _)) = self.order.pop_front() {
                self.set.remove(&(p, s));
            }
        }
        self.order.push_back((peer, seq, issued_at_ms));
        self.set.insert((peer, seq));
    }

    /// Drops entries issued before `cutoff_ms` (they would be refused as too old anyway).
    fn expire(&mut self, cutoff_ms: u64) {
        // Entries arrive roughly in issue order; drop from the front while old.
        while let Some(&(p, s, t)) = self.order.front() {
            if t >= cutoff_ms {
                break;
            }
            self.order.pop_front();
            self.set.remove(&(p, s));
        }
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::RosterEntry;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }
    fn pid(seed: u8) -> PeerId {
        PeerId::from_public_key(&key(seed).verifying_key())
    }
    const G: GroupId = GroupId([1; 16]);
    const NOW: u64 = 1_700_000_000_000;

    fn roster() -> Roster {
        Roster {
            group_id: G,
            version: 1,
            admin: pid(1),
            members: (1..=3)
                .map(|s| RosterEntry {
                    peer: pid(s),
                    quota_per_epoch: 10,
                    expires_at_ms: u64::MAX,
                })
                .collect(),
            removed: vec![],
        }
    }

    fn att(signer: u8, seq: u64, at: u64, akey: &AttestationKey) -> Attestation {
        let body = AttestationBody {
            group_id: G,
            peer_id: pid(signer),
            seq,
            issued_at_ms: at,
            headroom: HeadroomBucket::High,
            window_resets_at_ms: at + 60_000,
            ohttp_key_config: vec![1, 2, 3],
            epoch_keys: vec![(1, [9; 32])],
            capabilities: vec![],
        };
        Attestation::create(body, akey, &key(signer)).unwrap()
    }

    fn acceptor(akey: &AttestationKey) -> AttestationAcceptor {
        AttestationAcceptor::new(G, akey.clone(), AcceptorConfig::default())
    }

    #[test]
    fn rfc4231_vectors() {
        let text = include_str!("../../tests/data/rfc4231_hmac_sha256.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let cases = v["vectors"].as_array().unwrap();
        assert_eq!(cases.len(), 7);
        for case in cases {
            let key = hex::decode(case["key"].as_str().unwrap()).unwrap();
            let data = hex::decode(case["data"].as_str().unwrap()).unwrap();
            let want = case["hmac_sha256"].as_str().unwrap();
            let got = hex::encode(hmac_sha256(&key, &data));
            // Case 5 publishes a 128-bit truncation.
            assert_eq!(&got[..want.len()], want, "case {}", case["case"]);
        }
    }

    #[test]
    fn accepts_fresh_and_newer() {
        let akey = AttestationKey::from_bytes([7; 32]);
        let mut acc = acceptor(&akey);
        assert_eq!(acc.accept(&att(2, 1, NOW, &akey), &roster(), NOW), Ok(()));
        assert_eq!(
            acc.accept(&att(2, 2, NOW + 10, &akey), &roster(), NOW + 10),
            Ok(())
        );
        assert_eq!(acc.accept(&att(3, 1, NOW, &akey), &roster(), NOW), Ok(()));
    }

    #[test]
    fn capability_claims_beyond_the_bounds_are_malformed() {
        use crate::capability::{Api, Capability};
        let akey = AttestationKey::from_bytes([7; 32]);
        let mut acc = acceptor(&akey);
        let signed = |seq: u64, capabilities: Vec<Capability>| {
            let mut body = att(2, seq, NOW, &akey).body;
            body.capabilities = capabilities;
            let node_key = SigningKey::from_bytes(&[2; 32]);
            Attestation::create(body, &akey, &node_key).unwrap()
        };
        let cap = |models: Vec<String>| Capability {
            api: Api::OpenAiChat,
            models,
            headroom: HeadroomBucket::High,
            resets_at_ms: NOW,
        };
        let thousand = signed(1, vec![cap(vec![]); 1000]);
        assert_eq!(
            acc.accept(&thousand, &roster(), NOW),
            Err(AttestationRejection::Malformed)
        );
        let models: Vec<String> = (0..10_000).map(|i| format!("model-{i}")).collect();
        assert_eq!(
            acc.accept(&signed(2, vec![cap(models)]), &roster(), NOW),
            Err(AttestationRejection::Malformed)
        );
        assert_eq!(
            acc.accept(&signed(3, vec![cap(vec!["gpt-4o".into()]); 8]), &roster(), NOW),
            Ok(())
        );
        // What a lender that lists nothing offers: `any` with its headroom, or nothing when it has none.
        let mut body = att(2, 4, NOW, &akey).body;
        assert_eq!(body.offered().len(), 1);
        body.headroom = HeadroomBucket::None;
        assert!(body.offered().is_empty());
    }

    #[test]
    fn adversarial_attestations_are_refused_with_reasons() {
        let akey = AttestationKey::from_bytes([7; 32]);
        let r = roster();
        let mut acc = acceptor(&akey);
        let w = DEFAULT_WINDOW_MS;
        // Too old, too far in the future.
        assert!(matches!(
            acc.accept(&att(2, 1, NOW - w - 1, &akey), &r, NOW),
            Err(AttestationRejection::TooOld { .. })
        ));
        assert!(matches!(
            acc.accept(&att(2, 1, NOW + w + 1, &akey), &r, NOW),
            Err(AttestationRejection::FromFuture { .. })
        ));
        // Edges of the window are accepted.
        assert_eq!(acc.accept(&att(2, 5, NOW - w, &akey), &r, NOW), Ok(()));
        // Replayed, older seq.
        let a6 = att(2, 6, NOW, &akey);
        assert_eq!(acc.accept(&a6, &r, NOW), Ok(()));
        assert_eq!(acc.accept(&a6, &r, NOW + 1), Err(AttestationRejection::Replayed));
        assert_eq!(
            acc.accept(&att(2, 4, NOW, &akey), &r, NOW),
            Err(AttestationRejection::StaleSeq { seq: 4, last: 6 })
        );
        // Wrong HMAC key.
        let other = AttestationKey::from_bytes([8; 32]);
        assert_eq!(
            acc.accept(&att(2, 10, NOW, &other), &r, NOW),
            Err(AttestationRejection::BadTag)
        );
        // Signed by another peer: peer 3 signs a body naming peer 2 (re-tagged correctly by a member).
        let mut forged = att(3, 11, NOW, &akey);
        forged.body.peer_id = pid(2);
        forged.tag = akey.tag(&encode_body(&forged.body));
        assert_eq!(
            acc.accept(&forged, &r, NOW),
            Err(AttestationRejection::BadSignature)
        );
        // A flipped bit in the body breaks the tag.
        let mut flipped = att(2, 12, NOW, &akey);
        flipped.body.headroom = HeadroomBucket::None;
        assert_eq!(acc.accept(&flipped, &r, NOW), Err(AttestationRejection::BadTag));
        // From a non-roster peer (valid tag and signature).
        assert_eq!(
            acc.accept(&att(9, 1, NOW, &akey), &r, NOW),
            Err(AttestationRejection::NotOnRoster)
        );
        // A removed member.
        let mut r2 = r.clone();
        r2.removed.push(pid(3));
        assert_eq!(
            acc.accept(&att(3, 1, NOW, &akey), &r2, NOW),
            Err(AttestationRejection::NotOnRoster)
        );
        // Another group.
        let mut wrong_group =
            AttestationAcceptor::new(GroupId([2; 16]), akey.clone(), AcceptorConfig::default());
        assert_eq!(
            wrong_group.accept(&att(2, 1, NOW, &akey), &r, NOW),
            Err(AttestationRejection::WrongGroup)
        );
    }

    #[test]
    fn replay_cache_is_bounded_and_expires() {
        let akey = AttestationKey::from_bytes([7; 32]);
        let r = roster();
        let mut acc = AttestationAcceptor::new(
            G,
            akey.clone(),
            AcceptorConfig {
                window_ms: 1000,
                replay_cache: 4,
            },
        );
        for seq in 1..=10 {
            acc.accept(&att(2, seq, NOW + seq, &akey), &r, NOW + seq).unwrap();
            assert!(acc.replay_cache_len() <= 4);
        }
        // Evicted from the cache, the per-peer seq still refuses it.
        assert!(matches!(
            acc.accept(&att(2, 1, NOW + 1, &akey), &r, NOW + 20),
            Err(AttestationRejection::StaleSeq { .. })
        ));
        acc.accept(&att(2, 11, NOW + 5000, &akey), &r, NOW + 5000)
            .unwrap();
        assert_eq!(acc.replay_cache_len(), 1, "entries older than the window expire");
    }

    #[test]
    fn buckets() {
        assert_eq!(HeadroomBucket::from_remaining(0, 10), HeadroomBucket::None);
        assert_eq!(HeadroomBucket::from_remaining(2, 10), HeadroomBucket::Low);
        assert_eq!(HeadroomBucket::from_remaining(5, 10), HeadroomBucket::Medium);
        assert_eq!(HeadroomBucket::from_remaining(9, 10), HeadroomBucket::High);
        assert_eq!(HeadroomBucket::from_remaining(5, 0), HeadroomBucket::None);
        assert!(HeadroomBucket::High.weight() > HeadroomBucket::Medium.weight());
    }
}
