//! Epochs (docs/design.md §8) in virtual time, on the protocol's own machines.
//!
//! The **admin** holds an [`EpochBook`] and the [`Issuer`](lendmesh_protocol::issuer::Issuer). When its book says
//! the next epoch is due ([`EpochBook::needs_next`], a third of an epoch before the newest ends), it schedules it
//! ([`epoch::next_schedule`]) with the next issuer key of a small pool, signs the announcement with its node key,
//! adopts it into its own book and lets its issuer sign for it. An immediate rotation re-announces the current epoch
//! ending now with no grace, cancels an announced next one (its end moved to now) and announces a new one starting
//! now, all under a new roster version. Retired epochs leave the issuer ([`Issuer::retire_before`]).
//!
//! **Members** get the announcements by gossip (in publication order, one gossip delay from the admin, held back by
//! partitions, taken on restart by a member that was down) and adopt them into their own book, checked by the
//! protocol ([`EpochBook::adopt`]). From the book, each member refills through a [`RefillPlanner`] over
//! [`EpochBook::refill_epochs`] (so it stocks an announced next epoch as soon as it adopts it, as the node does),
//! spends only [`EpochBook::spendable`] tokens, sets its redeemer's windows ([`Redeemer::accept_book`]) and retires
//! epochs ([`EpochBook::retire`]): tokens of epochs no lender takes any more leave its wallet, counted as expired, and
//! the retired epochs' entries leave its spent set.
//!
//! Without `[epochs]` in the scenario the run has one epoch, starting before and ending long after the run, under
//! the fixed test key and an unlimited quota: the time rules never bind and results are those of the single-epoch
//! simulator, number for number.
//!
//! [`Issuer::retire_before`]: lendmesh_protocol::issuer::Issuer::retire_before
//! [`RefillPlanner`]: lendmesh_protocol::refill::RefillPlanner
//! [`Redeemer::accept_book`]: lendmesh_protocol::redeemer::Redeemer::accept_book

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use lendmesh_protocol::blind_rsa::{KeySize, SecretKey};
use lendmesh_protocol::epoch::{self, EpochBook, EpochError, EpochInfo};
use lendmesh_protocol::group::{EpochAnnouncement, Roster, SignedEpochAnnouncement, SignedRoster};
use lendmesh_protocol::issuer::Issuer;
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::{GroupId, PeerId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::{Ev, Sim};
use crate::net::{EPOCH_START_MS, Ms};
use crate::outcome::{EpochRow, EpochRun, SwitchRow, Window};
use crate::scenario::Scenario;

/// Issuer keys in the pool: the fixed test key, then [`generated_keys`]. Epoch `e` uses key `e % POOL`, so any four
/// consecutive epochs have distinct keys — a member holds at most four at once (the previous one in its grace, the
/// current one, a next one a rotation cancels, and the one the rotation starts), and a book refuses a reused key.
const POOL: usize = 4;

/// Width of the windows compared before and after each switch (at most a quarter of an epoch).
pub(super) const SWITCH_WINDOW_MS: Ms = 5 * 60_000;

/// A member keeps retrying an announcement it cannot adopt yet for this long (the book's clock-skew allowance: its
/// clock is behind the admin's, so it still holds an epoch the admin already retired), then refuses it.
const DEFER_MAX_MS: Ms = 5 * 60_000;

/// Tokens of the rotated-out and the cancelled epoch are presented to every lender this long after a rotation,
/// when the rotation's announcements have reached everyone.
const PROBE_DELAY_MS: Ms = 60_000;

/// Failure causes that an epoch switch can produce (see [`EpochRun::epoch_failures`]).
pub(super) const EPOCH_CAUSES: [&str; 5] = [
    "epoch_closed",
    "unknown_epoch",
    "wrong_key_id",
    "no_spendable_token",
    "tokens_expired",
];

/// Three 2048-bit keys, generated once per process from a fixed seed (so every run, and every thread, gets the same
/// keys: results stay byte-identical).
fn generated_keys() -> Result<&'static [SecretKey], String> {
    static KEYS: OnceLock<Result<Vec<SecretKey>, String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(0x4C4D_4B45_5953);
        (1..POOL)
            .map(|_| SecretKey::generate(KeySize::Rsa2048, &mut rng).map_err(|e| e.to_string()))
            .collect()
    })
    .as_ref()
    .map(Vec::as_slice)
    .map_err(Clone::clone)
}

