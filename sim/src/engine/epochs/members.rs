//! Members' side of epochs: adopting announcements, retiring epochs from wallets and spent sets, and taking the
//! token to spend.

use super::*;

impl Sim<'_> {
    /// Announcements reach member `i`: it adopts them and checks its refill (a new epoch may be signable: the
    /// planner stocks it, as the node's member does on a new group view).
    pub(in crate::engine) fn on_adopt(&mut self, t: Ms, i: usize) {
        if self.net.is_down(i, t) {
            return;
        }
        self.sync_member(i, t);
        self.maybe_refill(t, i);
    }

    /// Brings member `i`'s epochs up to date at `t`: retires what is over, adopts the announcements that reached it,
    /// and points its redeemer at the book's windows.
    pub(in crate::engine) fn sync_member(&mut self, i: usize, t: Ms) {
        let local = self.local(i, t);
        let mut changed = self.retire_member(i, local);
        let (group, admin) = (self.group, self.ep.admin);
        while let Some(a) = self.ep.log.get(self.members[i].adopted) {
            let k = self.members[i].adopted;
            let arrive = self
                .net
                .announcement_arrival(i, a.batch, a.t)
                .max(self.members[i].last_arrival);
            if arrive > t {
                break;
            }
            let me = &mut self.members[i];
            match me.book.adopt(a.signed.clone(), &group, &admin, local) {
                Ok(_) => changed = true,
                Err(
                    e @ (EpochError::ReusedKey { .. }
                    | EpochError::Overlap { .. }
                    | EpochError::Skipped { .. }),
                ) => {
                    let since = match me.deferred {
                        Some((kk, since)) if kk == k => since,
                        _ => {
                            me.deferred = Some((k, t));
                            self.ep.run.adoptions_deferred += 1;
                            t
                        }
                    };
                    if t.saturating_sub(since) < DEFER_MAX_MS {
                        break;
                    }
                    *self
                        .ep
                        .run
                        .adoption_rejections
                        .entry(e.label().to_owned())
                        .or_default() += 1;
                }
                Err(e) => {
                    *self
                        .ep
                        .run
                        .adoption_rejections
                        .entry(e.label().to_owned())
                        .or_default() += 1
                }
            }
            let me = &mut self.members[i];
            me.adopted += 1;
            me.last_arrival = arrive;
            me.deferred = None;
            if changed {
                // Retire at once what this one ends: a member catching up on several epochs then holds no more
                // than the protocol expects, and no key twice.
                self.retire_member(i, local);
            }
        }
        if changed {
            self.retire_member(i, local);
            let me = &mut self.members[i];
            me.redeemer.accept_book(&me.book, &BTreeSet::new());
            let held = me.book.iter().count() as u64;
            let run = &mut self.ep.run;
            run.max_epochs_held = run.max_epochs_held.max(held);
        }
    }

    /// Retires member `i`'s epochs that are over at its clock `local`: tokens no lender takes any more leave its
    /// wallet (counted as expired), retired epochs leave its spent set and its refill planner.
    pub(in crate::engine) fn retire_member(&mut self, i: usize, local: u64) -> bool {
        let me = &mut self.members[i];
        let gone = me.book.retire(local);
        let book = &me.book;
        if me.wallet.iter().any(|t| !book.live(t.token.input.epoch, local)) {
            let mut expired: BTreeMap<u32, u64> = BTreeMap::new();
            for token in me.wallet.iter() {
                let e = token.token.input.epoch;
                if !book.live(e, local) {
                    *expired.entry(e).or_default() += 1;
                }
            }
            me.wallet.retain_epochs(|e| book.live(e, local));
            me.expired_since_refill = true;
            for (e, count) in expired {
                if let Some(x) = self.ep.tallies.get_mut(&e) {
                    x.row.tokens_expired += count;
                }
            }
        }
        if gone.is_empty() && me.unpruned.is_empty() {
            return false;
        }
        for &e in &gone {
            let spent = me.spent.len_in(e) as u64;
            if let Some(x) = self.ep.tallies.get_mut(&e) {
                x.row.spent_at_retirement += spent;
                x.row.retired_by += 1;
            }
            me.unpruned.insert(e);
        }
        let Some(oldest) = me.book.iter().next().map(EpochInfo::epoch) else {
            return !gone.is_empty();
        };
        if me.unpruned.first().is_none_or(|&e| e >= oldest) {
            return !gone.is_empty();
        }
        // The spent set prunes by "every epoch before": an epoch retired while an older one is still in its grace
        // (a rotation) waits for that one.
        me.spent.prune_before(oldest);
        // A replica forgets the claims of retired epochs with them: no lender takes their tokens any more.
        me.claims.retain(|&(e, _), _| e >= oldest);
        let book = &me.book;
        me.planner.retain(|e| book.signable(e, local));
        let pruned: Vec<u32> = me.unpruned.range(..oldest).copied().collect();
        let mut left = Vec::new();
        for e in pruned {
            me.unpruned.remove(&e);
            if me.spent.len_in(e) > 0 {
                left.push(e);
            }
        }
        for e in left {
            self.violation(format!(
                "member {i} still holds spent-set entries of retired epoch {e}"
            ));
        }
        !gone.is_empty()
    }

    /// Why member `m` has no token to spend at its clock `local`: its quota in the current epoch is spent
    /// (`quota_exhausted`); it holds tokens but none spendable now (`no_spendable_token`); its wallet is empty
    /// because its tokens expired (`tokens_expired`, both epoch effects); or its wallet is empty and the refill has
    /// not arrived (`no_token`).
    pub(in crate::engine) fn no_token_cause(&self, m: usize, local: u64) -> &'static str {
        let me = &self.members[m];
        if let Some(current) = me.book.current(local)
            && self.issuer.has_epoch(current.epoch())
            && self.issuer.remaining(&me.id, current.epoch()) == 0
        {
            return "quota_exhausted";
        }
        if me.wallet.balance() > 0 {
            "no_spendable_token"
        } else if me.expired_since_refill {
            "tokens_expired"
        } else {
            "no_token"
        }
    }

    /// Takes the token member `m` spends next: the oldest spendable one at its clock. Then, as the node's member
    /// does after every take, it checks its refill.
    pub(in crate::engine) fn take_token(&mut self, m: usize, t: Ms) -> Option<WalletToken> {
        let local = self.local(m, t);
        let me = &mut self.members[m];
        let book = &me.book;
        let token = me.wallet.take(|e| book.spendable(e, local));
        self.maybe_refill(t, m);
        token
    }
}
