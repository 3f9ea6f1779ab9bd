use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::blind_rsa::{KeySize, SecretKey};
use crate::group::{EpochAnnouncement, Roster, RosterEntry};
use crate::test_keys;

const GROUP: GroupId = GroupId([0x42; 16]);
const T0: u64 = 1_800_000_000_000;
const LEN: u64 = 20_000;
const GRACE: u64 = 10_000;

fn admin_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn admin() -> PeerId {
    PeerId::from_public_key(&admin_key().verifying_key())
}

/// Three distinct issuer keys (the third generated once: the fixed keys are only two).
fn key(n: usize) -> SecretKey {
    static THIRD: OnceLock<SecretKey> = OnceLock::new();
    match n {
        0 => test_keys::rsa_2048(),
        1 => test_keys::rsa_3072(),
        _ => THIRD
            .get_or_init(|| {
                SecretKey::generate(KeySize::Rsa2048, &mut ChaCha20Rng::seed_from_u64(3)).unwrap()
            })
            .clone(),
    }
}

fn announce(
    epoch: u32,
    start: u64,
    end: u64,
    grace: u64,
    key_n: usize,
    version: u64,
) -> SignedEpochAnnouncement {
    let roster = Roster {
        group_id: GROUP,
        version,
        admin: admin(),
        members: vec![RosterEntry {
            peer: admin(),
            quota_per_epoch: 10,
            expires_at_ms: u64::MAX,
        }],
        removed: vec![],
    }
    .sign(&admin_key())
    .unwrap();
    EpochAnnouncement {
        group_id: GROUP,
        epoch,
        starts_at_ms: start,
        ends_at_ms: end,
        grace_ms: grace,
        issuer_key_spki: key(key_n).public_key().spki_der().to_vec(),
        roster,
    }
    .sign(&admin_key())
    .unwrap()
}

fn book() -> EpochBook {
    EpochBook::new(announce(1, T0, T0 + LEN, GRACE, 0, 1), &GROUP, &admin()).unwrap()
}

fn adopt(b: &mut EpochBook, s: SignedEpochAnnouncement, now: u64) -> Result<Adopted, EpochError> {
    b.adopt(s, &GROUP, &admin(), now)
}

#[test]
fn windows_for_lender_borrower_and_issuer() {
    let mut b = book().with_skew_ms(2_000);
    assert_eq!(
        adopt(
            &mut b,
            announce(2, T0 + LEN, T0 + 2 * LEN, GRACE, 1, 1),
            T0 + 14_000
        ),
        Ok(Adopted::New)
    );
    // Before the switch: 1 is current, 2 is next; the issuer signs both; only 1 is spent.
    let now = T0 + 15_000;
    assert_eq!(b.current(now).unwrap().epoch(), 1);
    assert_eq!(b.next(now).unwrap().epoch(), 2);
    assert_eq!(b.next_start_ms(now), Some(T0 + LEN));
    assert!(b.signable(1, now) && b.signable(2, now));
    assert_eq!(b.refill_epochs(now), vec![1, 2]);
    assert!(b.spendable(1, now) && !b.spendable(2, now));
    assert!(b.accepts(1, now) && !b.accepts(2, now));
    // Within the skew allowance before the start, lenders already take epoch 2 (a borrower's clock runs ahead).
    assert!(b.accepts(2, T0 + LEN - 1_500));
    // After the switch: 2 is current; 1 is in its grace period: accepted, spent until the margin, not signed.
    let now = T0 + LEN + 1;
    assert_eq!(b.current(now).unwrap().epoch(), 2);
    assert!(!b.signable(1, now) && b.signable(2, now));
    assert!(b.accepts(1, now) && b.spendable(1, now));
    let late = T0 + LEN + GRACE - GRACE / 2 + 1;
    assert!(
        b.accepts(1, late) && !b.spendable(1, late),
        "borrowers stop before lenders do"
    );
    // After the grace: refused everywhere, and retired.
    let after = T0 + LEN + GRACE;
    assert!(!b.accepts(1, after) && !b.spendable(1, after));
    assert_eq!(b.retire(after - 1), Vec::<u32>::new());
    assert_eq!(b.retire(after), vec![1]);
    assert!(b.get(1).is_none() && b.get(2).is_some());
    // The newest epoch is never retired, even long after it ended (the admin may be offline).
    assert!(b.retire(T0 + 100 * LEN).is_empty());
}

