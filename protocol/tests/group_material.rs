//! Roster, epoch announcement and invite: signed by the admin, verified by members, tamper-evident.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use lendmesh_protocol::attestation::AttestationKey;
use lendmesh_protocol::group::{EpochAnnouncement, GroupError, Invite, PreSharedKey};
use lendmesh_protocol::test_keys;

fn invite() -> Invite {
    let key = test_keys::rsa_2048();
    let signed_roster = roster(3).sign(&node_key(1)).unwrap();
    let epoch = EpochAnnouncement {
        group_id: GROUP,
        epoch: EPOCH,
        starts_at_ms: NOW,
        ends_at_ms: NOW + 7 * 86_400_000,
        grace_ms: 86_400_000,
        issuer_key_spki: key.public_key().spki_der().to_vec(),
        roster: signed_roster.clone(),
    }
    .sign(&node_key(1))
    .unwrap();
    Invite {
        group_id: GROUP,
        group_name: "friends".into(),
        admin: peer(1),
        member: peer(2),
        psk: PreSharedKey::from_bytes([0x11; 32]),
        attestation_key: AttestationKey::from_bytes([0x22; 32]),
        epoch,
        next_epoch: None,
        roster: signed_roster,
        bootstrap: vec!["/ip4/127.0.0.1/tcp/4001".into()],
    }
}

#[test]
fn roster_signature_verifies_and_detects_tampering() {
    let signed = roster(3).sign(&node_key(1)).unwrap();
    assert_eq!(signed.verify(&GROUP, &peer(1)).unwrap().members.len(), 3);
    // Only the admin can sign it.
    assert_eq!(roster(3).sign(&node_key(2)).unwrap_err(), GroupError::NotAdmin);
    // A member raises its own quota.
    let mut tampered = signed.clone();
    tampered.roster.members[1].quota_per_epoch = 1_000_000;
    assert!(matches!(
        tampered.verify(&GROUP, &peer(1)),
        Err(GroupError::BadAdminSignature { .. })
    ));
    // A roster claiming another admin.
    assert!(matches!(
        signed.verify(&GROUP, &peer(2)),
        Err(GroupError::BadAdminSignature { .. })
    ));
    // Another group.
    assert!(matches!(
        signed.verify(&lendmesh_protocol::GroupId([0; 16]), &peer(1)),
        Err(GroupError::WrongGroup { .. })
    ));
}

#[test]
fn invite_round_trips_and_verifies() {
    let inv = invite();
    let text = inv.to_file_text();
    assert!(text.starts_with("# lendmesh invite"));
    let back = Invite::from_file_text(&text).unwrap();
    assert_eq!(back, inv);
    let key = back.verify(&peer(2)).unwrap();
    assert_eq!(key.spki_der(), test_keys::rsa_2048().public_key().spki_der());
}

#[test]
fn invite_debug_hides_secrets() {
    let inv = invite();
    let dbg = format!("{inv:?}");
    assert!(dbg.contains("PreSharedKey(<redacted>)"));
    assert!(dbg.contains("AttestationKey(<redacted>)"));
    assert!(!dbg.contains(&"11".repeat(32)) && !dbg.contains("17, 17, 17"));
    assert!(!dbg.contains(&"22".repeat(32)) && !dbg.contains("34, 34, 34"));
}

#[test]
fn malformed_and_mismatched_invites_are_refused_clearly() {
    let inv = invite();
    let text = inv.to_file_text();
    // For another node.
    let err = inv.verify(&peer(3)).unwrap_err();
    assert!(matches!(err, GroupError::InviteForAnotherNode { .. }));
    assert!(err.to_string().contains("send the admin this node's peer id"));
    // Truncated: the checksum line is gone.
    let truncated = &text[..text.len() / 2];
    let err = Invite::from_file_text(truncated).unwrap_err();
    assert!(
        err.to_string().contains("ask the group admin for a fresh invite"),
        "{err}"
    );
    // One character of the payload altered.
    let lines: Vec<&str> = text.lines().collect();
    let mut altered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let target = altered
        .iter()
        .position(|l| !l.starts_with('#') && l.len() > 40)
        .unwrap();
    let c = if altered[target].starts_with('A') {
        "B"
    } else {
        "A"
    };
    altered[target].replace_range(0..1, c);
    assert_eq!(
        Invite::from_file_text(&altered.join("\n")).unwrap_err(),
        GroupError::InviteChecksum
    );
    // Not an invite at all; oversized.
    assert!(matches!(
        Invite::from_file_text("hello"),
        Err(GroupError::MalformedInvite(_))
    ));
    assert!(matches!(
        Invite::from_file_text(&"A".repeat(300_000)),
        Err(GroupError::TooLarge(_))
    ));
    // A consistent file whose epoch signature was forged by a member.
    let mut forged = inv.clone();
    forged.epoch = forged.epoch.announcement.clone().sign(&node_key(1)).unwrap();
    forged.epoch.announcement.ends_at_ms += 1;
    let reparsed = Invite::from_file_text(&forged.to_file_text()).unwrap();
    assert!(matches!(
        reparsed.verify(&peer(2)),
        Err(GroupError::BadAdminSignature { .. })
    ));
}
