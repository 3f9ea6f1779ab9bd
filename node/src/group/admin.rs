//! The admin's operations on the group (docs/design.md §3, §8): create it, invite and remove members, make the next epoch,
//! rotate at once. Each one changes a [`GroupState`] and the store; the same functions serve `lendmesh group …` on a
//! stopped node and the running admin node (its PeerBook, reached through the API's local admin endpoints), which
//! then gossips the change.
//!
//! Order of durability: a new epoch's secret issuer key is committed before the announcement that names it is
//! adopted or published, so the issuer can always sign for every epoch it has announced.

use ed25519_dalek::SigningKey;
use lendmesh_protocol::attestation::AttestationKey;
use lendmesh_protocol::blind_rsa::{KeySize, SecretKey};
use lendmesh_protocol::epoch::{self, EpochInfo};
use lendmesh_protocol::group::{EpochAnnouncement, Invite, PreSharedKey, Roster, RosterEntry};
use lendmesh_protocol::{GroupId, PeerId};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::group::state::GroupState;
use crate::store::Store;

const DAY_MS: u64 = 86_400_000;

/// Admin operation failures; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// This node is not the admin.
    #[error("only the group admin ({0}) can do this")]
    NotAdmin(String),
    /// The peer is not a current member.
    #[error("{0} is not a current member")]
    NotMember(String),
    /// The admin cannot remove itself.
    #[error("the admin cannot remove itself")]
    RemoveSelf,
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Group material could not be signed or verified.
    #[error("{0}")]
    Group(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<lendmesh_protocol::group::GroupError> for AdminError {
    fn from(e: lendmesh_protocol::group::GroupError) -> Self {
        AdminError::Group(e.to_string())
    }
}

impl From<lendmesh_protocol::epoch::EpochError> for AdminError {
    fn from(e: lendmesh_protocol::epoch::EpochError) -> Self {
        AdminError::Group(e.to_string())
    }
}

/// Checks the epoch length and grace of `group create`.
pub fn check_epoch_settings(length_ms: u64, grace_ms: u64) -> Result<(), AdminError> {
    if !(epoch::MIN_EPOCH_MS..=epoch::MAX_EPOCH_MS).contains(&length_ms) {
        return Err(AdminError::Invalid(format!(
            "--epoch must be between {} s and {} days",
            epoch::MIN_EPOCH_MS / 1000,
            epoch::MAX_EPOCH_MS / DAY_MS
        )));
    }
    if grace_ms > length_ms {
        return Err(AdminError::Invalid(
            "--grace may not be longer than --epoch (lenders would hold more than two epochs' spent sets)"
                .into(),
        ));
    }
    Ok(())
}

/// Creates a group with this node as admin and issuer; stores the issuer key and the group.
pub fn create_group(
    store: &Store,
    key: &SigningKey,
    name: &str,
    size: KeySize,
    epoch_length_ms: u64,
    grace_ms: u64,
    quota: u32,
) -> Result<GroupState, AdminError> {
    check_epoch_settings(epoch_length_ms, grace_ms)?;
    let me = PeerId::from_public_key(&key.verifying_key());
    let mut rng = rand::rngs::OsRng;
    let now = now_ms();
    let group_id = GroupId::random(&mut rng);
    let issuer_key = SecretKey::generate(size, &mut rng).map_err(|e| AdminError::Group(e.to_string()))?;
    let roster = Roster {
        group_id,
        version: 1,
        admin: me,
        members: vec![RosterEntry {
            peer: me,
            quota_per_epoch: quota,
            expires_at_ms: now + 3650 * DAY_MS,
        }],
        removed: vec![],
    };
    let signed_roster = roster.sign(key)?;
    let first = EpochAnnouncement {
        group_id,
        epoch: 1,
        starts_at_ms: now,
        ends_at_ms: now + epoch_length_ms,
        grace_ms,
        issuer_key_spki: issuer_key.public_key().spki_der().to_vec(),
        roster: signed_roster.clone(),
    }
    .sign(key)?;
    let epochs = lendmesh_protocol::epoch::EpochBook::new(first, &group_id, &me)?;
    let group = GroupState {
        group_id,
        name: name.to_string(),
        admin: me,
        psk: PreSharedKey::random(&mut rng),
        attestation_key: AttestationKey::random(&mut rng),
        epochs,
        roster: signed_roster,
        bootstrap: vec![],
        epoch_length_ms,
        grace_ms,
    };
    store.put_issuer_key(1, &issuer_key)?;
    store.put_group(&group)?;
    Ok(group)
}

fn require_admin(group: &GroupState, key: &SigningKey) -> Result<PeerId, AdminError> {
    let me = PeerId::from_public_key(&key.verifying_key());
    if group.admin != me {
        return Err(AdminError::NotAdmin(group.admin.short()));
    }
    Ok(me)
}

/// Adds (or renews) `member` in a new signed roster version and returns its invite. The caller persists and
/// gossips the group.
pub fn invite_member(
    key: &SigningKey,
    group: &mut GroupState,
    member: PeerId,
    quota: u32,
    days: u64,
    bootstrap: Vec<String>,
) -> Result<Invite, AdminError> {
    let me = require_admin(group, key)?;
    if days == 0 {
        return Err(AdminError::Invalid("--days must be at least 1".into()));
    }
    let now = now_ms();
    let mut roster = group.roster().clone();
    roster.version += 1;
    roster.removed.retain(|p| p != &member);
    roster.members.retain(|e| e.peer != member);
    roster.members.push(RosterEntry {
        peer: member,
        quota_per_epoch: quota,
        expires_at_ms: now.saturating_add(days.saturating_mul(DAY_MS)),
    });
    let bootstrap = bootstrap
        .into_iter()
        .map(|a| with_peer_suffix(&a, &me))
        .collect::<Result<Vec<_>, _>>()?;
    group.roster = roster.sign(key)?;
    let epoch = group
        .invite_epoch(now)
        .cloned()
        .ok_or_else(|| AdminError::Group("the group holds no epoch".into()))?;
    let next_epoch = group.epochs.next(now).map(|i| i.signed.clone());
    Ok(Invite {
        group_id: group.group_id,
        group_name: group.name.clone(),
        admin: me,
        member,
        psk: group.psk.clone(),
        attestation_key: group.attestation_key.clone(),
        epoch,
        next_epoch,
        roster: group.roster.clone(),
        bootstrap,
    })
}

/// Removes `member` in a new signed roster version: no more tokens, and its connections are refused.
pub fn remove_member(key: &SigningKey, group: &mut GroupState, member: PeerId) -> Result<(), AdminError> {
    let me = require_admin(group, key)?;
    if member == me {
        return Err(AdminError::RemoveSelf);
    }
    if group.roster().entry(&member).is_none() {
        return Err(AdminError::NotMember(member.short()));
    }
    let mut roster = group.roster().clone();
    roster.version += 1;
    roster.removed.push(member);
    group.roster = roster.sign(key)?;
    Ok(())
}

fn newest_epoch(group: &GroupState) -> Result<&EpochInfo, AdminError> {
    group
        .epochs
        .newest()
        .ok_or_else(|| AdminError::Group("the group holds no epoch".into()))
}

/// Generates an issuer key for a new epoch (CPU-heavy: seconds at 3072 bits; run it off the async threads).
pub fn generate_epoch_key(group: &GroupState) -> Result<SecretKey, AdminError> {
    let bits = group.epochs.newest().map_or(3072, |i| i.key.modulus_len() * 8);
    let size = KeySize::from_bits(bits).unwrap_or_default();
    SecretKey::generate(size, &mut rand::rngs::OsRng).map_err(|e| AdminError::Group(e.to_string()))
}

/// Announces the epoch after the newest with `secret` as its key (stored first); returns its number.
pub fn announce_next(
    store: &Store,
    key: &SigningKey,
    group: &mut GroupState,
    secret: &SecretKey,
    now: u64,
) -> Result<u32, AdminError> {
    require_admin(group, key)?;
    let newest = newest_epoch(group)?;
    let (number, start, end) = epoch::next_schedule(newest, group.epoch_length_ms, now);
    add_epoch(store, key, group, secret, number, start, end, now)?;
    Ok(number)
}

/// An immediate rotation: the current epoch ends now without grace, an announced next epoch is cancelled, and a
/// new epoch with `secret` as its key starts now. Every outstanding token is refused from now on.
pub fn rotate_now(
    store: &Store,
    key: &SigningKey,
    group: &mut GroupState,
    secret: &SecretKey,
    now: u64,
) -> Result<u32, AdminError> {
    require_admin(group, key)?;
    let live: Vec<EpochInfo> = group
        .epochs
        .iter()
        .filter(|i| !i.cancelled() && i.accepted_until_ms() > now)
        .cloned()
        .collect();
    for info in live {
        let mut a = info.signed.announcement.clone();
        a.ends_at_ms = a.ends_at_ms.min(now);
        a.grace_ms = 0;
        group.adopt_epoch(a.sign(key)?, now)?;
    }
    let newest = newest_epoch(group)?;
    let number = newest.epoch().saturating_add(1);
    add_epoch(
        store,
        key,
        group,
        secret,
        number,
        now,
        now.saturating_add(group.epoch_length_ms),
        now,
    )?;
    Ok(number)
}

#[allow(clippy::too_many_arguments)]
fn add_epoch(
    store: &Store,
    key: &SigningKey,
    group: &mut GroupState,
    secret: &SecretKey,
    number: u32,
    start: u64,
    end: u64,
    now: u64,
) -> Result<(), AdminError> {
    let signed = EpochAnnouncement {
        group_id: group.group_id,
        epoch: number,
        starts_at_ms: start,
        ends_at_ms: end,
        grace_ms: group.grace_ms,
        issuer_key_spki: secret.public_key().spki_der().to_vec(),
        roster: group.roster.clone(),
    }
    .sign(key)?;
    // Durable before anyone can hold the announcement: the issuer can always sign what was announced.
    store.put_issuer_key(number, secret)?;
    group.adopt_epoch(signed, now)?;
    Ok(())
}

fn with_peer_suffix(addr: &str, me: &PeerId) -> Result<String, AdminError> {
    let parsed: libp2p::Multiaddr = addr
        .parse()
        .map_err(|e| AdminError::Invalid(format!("bootstrap address '{addr}' is not a multiaddr: {e}")))?;
    if parsed
        .iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
    {
        Ok(addr.to_string())
    } else {
        Ok(format!("{addr}/p2p/{me}"))
    }
}

/// The group as `lendmesh group show` prints it (no secrets); the running node's API serves the same.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Group name.
    pub name: String,
    /// Group id.
    pub group_id: String,
    /// The admin.
    pub admin: String,
    /// The node asked.
    pub this_node: String,
    /// pnet key fingerprint (not the key).
    pub key_fingerprint: String,
    /// Roster version.
    pub roster_version: u64,
    /// Members.
    pub members: Vec<MemberSummary>,
    /// Epochs held.
    pub epochs: Vec<EpochSummary>,
}