fn minutes(unix_ms: u64) -> f64 {
    (unix_ms as f64 - EPOCH_START_MS as f64) / 60_000.0
}

/// One announcement as the admin published it.
#[derive(Debug)]
pub(super) struct Announced {
    /// Virtual time published.
    pub(super) t: Ms,
    /// Announcements published together (a rotation's three) share a batch and arrive together.
    pub(super) batch: u64,
    pub(super) signed: SignedEpochAnnouncement,
}

/// One epoch's schedule (admin's clock, Unix ms) and running tallies.
#[derive(Debug)]
struct Tally {
    row: EpochRow,
    start_ms: u64,
    end_ms: u64,
    grace_ms: u64,
    issued: Vec<u64>,
    borrowing: Vec<bool>,
}

/// The admin's epoch state, the announcement log and the run's epoch measurements.
#[derive(Debug)]
pub(crate) struct EpochState {
    /// The scenario has `[epochs]` (otherwise nothing is measured and no epoch follows the first).
    pub(super) enabled: bool,
    admin_key: SigningKey,
    pub(super) admin: PeerId,
    /// The admin's own book.
    book: EpochBook,
    roster: Roster,
    signed_roster: SignedRoster,
    keys: Vec<SecretKey>,
    epoch_ms: u64,
    grace_ms: u64,
    rotate_at: Option<Ms>,
    rotated_at: Option<Ms>,
    /// How many announcements a member must have adopted to know of the rotation.
    rotation_known_at: Option<usize>,
    next_batch: u64,
    /// Per member, when the newest announcement batch reaches it (they arrive in order).
    due: Vec<Ms>,
    /// Every announcement, in publication order.
    pub(super) log: Vec<Announced>,
    tallies: BTreeMap<u32, Tally>,
    probes: Vec<(usize, WalletToken, &'static str)>,
    demand_at: Vec<Ms>,
    served_at: Vec<Ms>,
    borrow_at: Vec<Ms>,
    failed_at: Vec<Ms>,
    epoch_failed_at: Vec<Ms>,
    pub(super) run: EpochRun,
}

impl EpochState {
    /// The admin's state with the first epoch, the issuer signing for it, and the first announcement (every member
    /// gets it with its invite). The first epoch starts `pre_ms` before the run so that no member's clock is
    /// before it; without `[epochs]` it lasts the longest epoch the protocol allows.
    pub(super) fn new(
        s: &Scenario,
        group: GroupId,
        admin_key: SigningKey,
        roster: Roster,
        pre_ms: u64,
    ) -> Result<(EpochState, Issuer, SignedEpochAnnouncement), String> {
        let enabled = s.epochs.is_some();
        let mut keys = vec![lendmesh_protocol::test_keys::rsa_2048()];
        if enabled {
            keys.extend(generated_keys()?.iter().cloned());
        }
        let start = EPOCH_START_MS - pre_ms;
        let longest = start + epoch::MAX_EPOCH_MS;
        let (epoch_ms, grace_ms, rotate_at, end) = match &s.epochs {
            Some(e) => {
                let epoch_ms = (e.epoch_minutes * 60_000.0) as u64;
                let rotate = e.rotate_at_minutes.map(|m| (m * 60_000.0) as Ms);
                let grace = ((e.grace_minutes * 60_000.0) as u64).min(epoch_ms);
                (epoch_ms, grace, rotate, (EPOCH_START_MS + epoch_ms).min(longest))
            }
            None => (epoch::MAX_EPOCH_MS, 0, None, longest),
        };
        let admin = PeerId::from_public_key(&admin_key.verifying_key());
        let signed_roster = roster.clone().sign(&admin_key).map_err(|e| e.to_string())?;
        let first = EpochAnnouncement {
            group_id: group,
            epoch: 0,
            starts_at_ms: start,
            ends_at_ms: end,
            grace_ms,
            issuer_key_spki: keys[0].public_key().spki_der().to_vec(),
            roster: signed_roster.clone(),
        }
        .sign(&admin_key)
        .map_err(|e| e.to_string())?;
        let book = EpochBook::new(first.clone(), &group, &admin).map_err(|e| e.to_string())?;
        let mut issuer = Issuer::empty(roster.clone());
        issuer.add_epoch(0, keys[0].clone(), end);
        let n = roster.members.len();
        let mut state = EpochState {
            enabled,
            admin_key,
            admin,
            book,
            roster,
            signed_roster,
            keys,
            epoch_ms,
            grace_ms,
            rotate_at,
            rotated_at: None,
            rotation_known_at: None,
            next_batch: 1,
            due: vec![0; n],
            log: vec![Announced {
                t: 0,
                batch: 0,
                signed: first.clone(),
            }],
            tallies: BTreeMap::new(),
            probes: Vec::new(),
            demand_at: Vec::new(),
            served_at: Vec::new(),
            borrow_at: Vec::new(),
            failed_at: Vec::new(),
            epoch_failed_at: Vec::new(),
            run: EpochRun::default(),
        };
        state.tally_new(0, start, end, grace_ms, n);
        Ok((state, issuer, first))
    }