#[test]
fn bad_announcements_are_refused_with_reasons() {
    let mut b = book();
    let now = T0 + 15_000;
    // Signed by someone else.
    let mut forged = announce(2, T0 + LEN, T0 + 2 * LEN, GRACE, 1, 1);
    forged.announcement.ends_at_ms += 1;
    assert_eq!(adopt(&mut b, forged, now).unwrap_err().label(), "invalid");
    // Skips epoch 2 while epoch 1 runs.
    assert_eq!(
        adopt(&mut b, announce(3, T0 + LEN, T0 + 2 * LEN, GRACE, 1, 1), now),
        Err(EpochError::Skipped { got: 3, expected: 2 })
    );
    // Starts before epoch 1 started.
    assert_eq!(
        adopt(&mut b, announce(2, T0 - 1, T0 + LEN, GRACE, 1, 1), now)
            .unwrap_err()
            .label(),
        "overlap"
    );
    // Empty span, too short, grace longer than the epoch.
    assert_eq!(
        adopt(&mut b, announce(2, T0 + LEN, T0 + LEN, 0, 1, 1), now)
            .unwrap_err()
            .label(),
        "overlap"
    );
    assert_eq!(
        adopt(&mut b, announce(2, T0 + LEN, T0 + LEN + 10, 0, 1, 1), now)
            .unwrap_err()
            .label(),
        "bad_length"
    );
    assert_eq!(
        adopt(&mut b, announce(2, T0 + LEN, T0 + 2 * LEN, LEN + 1, 1, 1), now)
            .unwrap_err()
            .label(),
        "bad_length"
    );
    // The next epoch reuses the current key.
    assert_eq!(
        adopt(&mut b, announce(2, T0 + LEN, T0 + 2 * LEN, GRACE, 0, 1), now),
        Err(EpochError::ReusedKey { epoch: 2, other: 1 })
    );
    // A second key for epoch 1: the key-consistency alarm.
    assert_eq!(
        adopt(&mut b, announce(1, T0, T0 + LEN, GRACE, 1, 2), now),
        Err(EpochError::KeyConflict { epoch: 1 })
    );
    // A re-announcement may not lengthen the epoch or move its start.
    assert_eq!(
        adopt(&mut b, announce(1, T0, T0 + LEN + 1, GRACE, 0, 2), now),
        Err(EpochError::BadUpdate { epoch: 1 })
    );
    // The same announcement again, or an older roster version: nothing changes.
    assert_eq!(
        adopt(&mut b, announce(1, T0, T0 + LEN, GRACE, 0, 1), now),
        Ok(Adopted::Unchanged)
    );
    // Going backwards.
    adopt(&mut b, announce(2, T0 + LEN, T0 + 2 * LEN, GRACE, 1, 1), now).unwrap();
    b.retire(T0 + LEN + GRACE);
    assert_eq!(
        adopt(&mut b, announce(1, T0, T0 + LEN, GRACE, 0, 1), T0 + LEN + GRACE),
        Err(EpochError::Backwards { got: 1, newest: 2 })
    );
    // The book is unchanged by every refusal.
    assert_eq!(b.iter().map(EpochInfo::epoch).collect::<Vec<_>>(), vec![2]);
}

#[test]
fn a_node_that_slept_through_epochs_catches_up() {
    let mut b = book();
    // Epochs 2..4 passed while this node was off; epoch 5 is announced long after epoch 1 ended.
    let now = T0 + 5 * LEN;
    assert_eq!(
        adopt(&mut b, announce(5, now, now + LEN, GRACE, 1, 3), now),
        Ok(Adopted::New)
    );
    assert_eq!(b.current(now).unwrap().epoch(), 5);
    assert_eq!(b.retire(now), vec![1]);
}