/// One roster entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberSummary {
    /// Peer id.
    pub peer_id: String,
    /// `member`, `removed` or `expired`.
    pub status: String,
    /// Tokens per epoch.
    pub quota_per_epoch: u32,
    /// Membership end.
    pub expires_at_ms: u64,
}

/// One epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochSummary {
    /// Number.
    pub epoch: u32,
    /// `previous`, `current`, `next`, `cancelled` or `ended`.
    pub state: String,
    /// Start.
    pub starts_at_ms: u64,
    /// Effective end.
    pub ends_at_ms: u64,
    /// Tokens still accepted until then.
    pub accepted_until_ms: u64,
    /// Issuer key id (hex).
    pub key_id: String,
}

impl GroupSummary {
    /// The summary of `group` as seen by `me` at `now`.
    pub fn of(group: &GroupState, me: &PeerId, now: u64) -> GroupSummary {
        let roster = group.roster();
        GroupSummary {
            name: group.name.clone(),
            group_id: group.group_id.to_string(),
            admin: group.admin.to_string(),
            this_node: me.to_string(),
            key_fingerprint: group.libp2p_psk().fingerprint().to_string(),
            roster_version: roster.version,
            members: roster
                .members
                .iter()
                .map(|e| MemberSummary {
                    peer_id: e.peer.to_string(),
                    status: if roster.is_removed(&e.peer) {
                        "removed"
                    } else if now >= e.expires_at_ms {
                        "expired"
                    } else {
                        "member"
                    }
                    .into(),
                    quota_per_epoch: e.quota_per_epoch,
                    expires_at_ms: e.expires_at_ms,
                })
                .collect(),
            epochs: epoch_summaries(&group.epochs, now),
        }
    }

