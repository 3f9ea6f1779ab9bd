//! Conversation stickiness (docs/design.md §6.2): which lender served a conversation's last borrowed turn, so the
//! next turn goes to the same lender while it has headroom and the provider's prompt cache there stays warm.
//!
//! A tool names a conversation with the [`CONVERSATION_HEADER`] request header (`Lendmesh-Conversation`): any opaque
//! string of 1 to [`MAX_CONVERSATION_LEN`] visible ASCII characters, such as a UUID. The gateway checks it
//! ([`conversation_from_headers`]; anything else is `400 bad_conversation`) and strips it from every request that
//! leaves the node, to the own upstream or to a lender: no lender or relay ever sees it.
//!
//! [`Conversations`] maps a conversation to the lender that last served it. It keeps no name: the key is SHA-256 of a
//! random per-process salt and the name, so the map in memory cannot be read back into conversation names, not even
//! by trying likely names. It lives in memory only (a restart forgets it), holds at most [`MAX_CONVERSATIONS`]
//! entries (at the limit the least recently served goes) and forgets a conversation idle for
//! [`CONVERSATION_IDLE_MS`]. The preference is only a hint to `protocol`'s `BorrowRun` (`with_sticky`): a lender that
//! is cooling down or has no headroom is passed over, and the turn that moves records its new lender.
//!
//! The map is a small cache that every gateway request task touches at most twice (a lookup before the borrow, a
//! record after it), so it sits behind a `std::sync::Mutex` that is never held across an `.await`, rather than in an
//! actor of its own.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use lendmesh_protocol::PeerId;
use rand_core::RngCore;
use sha2::{Digest, Sha256};

/// The request header that names a conversation (lower case, as HTTP header names are compared).
pub const CONVERSATION_HEADER: &str = "lendmesh-conversation";
/// Longest conversation name, in bytes: room for any UUID or hash a tool would use, and a cap on what one request
/// makes this node hash.
pub const MAX_CONVERSATION_LEN: usize = 128;
/// Conversations remembered at most: 10 000 entries of about 80 bytes are under 1 MiB, and more conversations than
/// that active within an hour on one member's node is not a pattern worth more memory.
pub const MAX_CONVERSATIONS: usize = 10_000;
/// A conversation without a served turn for this long is forgotten: a provider's prompt cache lasts minutes, so a
/// longer pause gains nothing from the same lender.
pub const CONVERSATION_IDLE_MS: u64 = 60 * 60_000;

/// Why a `Lendmesh-Conversation` header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadConversation {
    /// The header is present but empty.
    #[error(
        "the Lendmesh-Conversation header is empty; send 1 to {MAX_CONVERSATION_LEN} visible ASCII characters, such as a UUID, or leave the header out"
    )]
    Empty,
    /// The name is too long.
    #[error(
        "the Lendmesh-Conversation header is {len} bytes, over the {MAX_CONVERSATION_LEN}-byte limit; send a shorter id, such as a UUID or a hash of the conversation's own id"
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A byte outside visible ASCII (`!` to `~`): a space, a control character or a non-ASCII byte.
    #[error(
        "the Lendmesh-Conversation header has byte 0x{byte:02x} at position {at}; only visible ASCII (! to ~, no spaces) is allowed: send an id such as a UUID"
    )]
    NotVisibleAscii {
        /// The byte.
        byte: u8,
        /// Its position.
        at: usize,
    },
    /// The header was sent more than once.
    #[error("the Lendmesh-Conversation header is sent {count} times; send it once")]
    Repeated {
        /// How many times.
        count: usize,
    },
}

/// Checks one header value: 1 to [`MAX_CONVERSATION_LEN`] bytes of visible ASCII.
pub fn parse_conversation(value: &[u8]) -> Result<&str, BadConversation> {
    if value.is_empty() {
        return Err(BadConversation::Empty);
    }
    if value.len() > MAX_CONVERSATION_LEN {
        return Err(BadConversation::TooLong { len: value.len() });
    }
    if let Some((at, &byte)) = value.iter().enumerate().find(|(_, b)| !b.is_ascii_graphic()) {
        return Err(BadConversation::NotVisibleAscii { byte, at });
    }
    // Visible ASCII is UTF-8.
    std::str::from_utf8(value).map_err(|_| BadConversation::NotVisibleAscii { byte: 0, at: 0 })
}

/// The conversation a request names, from the values of its [`CONVERSATION_HEADER`] headers: none without the
/// header, refused when it is sent twice or is not a valid name.
pub fn conversation_from_headers<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<&'a str>, BadConversation> {
    let values: Vec<&[u8]> = values.collect();
    match values.as_slice() {
        [] => Ok(None),
        [one] => parse_conversation(one).map(Some),
        more => Err(BadConversation::Repeated { count: more.len() }),
    }
}

