use super::*;

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Scenario::from_file(std::path::Path::new(&path)).unwrap()
}

const MINUTE: Ms = 60_000;

#[test]
fn without_epochs_one_epoch_outlasts_the_run() {
    let s = scenario("test-skew");
    let mut sim = Sim::new(&s, 1).unwrap();
    sim.on_admin_epochs(0);
    assert_eq!(sim.ep.log.len(), 1);
    assert!(sim.queue.is_empty(), "the admin has nothing to do");
    assert!(!sim.ep.enabled);
    assert_eq!(sim.issuer.epochs().collect::<Vec<_>>(), vec![0]);
    for i in 0..sim.n {
        let book = &sim.members[i].book;
        let info = book.get(0).unwrap();
        assert!(info.starts_at_ms() < sim.local(i, 0));
        assert!(info.accepted_until_ms() > sim.local(i, sim.stop));
        assert!(book.spendable(0, sim.local(i, 0)) && book.spendable(0, sim.local(i, sim.stop)));
        assert!(book.next(sim.local(i, sim.stop)).is_none());
    }
    let e = &sim.members[0].book.get(0).unwrap().signed.announcement;
    assert_eq!(
        e.roster.roster.entry(&sim.members[0].id).unwrap().quota_per_epoch,
        u32::MAX / 2
    );
}

#[test]
fn the_admin_announces_ahead_rotates_and_retires() {
    let s = scenario("test-epochs");
    let mut sim = Sim::new(&s, 21).unwrap();
    let mut first_seen: BTreeMap<u32, Ms> = BTreeMap::new();
    for t in (0..=120 * MINUTE).step_by(10_000) {
        sim.on_admin_epochs(t);
        for a in &sim.ep.log {
            first_seen.entry(a.signed.announcement.epoch).or_insert(t);
        }
        let now = sim.admin_now(t);
        assert!(
            sim.ep.book.iter().count() <= 3,
            "at {t}: {:?}",
            sim.ep.book.refill_epochs(now)
        );
        assert!(sim.issuer.epochs().count() <= 3);
        // The issuer signs exactly the book's signable epochs (current and announced next).
        for e in sim.issuer.epochs() {
            let signs = sim.issuer.key(e).is_some() && sim.ep.book.signable(e, now);
            assert!(signs || !sim.ep.book.refill_epochs(now).contains(&e));
        }
    }
    let at = |e: u32| sim.ep.tallies[&e].start_ms - EPOCH_START_MS;
    // Regular epochs are announced a third of an epoch ahead; the rotation's epoch at the rotation.
    for (&e, &seen) in &first_seen {
        if e == 0 {
            continue;
        }
        if e == 5 {
            assert_eq!(seen, 75 * MINUTE);
        } else {
            assert!(
                seen + 6 * MINUTE <= at(e) && at(e) <= seen + 7 * MINUTE,
                "epoch {e}: {seen} vs {}",
                at(e)
            );
        }
    }
    // The rotation at minute 75: epoch 3 ended then with no grace, 4 (announced for minute 80) was cancelled,
    // 5 started then; 6 followed 5 normally.
    let x = |e: u32| &sim.ep.tallies[&e];
    assert_eq!(x(3).end_ms, EPOCH_START_MS + 75 * MINUTE);
    assert_eq!(x(3).grace_ms, 0);
    assert!(x(3).row.ended_by_rotation);
    assert!(x(4).row.cancelled);
    assert_eq!(at(5), 75 * MINUTE);
    assert_eq!(at(6), 95 * MINUTE);
    // No two of four consecutive epochs share a key.
    let ids: Vec<(u32, [u8; 32])> = sim
        .ep
        .log
        .iter()
        .map(|a| {
            (
                a.signed.announcement.epoch,
                a.signed.announcement.issuer_key().unwrap().key_id(),
            )
        })
        .collect();
    for &(e, k) in &ids {
        for &(f, l) in &ids {
            if e != f && e.abs_diff(f) < 4 {
                assert_ne!(k, l, "epochs {e} and {f}");
            }
        }
    }
    // A member that got the rotation refuses epochs 3 and 4 and takes 5; its book held at most three.
    let t = 76 * MINUTE;
    sim.sync_member(0, t);
    let local = sim.local(0, t);
    let book = &sim.members[0].book;
    assert!(!book.accepts(3, local) && !book.accepts(4, local) && book.accepts(5, local));
    assert_eq!(book.current(local).map(EpochInfo::epoch), Some(5));
    assert!(sim.members[0].redeemer.accepted_epochs().all(|e| e >= 5));
    assert!(
        sim.ep.run.adoption_rejections.is_empty(),
        "{:?}",
        sim.ep.run.adoption_rejections
    );
}
