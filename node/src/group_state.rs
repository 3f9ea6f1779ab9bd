//! What a node knows about its group: the material from `group create` (admin) or `join` (member), kept current
//! as verified roster and epoch announcements arrive.

use lendmesh_protocol::attestation::AttestationKey;
use lendmesh_protocol::blind_rsa::PublicKey;
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
    /// The current epoch announcement.
    pub epoch: SignedEpochAnnouncement,
    /// The newest verified roster.
    pub roster: SignedRoster,
    /// Bootstrap multiaddrs from the invite.
    pub bootstrap: Vec<String>,
}

impl GroupState {
    /// The state a member gets from a verified invite.
    pub fn from_invite(invite: &Invite, me: &PeerId) -> Result<GroupState, GroupError> {
        invite.verify(me)?;
        Ok(GroupState {
            group_id: invite.group_id,
            name: invite.group_name.clone(),
            admin: invite.admin,
            psk: invite.psk.clone(),
            attestation_key: invite.attestation_key.clone(),
            epoch: invite.epoch.clone(),
            roster: invite.epoch.announcement.roster.clone(),
            bootstrap: invite.bootstrap.clone(),
        })
    }

    /// The newest roster.
    pub fn roster(&self) -> &Roster {
        &self.roster.roster
    }

    /// The current epoch number.
    pub fn epoch_number(&self) -> u32 {
        self.epoch.announcement.epoch
    }

    /// The current epoch's issuer key.
    pub fn issuer_key(&self) -> Result<PublicKey, GroupError> {
        self.epoch.announcement.issuer_key()
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

    /// Adopts an epoch announcement if it verifies and is newer (or the same epoch with a newer roster).
    pub fn adopt_epoch(&mut self, signed: SignedEpochAnnouncement) -> Result<bool, GroupError> {
        signed.verify(&self.group_id, &self.admin)?;
        let (new, cur) = (&signed.announcement, &self.epoch.announcement);
        let newer = new.epoch > cur.epoch
            || (new.epoch == cur.epoch && new.roster.roster.version > cur.roster.roster.version);
        if !newer {
            return Ok(false);
        }
        if new.roster.roster.version > self.roster.roster.version {
            self.roster = new.roster.clone();
        }
        self.epoch = signed;
        Ok(true)
    }

    /// The pnet key in libp2p's type.
    pub fn libp2p_psk(&self) -> libp2p::pnet::PreSharedKey {
        libp2p::pnet::PreSharedKey::new(*self.psk.as_bytes())
    }
}
