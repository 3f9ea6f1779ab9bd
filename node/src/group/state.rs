//! What a node knows about its group: the material from `group create` (admin) or `join` (member), kept current
//! as verified roster and epoch announcements arrive.

use std::collections::BTreeSet;

use lendmesh_protocol::attestation::AttestationKey;
use lendmesh_protocol::epoch::{Adopted, EpochBook, EpochError};
use lendmesh_protocol::group::{
    GroupError, Invite, PreSharedKey, Roster, SignedEpochAnnouncement, SignedRoster,
};
use lendmesh_protocol::{GroupId, PeerId};
use serde::{Deserialize, Serialize};

/// The group as this node holds it. Contains secrets (PSK, attestation key); `Debug` redacts them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupState {
    /// The group id.
    pub group_id: GroupId,
    /// The group's name.
    pub name: String,
    /// The admin (and issuer).
    pub admin: PeerId,
    /// The network key.
    pub psk: PreSharedKey,
    /// The attestation HMAC key.
    pub attestation_key: AttestationKey,
    /// The epochs held (previous in its grace period, current, announced next).
    pub epochs: EpochBook,
    /// The newest verified roster.
    pub roster: SignedRoster,
    /// Bootstrap multiaddrs from the invite.
    pub bootstrap: Vec<String>,
    /// Admin only: the length of new epochs (ms).
    pub epoch_length_ms: u64,
    /// Admin only: the grace period of new epochs (ms).
    pub grace_ms: u64,
}

impl GroupState {
    /// The state a member gets from a verified invite.
    pub fn from_invite(invite: &Invite, me: &PeerId) -> Result<GroupState, GroupError> {
        invite.verify(me)?;
        let epochs =
            EpochBook::new(invite.epoch.clone(), &invite.group_id, &invite.admin).map_err(|e| match e {
                EpochError::Invalid(g) => g,
                other => GroupError::MalformedInvite(other.to_string()),
            })?;
        let a = &invite.epoch.announcement;
        let roster = if invite.roster.roster.version >= a.roster.roster.version {
            invite.roster.clone()
        } else {
            a.roster.clone()
        };
        let mut group = GroupState {
            group_id: invite.group_id,
            name: invite.group_name.clone(),
            admin: invite.admin,
            psk: invite.psk.clone(),
            attestation_key: invite.attestation_key.clone(),
            epochs,
            roster,
            bootstrap: invite.bootstrap.clone(),
            epoch_length_ms: a.ends_at_ms.saturating_sub(a.starts_at_ms),
            grace_ms: a.grace_ms,
        };
        if let Some(next) = &invite.next_epoch {
            // The epoch rules take `now` only to refuse skips; an invite's next epoch follows its current one.
            group
                .adopt_epoch(next.clone(), a.starts_at_ms)
                .map_err(|e| GroupError::MalformedInvite(e.to_string()))?;
        }
        Ok(group)
    }

    /// The newest roster.
    pub fn roster(&self) -> &Roster {
        &self.roster.roster
    }

    /// The current epoch number (the newest held when no epoch runs now, e.g. the admin has been offline).
    pub fn epoch_number(&self, now_ms: u64) -> u32 {
        self.epochs
            .current(now_ms)
            .or_else(|| self.epochs.newest())
            .map_or(0, |i| i.epoch())
    }

    /// The announcement new members get in their invite: the current epoch's (or the newest).
    pub fn invite_epoch(&self, now_ms: u64) -> Option<&SignedEpochAnnouncement> {
        self.epochs
            .current(now_ms)
            .or_else(|| self.epochs.newest())
            .map(|i| &i.signed)
    }

    /// Adopts a roster if it verifies and is newer. Returns whether it changed.
    pub fn adopt_roster(&mut self, signed: SignedRoster) -> Result<bool, GroupError> {
        let roster = signed.verify(&self.group_id, &self.admin)?;
        if roster.version <= self.roster.roster.version {
            return Ok(false);
        }
        self.roster = signed;
        Ok(true)
    }

    /// Adopts an epoch announcement (see [`EpochBook::adopt`]); a newer roster inside it is adopted too.
    pub fn adopt_epoch(
        &mut self,
        signed: SignedEpochAnnouncement,
        now_ms: u64,
    ) -> Result<Adopted, EpochError> {
        let roster = signed.announcement.roster.clone();
        let adopted = self.epochs.adopt(signed, &self.group_id, &self.admin, now_ms)?;
        if adopted != Adopted::Unchanged && roster.roster.version > self.roster.roster.version {
            self.roster = roster;
        }
        Ok(adopted)
    }

    /// The pnet key in libp2p's type.
    pub fn libp2p_psk(&self) -> libp2p::pnet::PreSharedKey {
        libp2p::pnet::PreSharedKey::new(*self.psk.as_bytes())
    }
}

/// What every actor needs to know of the group, published by the PeerBook on a watch channel whenever it changes.
/// Time rules are evaluated by each reader with its own `now` (an epoch switch changes nothing here).
#[derive(Clone, Debug)]
pub struct GroupView {
    /// The newest roster.
    pub roster: Roster,
    /// The epochs held.
    pub epochs: EpochBook,
    /// Epochs under a key-consistency alarm: their tokens are neither spent nor accepted.
    pub refused_epochs: BTreeSet<u32>,
}

impl GroupView {
    /// The view of a group state with no alarm.
    pub fn of(group: &GroupState) -> GroupView {
        GroupView {
            roster: group.roster().clone(),
            epochs: group.epochs.clone(),
            refused_epochs: BTreeSet::new(),
        }
    }

    /// Whether this node spends a token of `epoch` now.
    pub fn spendable(&self, epoch: u32, now_ms: u64) -> bool {
        !self.refused_epochs.contains(&epoch) && self.epochs.spendable(epoch, now_ms)
    }
}