    fn tally_new(&mut self, epoch: u32, start_ms: u64, end_ms: u64, grace_ms: u64, n: usize) {
        self.tallies.insert(
            epoch,
            Tally {
                row: EpochRow {
                    epoch,
                    ..EpochRow::default()
                },
                start_ms,
                end_ms,
                grace_ms,
                issued: vec![0; n],
                borrowing: vec![false; n],
            },
        );
    }

    fn row(&mut self, epoch: Option<u32>) -> Option<&mut Tally> {
        if !self.enabled {
            return None;
        }
        epoch.and_then(|e| self.tallies.get_mut(&e))
    }

    /// The epoch current at admin time `now` (the true schedule).
    fn epoch_at(&self, now: u64) -> Option<u32> {
        self.tallies
            .values()
            .rev()
            .filter(|x| !x.row.cancelled)
            .find(|x| x.start_ms <= now)
            .filter(|x| now < x.end_ms)
            .map(|x| x.row.epoch)
    }
}

impl Sim<'_> {
    fn admin_now(&self, t: Ms) -> u64 {
        self.local(self.net.admin(), t)
    }

    // ---- the admin ---------------------------------------------------------------------------------------

    /// The admin's epoch work at `t`: a rotation that is due, retirements, the next announcement; then it sleeps
    /// until the next of those.
    pub(super) fn on_admin_epochs(&mut self, t: Ms) {
        let published = self.ep.log.len();
        if let Some(r) = self.ep.rotate_at
            && self.ep.rotated_at.is_none()
            && t >= r
        {
            self.rotate(t);
        }
        self.admin_retire(t);
        let now = self.admin_now(t);
        let mut guard = 0;
        while self.ep.keys.len() > 1 && self.ep.book.needs_next(now) && guard < epoch::MAX_EPOCHS {
            guard += 1;
            let batch = self.ep.next_batch;
            self.ep.next_batch += 1;
            if !self.announce_next(t, batch) {
                break;
            }
        }
        if let Some(batch) = self
            .ep
            .log
            .get(published..)
            .and_then(|l| l.last())
            .map(|a| a.batch)
        {
            // Each member takes the new announcements when they reach it.
            for i in 0..self.n {
                let due = self.net.announcement_arrival(i, batch, t).max(self.ep.due[i]);
                self.ep.due[i] = due;
                if due <= self.stop {
                    self.at(due, Ev::Adopt(i));
                }
            }
        }
        let mut wake: Vec<u64> = Vec::new();
        let book = &self.ep.book;
        let newest = book.newest().map(EpochInfo::epoch);
        if self.ep.keys.len() > 1
            && let Some(n) = book.newest()
        {
            let length = n.effective_end_ms.saturating_sub(n.starts_at_ms());
            wake.push(n.effective_end_ms.saturating_sub(epoch::announce_lead_ms(length)));
        }
        wake.extend(
            book.iter()
                .filter(|i| Some(i.epoch()) != newest)
                .map(EpochInfo::accepted_until_ms),
        );
        if let (Some(r), None) = (self.ep.rotate_at, self.ep.rotated_at) {
            wake.push(EPOCH_START_MS + r);
        }
        if let Some(w) = wake.into_iter().filter(|&w| w > now).min() {
            let vt = w - EPOCH_START_MS;
            if vt <= self.stop {
                self.at(vt, Ev::Epochs);
            }
        }
    }