#[test]
fn immediate_rotation_retires_the_current_epoch_at_once() {
    let mut b = book();
    let next = announce(2, T0 + LEN, T0 + 2 * LEN, GRACE, 1, 1);
    adopt(&mut b, next, T0 + 14_000).unwrap();
    // At T0+15s the admin removes a member with --rotate: epoch 1 ends now without grace, epoch 2 (already
    // announced, its tokens possibly held by the removed member) is cancelled, epoch 3 starts now.
    let now = T0 + 15_000;
    let new_three = announce(3, now, now + LEN, GRACE, 2, 2);
    // Out of order: epoch 3 before the cancellation of 2 is refused (it starts before 2); the admin re-sends.
    assert_eq!(
        adopt(&mut b, new_three.clone(), now).unwrap_err().label(),
        "overlap"
    );
    assert_eq!(
        adopt(&mut b, announce(1, T0, now, 0, 0, 2), now),
        Ok(Adopted::Updated)
    );
    assert_eq!(
        adopt(&mut b, announce(2, T0 + LEN, now, GRACE, 1, 2), now),
        Ok(Adopted::Updated)
    );
    assert!(b.get(2).unwrap().cancelled());
    assert_eq!(adopt(&mut b, new_three, now), Ok(Adopted::New));
    assert!(!b.accepts(1, now) && !b.accepts(2, now) && !b.spendable(2, now + LEN));
    assert!(b.accepts(3, now) && b.spendable(3, now));
    assert_eq!(b.current(now).unwrap().epoch(), 3);
    assert_eq!(b.retire(now), vec![1, 2]);
}

#[test]
fn a_next_epoch_starting_early_ends_the_previous_one_there() {
    let mut b = book();
    let now = T0 + 5_000;
    adopt(&mut b, announce(2, now, now + LEN, GRACE, 1, 2), now).unwrap();
    assert_eq!(b.get(1).unwrap().effective_end_ms, now);
    assert_eq!(b.current(now).unwrap().epoch(), 2);
    assert!(b.accepts(1, now + GRACE - 1) && !b.accepts(1, now + GRACE));
}

#[test]
fn key_consistency_compares_only_epochs_held() {
    let mut b = book();
    adopt(
        &mut b,
        announce(2, T0 + LEN, T0 + 2 * LEN, GRACE, 1, 1),
        T0 + 14_000,
    )
    .unwrap();
    let mine = b.announced_keys(T0 + 15_000);
    assert_eq!(mine.len(), 2);
    assert!(b.key_mismatches(&mine).is_empty());
    let other = key(2).public_key().key_id();
    assert_eq!(b.key_mismatches(&[(1, other), (9, other)]), vec![1]);
}

#[test]
fn needs_next_at_the_lead_time() {
    let b = book();
    let lead = announce_lead_ms(LEN);
    assert_eq!(lead, LEN / 3);
    assert!(!b.needs_next(T0 + LEN - lead - 1));
    assert!(b.needs_next(T0 + LEN - lead));
    assert_eq!(announce_lead_ms(DEFAULT_EPOCH_MS), DAY_MS);
    let info = b.get(1).unwrap();
    assert_eq!(next_schedule(info, LEN, T0), (2, T0 + LEN, T0 + 2 * LEN));
    assert_eq!(
        next_schedule(info, LEN, T0 + 3 * LEN),
        (2, T0 + 3 * LEN, T0 + 4 * LEN),
        "admin was offline"
    );
}

#[test]
fn book_round_trips_through_storage() {
    let mut b = book();
    adopt(
        &mut b,
        announce(2, T0 + LEN, T0 + 2 * LEN, GRACE, 1, 1),
        T0 + 14_000,
    )
    .unwrap();
    let bytes = postcard::to_allocvec(&b).unwrap();
    let back: EpochBook = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.announced_keys(T0), b.announced_keys(T0));
    assert_eq!(back.get(1).unwrap().effective_end_ms, T0 + LEN);
}