    /// The text `lendmesh group show` prints.
    pub fn render(&self, now: u64) -> Vec<String> {
        let mut out = vec![
            format!("group:        {} ({})", self.name, self.group_id),
            format!(
                "admin:        {}{}",
                self.admin,
                if self.admin == self.this_node {
                    " (this node)"
                } else {
                    ""
                }
            ),
            format!("this node:    {}", self.this_node),
            format!("group key:    fingerprint {}", self.key_fingerprint),
        ];
        for e in &self.epochs {
            out.push(format!(
                "epoch:        {} {:<9} key id {}  {} → {}  (tokens accepted until {})",
                e.epoch,
                e.state,
                &e.key_id[..16.min(e.key_id.len())],
                when(e.starts_at_ms, now),
                when(e.ends_at_ms, now),
                when(e.accepted_until_ms, now),
            ));
        }
        let current = self.members.iter().filter(|m| m.status != "removed").count();
        out.push(format!(
            "roster:       version {}, {current} members",
            self.roster_version
        ));
        for m in &self.members {
            let days = m.expires_at_ms.saturating_sub(now) / DAY_MS;
            out.push(format!(
                "  {}  {:<8} quota {:>5}/epoch  {days:>4} days left",
                m.peer_id, m.status, m.quota_per_epoch
            ));
        }
        out
    }
}