    fn admin_retire(&mut self, t: Ms) {
        let now = self.admin_now(t);
        if self.ep.book.retire(now).is_empty() {
            return;
        }
        if let Some(oldest) = self.ep.book.iter().next().map(EpochInfo::epoch) {
            self.issuer.retire_before(oldest);
        }
    }

    /// Signs `ann`, adopts it into the admin's own book and publishes it.
    fn publish_epoch(&mut self, ann: EpochAnnouncement, t: Ms, batch: u64) -> bool {
        let now = self.admin_now(t);
        let epoch = ann.epoch;
        let signed = match ann.sign(&self.ep.admin_key) {
            Ok(s) => s,
            Err(e) => {
                self.violation(format!("the admin could not sign epoch {epoch}: {e}"));
                return false;
            }
        };
        if let Err(e) = self
            .ep
            .book
            .adopt(signed.clone(), &self.group, &self.ep.admin, now)
        {
            self.violation(format!("the admin's own book refused epoch {epoch}: {e}"));
            return false;
        }
        self.ep.log.push(Announced { t, batch, signed });
        true
    }

    /// Announces the epoch after the newest (a new key, the group's grace) and lets the issuer sign for it.
    fn announce_next(&mut self, t: Ms, batch: u64) -> bool {
        let now = self.admin_now(t);
        let Some(newest) = self.ep.book.newest() else {
            return false;
        };
        let (epoch, start, end) = epoch::next_schedule(newest, self.ep.epoch_ms, now);
        let key = self.ep.keys[epoch as usize % self.ep.keys.len()].clone();
        let ann = EpochAnnouncement {
            group_id: self.group,
            epoch,
            starts_at_ms: start,
            ends_at_ms: end,
            grace_ms: self.ep.grace_ms,
            issuer_key_spki: key.public_key().spki_der().to_vec(),
            roster: self.ep.signed_roster.clone(),
        };
        if !self.publish_epoch(ann, t, batch) {
            return false;
        }
        self.issuer.add_epoch(epoch, key, end);
        let (grace, n) = (self.ep.grace_ms, self.n);
        self.ep.tally_new(epoch, start, end, grace, n);
        true
    }