/// What the map keeps of a conversation's name: SHA-256 of the map's salt and the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConversationKey([u8; 32]);

#[derive(Clone, Copy, Debug)]
struct Entry {
    lender: PeerId,
    served_ms: u64,
}

/// Conversation → the lender that last served it: bounded, expiring, names hashed (see the module doc).
pub struct Conversations {
    salt: [u8; 16],
    capacity: usize,
    idle_ms: u64,
    entries: Mutex<HashMap<ConversationKey, Entry>>,
}

impl std::fmt::Debug for Conversations {
    /// The limits and the size; never the salt or the entries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversations")
            .field("capacity", &self.capacity)
            .field("idle_ms", &self.idle_ms)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for Conversations {
    /// The node's limits ([`MAX_CONVERSATIONS`], [`CONVERSATION_IDLE_MS`]) and a fresh random salt.
    fn default() -> Self {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Conversations::with_limits(MAX_CONVERSATIONS, CONVERSATION_IDLE_MS, salt)
    }
}

impl Conversations {
    /// A map with the given bound, idle expiry and salt.
    pub fn with_limits(capacity: usize, idle_ms: u64, salt: [u8; 16]) -> Self {
        Conversations {
            salt,
            capacity: capacity.max(1),
            idle_ms,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key a conversation name (the tool's `Lendmesh-Conversation`, or what `protocol::scrub` reads off the
    /// request) is kept under.
    pub fn key(&self, name: &[u8]) -> ConversationKey {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(name);
        ConversationKey(h.finalize().into())
    }

    /// The conversation's random value, the one thing about it a lender may see (`protocol::scrub` puts it where a
    /// tool's identifiers were): 32 hex characters, the same for every turn of the conversation while this process
    /// runs, unrelated between conversations and to the name without the salt.
    pub fn pseudonym(&self, key: &ConversationKey) -> String {
        let mut h = Sha256::new();
        h.update(b"lendmesh conversation pseudonym");
        h.update(self.salt);
        h.update(key.0);
        hex::encode(&h.finalize()[..16])
    }

    /// The lender that last served `key`, unless the conversation has been idle too long (then it is forgotten).
    pub fn lender(&self, key: &ConversationKey, now_ms: u64) -> Option<PeerId> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(e) if !self.expired(e, now_ms) => Some(e.lender),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// `lender` served a turn of `key` at `now_ms`. A new conversation at the bound first drops the expired ones,
    /// then, if still full, the least recently served (a scan, only when full: cheap next to a borrow).
    pub fn record(&self, key: ConversationKey, lender: PeerId, now_ms: u64) {
        let mut entries = self.lock();
        if !entries.contains_key(&key) && entries.len() >= self.capacity {
            entries.retain(|_, e| !self.expired(e, now_ms));
            if entries.len() >= self.capacity
                && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.served_ms).map(|(k, _)| *k)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                lender,
                served_ms: now_ms,
            },
        );
    }

    /// Conversations held (expired ones included until they are looked up or make room).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, e: &Entry, now_ms: u64) -> bool {
        now_ms.saturating_sub(e.served_ms) >= self.idle_ms
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ConversationKey, Entry>> {
        // A panic while holding the lock leaves a consistent map (every change is one call): keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(seed: u8) -> PeerId {
        PeerId::from_public_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    #[test]
    fn a_served_lender_is_remembered_and_replaced_when_the_conversation_moves() {
        let map = Conversations::with_limits(10, 1_000, [7; 16]);
        let (a, b) = (map.key(b"conversation-a"), map.key(b"conversation-b"));
        assert_eq!(map.lender(&a, 0), None);
        map.record(a, pid(2), 0);
        map.record(b, pid(3), 0);
        assert_eq!(
            (map.lender(&a, 10), map.lender(&b, 10)),
            (Some(pid(2)), Some(pid(3)))
        );
        map.record(a, pid(4), 20);
        assert_eq!(map.lender(&a, 30), Some(pid(4)));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn idle_conversations_expire_on_the_injected_clock() {
        let map = Conversations::with_limits(10, 1_000, [7; 16]);
        let k = map.key(b"c");
        map.record(k, pid(2), 5_000);
        assert_eq!(map.lender(&k, 5_999), Some(pid(2)));
        // A lookup is not a served turn: it does not keep the conversation alive.
        assert_eq!(map.lender(&k, 6_000), None);
        assert!(map.is_empty(), "an expired entry found is dropped");
        // A served turn does.
        map.record(k, pid(2), 6_000);
        map.record(k, pid(2), 6_900);
        assert_eq!(map.lender(&k, 7_800), Some(pid(2)));
    }

    #[test]
    fn the_map_is_bounded_dropping_expired_then_least_recently_served() {
        let map = Conversations::with_limits(3, 1_000, [7; 16]);
        let keys: Vec<ConversationKey> = (0..6).map(|i| map.key(format!("c{i}").as_bytes())).collect();
        map.record(keys[0], pid(2), 0);
        map.record(keys[1], pid(2), 500);
        map.record(keys[2], pid(2), 600);
        // Full: c0 (idle since 0) has expired by 1 200 and goes first.
        map.record(keys[3], pid(3), 1_200);
        assert_eq!(map.len(), 3);
        assert_eq!(map.lender(&keys[0], 1_200), None);
        // Full, none expired: the least recently served (c1) goes; c2 was served again and stays.
        map.record(keys[2], pid(4), 1_300);
        map.record(keys[4], pid(3), 1_400);
        assert_eq!(map.len(), 3);
        assert_eq!(map.lender(&keys[1], 1_400), None);
        assert_eq!(map.lender(&keys[2], 1_400), Some(pid(4)));
        // Updating a known conversation never evicts.
        map.record(keys[3], pid(5), 1_450);
        assert_eq!(map.len(), 3);
        // Many more conversations than the bound: still three.
        for i in 0..1_000u64 {
            map.record(map.key(format!("many{i}").as_bytes()), pid(6), 1_500 + i);
        }
        assert_eq!(map.len(), 3);
        assert_eq!(MAX_CONVERSATIONS, 10_000);
        assert_eq!(CONVERSATION_IDLE_MS, 3_600_000);
    }

    #[test]
    fn the_map_keeps_a_salted_hash_not_the_name() {
        let name = b"my-secret-conversation-id";
        let map = Conversations::with_limits(10, 1_000, [7; 16]);
        let key = map.key(name);
        let mut plain = Sha256::new();
        plain.update([7u8; 16]);
        plain.update(name);
        assert_eq!(key.0, <[u8; 32]>::from(plain.finalize()));
        map.record(key, pid(2), 0);
        let held = format!("{:?}", map.lock());
        assert!(!held.contains("my-secret-conversation-id"), "{held}");
        assert!(!held.contains(&hex::encode(name)), "{held}");
        // Another salt (another process, or a restart) gives another key: unsalted guesses find nothing.
        let other = Conversations::default();
        assert_ne!(other.key(name), key);
        assert_ne!(other.key(name).0, <[u8; 32]>::from(Sha256::digest(name)));
        assert_eq!(map.key(name), key, "stable within one map");
    }

    #[test]
    fn a_conversations_pseudonym_is_stable_and_unlinkable() {
        let map = Conversations::with_limits(10, 1_000, [7; 16]);
        let (a, b) = (map.key(b"a"), map.key(b"b"));
        let p = map.pseudonym(&a);
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(map.pseudonym(&a), p, "every turn of a conversation");
        assert_ne!(map.pseudonym(&b), p, "another conversation");
        let other = Conversations::with_limits(10, 1_000, [8; 16]);
        assert_ne!(other.pseudonym(&other.key(b"a")), p, "another node, or a restart");
        assert!(!hex::encode(a.0).contains(&p), "not the map's key");
    }

    #[test]
    fn header_values_are_checked() {
        assert_eq!(conversation_from_headers(std::iter::empty()), Ok(None));
        let ok = "0f8e2c1a-5b9d-4e7f-8a6b-3c2d1e0f9a8b";
        assert_eq!(
            conversation_from_headers([ok.as_bytes()].into_iter()),
            Ok(Some(ok))
        );
        let longest = "x".repeat(MAX_CONVERSATION_LEN);
        assert_eq!(parse_conversation(longest.as_bytes()), Ok(longest.as_str()));
        assert_eq!(parse_conversation(b"!~"), Ok("!~"));
        assert_eq!(
            parse_conversation("x".repeat(MAX_CONVERSATION_LEN + 1).as_bytes()),
            Err(BadConversation::TooLong { len: 129 })
        );
        assert_eq!(parse_conversation(b""), Err(BadConversation::Empty));
        assert_eq!(
            parse_conversation(b"a b"),
            Err(BadConversation::NotVisibleAscii { byte: b' ', at: 1 })
        );
        assert_eq!(
            parse_conversation("é".as_bytes()),
            Err(BadConversation::NotVisibleAscii { byte: 0xc3, at: 0 })
        );
        assert_eq!(
            parse_conversation(b"a\tb"),
            Err(BadConversation::NotVisibleAscii { byte: b'\t', at: 1 })
        );
        assert_eq!(
            conversation_from_headers([&b"a"[..], &b"b"[..]].into_iter()),
            Err(BadConversation::Repeated { count: 2 })
        );
        assert!(
            BadConversation::TooLong { len: 129 }
                .to_string()
                .contains("128-byte limit")
        );
    }
}