/// Every held epoch with its state at `now`.
pub fn epoch_summaries(book: &lendmesh_protocol::epoch::EpochBook, now: u64) -> Vec<EpochSummary> {
    let current = book.current(now).map(EpochInfo::epoch);
    book.iter()
        .map(|i| EpochSummary {
            epoch: i.epoch(),
            state: if i.cancelled() {
                "cancelled"
            } else if Some(i.epoch()) == current {
                "current"
            } else if i.starts_at_ms() > now {
                "next"
            } else if book.accepts(i.epoch(), now) {
                "previous"
            } else {
                "ended"
            }
            .into(),
            starts_at_ms: i.starts_at_ms(),
            ends_at_ms: i.effective_end_ms,
            accepted_until_ms: i.accepted_until_ms(),
            key_id: hex::encode(i.key_id),
        })
        .collect()
}

/// `in 3h 2m` / `5m 10s ago`, for humans.
fn when(at_ms: u64, now: u64) -> String {
    let (d, suffix, prefix) = if at_ms >= now {
        (at_ms - now, "", "in ")
    } else {
        (now - at_ms, " ago", "")
    };
    let s = d / 1000;
    let text = if s >= 86_400 {
        format!("{}d {}h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    };
    format!("{prefix}{text}{suffix}")
}