    /// An immediate rotation (`group remove --rotate`), as the protocol's rotation test does it: under a new roster
    /// version, the current epoch ends now with no grace, an announced next epoch is cancelled, and a new epoch
    /// starts now. One token of each dropped epoch is kept aside and presented to every lender a minute later.
    fn rotate(&mut self, t: Ms) {
        self.ep.rotated_at = Some(t);
        let now = self.admin_now(t);
        let Some(current) = self.ep.book.current(now).map(|i| i.signed.announcement.clone()) else {
            return;
        };
        let next = self.ep.book.next(now).map(|i| i.signed.announcement.clone());
        self.take_probes(t, current.epoch, next.as_ref().map(|a| a.epoch));
        self.ep.roster.version += 1;
        let signed_roster = match self.ep.roster.clone().sign(&self.ep.admin_key) {
            Ok(r) => r,
            Err(e) => return self.violation(format!("the admin could not sign its roster: {e}")),
        };
        self.ep.signed_roster = signed_roster.clone();
        self.issuer.set_roster(self.ep.roster.clone());
        let batch = self.ep.next_batch;
        self.ep.next_batch += 1;
        let ended = EpochAnnouncement {
            ends_at_ms: now,
            grace_ms: 0,
            roster: signed_roster.clone(),
            ..current
        };
        let epoch = ended.epoch;
        if !self.publish_epoch(ended, t, batch) {
            return;
        }
        self.issuer.set_until(epoch, now);
        if let Some(x) = self.ep.tallies.get_mut(&epoch) {
            x.end_ms = now;
            x.grace_ms = 0;
            x.row.ended_by_rotation = true;
        }
        if let Some(next) = next {
            let epoch = next.epoch;
            let cancelled = EpochAnnouncement {
                ends_at_ms: now,
                roster: signed_roster,
                ..next
            };
            if !self.publish_epoch(cancelled, t, batch) {
                return;
            }
            self.issuer.set_until(epoch, now);
            if let Some(x) = self.ep.tallies.get_mut(&epoch) {
                // Never taken by any lender.
                x.end_ms = now;
                x.grace_ms = 0;
                x.row.cancelled = true;
            }
        }
        self.announce_next(t, batch);
        self.ep.rotation_known_at = Some(self.ep.log.len());
    }

    fn take_probes(&mut self, t: Ms, rotated: u32, cancelled: Option<u32>) {
        for (epoch, kind) in [
            (Some(rotated), "rotated_out_token"),
            (cancelled, "cancelled_epoch_token"),
        ] {
            let Some(e) = epoch else { continue };
            let Some(owner) = (0..self.n).find(|&i| self.members[i].wallet.balance_in(e) > 0) else {
                continue;
            };
            if let Some(token) = self.members[owner].wallet.take(|x| x == e) {
                self.ep.probes.push((owner, token, kind));
            }
        }
        if !self.ep.probes.is_empty() && t + PROBE_DELAY_MS <= self.stop {
            self.at(t + PROBE_DELAY_MS, Ev::Probe);
        }
    }

    /// Presents the tokens kept aside at the rotation to every other member.
    pub(super) fn on_probe(&mut self, t: Ms) {
        for (owner, token, kind) in std::mem::take(&mut self.ep.probes) {
            let local = self.local(owner, t);
            for l in (0..self.n).filter(|&l| l != owner) {
                let mut digest = [0u8; 32];
                self.adv_rng.fill_bytes(&mut digest);
                let spend = token.spend(self.members[l].id, digest, local);
                let r = self.adv_request_id();
                self.send_adv_spend(t, owner, l, r, spend, kind);
            }
        }
    }

    /// A served adversarial spend of `kind`: a token of an epoch the rotation dropped may only be served by a
    /// lender the rotation has not reached yet (a partition holds it back); any other serve is a violation.
    /// Returns the outcome's label if it is not plain `served`.
    pub(super) fn check_probe_served(&mut self, lender: usize, kind: &str) -> Option<&'static str> {
        if !matches!(kind, "rotated_out_token" | "cancelled_epoch_token") {
            return None;
        }
        let knows = self
            .ep
            .rotation_known_at
            .is_some_and(|k| self.members[lender].adopted >= k);
        if knows {
            self.violation(format!(
                "lender {lender} served a {kind} after it adopted the rotation"
            ));
            return None;
        }
        Some("served_before_the_rotation_reached_it")
    }

    // ---- members -----------------------------------------------------------------------------------------
}

mod members;
mod tally;

#[cfg(test)]
mod tests;
