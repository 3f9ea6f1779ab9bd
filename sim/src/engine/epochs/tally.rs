//! What the epoch report counts: demand, borrows and issuance per epoch and around each switch.

use super::*;

impl Sim<'_> {
    /// After a serve: how many epochs the lender's spent set holds entries for.
    pub(in crate::engine) fn note_spent_epochs(&mut self, l: usize) {
        if !self.ep.enabled {
            return;
        }
        let me = &self.members[l];
        let held = me
            .book
            .iter()
            .map(EpochInfo::epoch)
            .chain(me.unpruned.iter().copied())
            .filter(|&e| me.spent.len_in(e) > 0)
            .count() as u64;
        let run = &mut self.ep.run;
        run.max_spent_epochs = run.max_spent_epochs.max(held);
    }

    // ---- measurements ------------------------------------------------------------------------------------

    pub(in crate::engine) fn note_demand(&mut self, t: Ms, served_own: bool) {
        if self.ep.enabled {
            self.ep.demand_at.push(t);
            if served_own {
                self.ep.served_at.push(t);
            }
        }
    }

    pub(in crate::engine) fn note_borrow(&mut self, t: Ms, m: usize) {
        let e = self.ep.epoch_at(self.admin_now(t));
        if let Some(x) = self.ep.row(e) {
            x.row.borrows += 1;
            x.borrowing[m] = true;
        }
        if self.ep.enabled {
            self.ep.borrow_at.push(t);
        }
    }

    pub(in crate::engine) fn note_borrow_served(&mut self, started: Ms, token_epoch: u32) {
        let e = self.ep.epoch_at(self.admin_now(started));
        if let Some(x) = self.ep.row(e) {
            x.row.borrows_served += 1;
        }
        if let Some(x) = self.ep.row(Some(token_epoch)) {
            x.row.served_with_its_tokens += 1;
        }
        if self.ep.enabled {
            self.ep.served_at.push(started);
        }
    }

    pub(in crate::engine) fn note_borrow_failed(&mut self, started: Ms, cause: &str) {
        let e = self.ep.epoch_at(self.admin_now(started));
        if let Some(x) = self.ep.row(e) {
            x.row.borrows_failed += 1;
        }
        if self.ep.enabled {
            self.ep.failed_at.push(started);
            if EPOCH_CAUSES.contains(&cause) {
                self.ep.run.epoch_failures += 1;
                self.ep.epoch_failed_at.push(started);
            }
        }
    }

    pub(in crate::engine) fn note_issued(&mut self, epoch: u32, m: usize, count: u64) {
        if let Some(x) = self.ep.row(Some(epoch)) {
            x.row.tokens_issued += count;
            x.issued[m] += count;
        }
    }

    /// The run's epoch rows and switches (scenarios with `[epochs]`).
    pub(in crate::engine) fn finish_epochs(&mut self) -> Option<EpochRun> {
        if !self.ep.enabled {
            return None;
        }
        let pool = self.pool();
        let oracle_at = crate::baseline::oracle_served_at(&self.trace, &pool, &self.net, self.window_ms);
        let ep = &mut self.ep;
        ep.served_at.sort_unstable();
        ep.failed_at.sort_unstable();
        ep.epoch_failed_at.sort_unstable();
        let mut run = std::mem::take(&mut ep.run);
        for x in ep.tallies.values() {
            let mut row = x.row.clone();
            row.start_min = minutes(x.start_ms);
            row.end_min = minutes(x.end_ms);
            row.accepted_until_min = minutes(x.end_ms + x.grace_ms);
            row.members_refilled = x.issued.iter().filter(|&&k| k > 0).count() as u64;
            row.max_issued_per_member = x.issued.iter().copied().max().unwrap_or(0);
            row.members_borrowing = x.borrowing.iter().filter(|&&b| b).count() as u64;
            row.borrowing_not_refilled = x
                .borrowing
                .iter()
                .zip(&x.issued)
                .filter(|&(&b, &k)| b && k == 0)
                .count() as u64;
            run.rows.push(row);
        }
        let window = SWITCH_WINDOW_MS.min(ep.epoch_ms / 4).max(1);
        run.switch_window_minutes = window as f64 / 60_000.0;
        let count = |list: &[Ms], a: Ms, b: Ms| {
            (list.partition_point(|&x| x < b) - list.partition_point(|&x| x < a)) as u64
        };
        let window_at = |a: Ms, b: Ms| Window {
            demand: count(&ep.demand_at, a, b),
            served: count(&ep.served_at, a, b),
            oracle: count(&oracle_at, a, b),
            borrows: count(&ep.borrow_at, a, b),
            borrows_failed: count(&ep.failed_at, a, b),
            epoch_failures: count(&ep.epoch_failed_at, a, b),
        };
        let first = ep.tallies.keys().next().copied();
        for x in ep.tallies.values() {
            if x.row.cancelled || Some(x.row.epoch) == first || x.start_ms <= EPOCH_START_MS {
                continue;
            }
            let at = x.start_ms - EPOCH_START_MS;
            if at >= self.end {
                continue;
            }
            run.switches.push(SwitchRow {
                epoch: x.row.epoch,
                at_min: at as f64 / 60_000.0,
                rotation: ep.rotated_at == Some(at),
                before: window_at(at.saturating_sub(window), at),
                after: window_at(at, at + window),
            });
        }
        Some(run)
    }
}
