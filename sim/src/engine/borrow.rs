//! Borrowing (DESIGN §6): token, lender and relay choice, the spend through the relay, the lender's checks,
//! refusals with cooldown and failover, timeouts with an idempotent retry, and the safety invariants on every serve.

use lendmesh_protocol::PeerId;
use lendmesh_protocol::routing::{self, Candidate, LenderQuery};
use lendmesh_protocol::token::{TokenHash, TokenSpend};
use rand_core::RngCore;

use super::{Answer, Borrow, Ev, Sim};
use crate::member::LenderRecord;
use crate::net::Ms;
use crate::scenario::PrivacyMode;

impl Sim<'_> {
    pub(super) fn start_borrow(&mut self, t: Ms, m: usize) {
        self.note_borrow(t, m);
        let Some(token) = self.take_token(m, t, None) else {
            let cause = self.no_token_cause(m, self.local(m, t));
            self.fail_cause(cause, t);
            return;
        };
        let mut digest = [0u8; 32];
        self.members[m].rng.fill_bytes(&mut digest);
        let id = self.next_borrow;
        self.next_borrow += 1;
        self.borrows.insert(
            id,
            Borrow {
                borrower: m,
                started: t,
                token,
                tried: Vec::new(),
                lender: m,
                relay: None,
                digest,
                spend: None,
                attempt: 0,
                retried: false,
                last_cause: "no_lender_available",
            },
        );
        self.route(t, id);
    }

    /// Counts an unserved request of a borrow started at `started`.
    pub(super) fn fail_cause(&mut self, cause: &str, started: Ms) {
        *self.out.failures.entry(cause.to_owned()).or_default() += 1;
        self.note_borrow_failed(started, cause);
    }

    /// Picks a lender and relay for borrow `id` and sends the spend, or gives up.
    pub(super) fn route(&mut self, t: Ms, id: u64) {
        let Some(b) = self.borrows.get(&id) else {
            return;
        };
        let m = b.borrower;
        if b.tried.len() >= self.s.routing.max_attempts {
            let cause = b.last_cause;
            return self.give_up(id, cause, true);
        }
        let epoch = b.token.token.input.epoch;
        self.sync_member(m, t);
        if !self.spendable(m, t, epoch) {
            // Its spend window closed during failover: spend a token of a live epoch instead.
            let Some(fresh) = self.take_token(m, t, None) else {
                let cause = self.no_token_cause(m, self.local(m, t));
                return self.give_up(id, cause, true);
            };
            if let Some(b) = self.borrows.get_mut(&id) {
                let old = std::mem::replace(&mut b.token, fresh);
                self.members[m].wallet.put_back(old);
            }
        }
        for p in 0..self.n {
            if p != m {
                self.refresh_one(m, p, t);
            }
        }
        let local = self.local(m, t);
        let me = &self.members[m];
        let candidates: Vec<Candidate> = (0..self.n)
            .filter(|&p| p != m)
            .filter_map(|p| {
                me.table[p].map(|v| Candidate {
                    peer: self.members[p].id,
                    headroom: v.headroom,
                    attestation_age_ms: local.saturating_sub(v.issued_at_ms),
                    cooling_until_ms: me.cooling[p],
                })
            })
            .collect();
        let connected: Vec<PeerId> = candidates
            .iter()
            .filter(|c| c.attestation_age_ms <= self.params.max_age_ms)
            .map(|c| c.peer)
            .collect();
        let Some(b) = self.borrows.get_mut(&id) else {
            return;
        };
        let my_id = self.members[m].id;
        let q = LenderQuery {
            me: &my_id,
            candidates: &candidates,
            tried: &b.tried,
            now_ms: local,
            sticky: None,
        };
        let rng = &mut self.members[m].rng;
        let Some(lender_id) = routing::choose_lender(self.s.routing.policy, &q, &self.params, rng) else {
            let cause = if b.tried.is_empty() {
                "no_lender_available"
            } else {
                b.last_cause
            };
            return self.give_up(id, cause, true);
        };
        let relay = routing::choose_relay(&my_id, &lender_id, &connected, rng)
            .and_then(|r| self.index.get(&r).copied());
        if relay.is_none() && self.s.privacy == PrivacyMode::Strict {
            return self.give_up(id, "no_relay", true);
        }
        let lender = self.index.get(&lender_id).copied().unwrap_or(m);
        b.tried.push(lender_id);
        b.lender = lender;
        b.relay = relay;
        b.retried = false;
        b.spend = Some(b.token.spend(lender_id, b.digest, local));
        if relay.is_none() {
            self.out.direct_borrows += 1;
        }
        self.send_spend(t, id);
    }

    /// Sends the borrow's current spend to its lender via its relay, with a timeout.
    pub(super) fn send_spend(&mut self, t: Ms, id: u64) {
        let timeout = self.s.routing.timeout_ms as Ms;
        let Some(b) = self.borrows.get_mut(&id) else {
            return;
        };
        b.attempt += 1;
        let (m, lender, relay, attempt) = (b.borrower, b.lender, b.relay, b.attempt);
        let Some(spend) = b.spend.clone() else {
            return;
        };
        self.out.borrow_messages += 1;
        let hop = match relay {
            Some(r) => self
                .net
                .send(m, r, t)
                .and_then(|d1| self.net.send(r, lender, t + d1).map(|d2| d1 + d2)),
            None => self.net.send(m, lender, t),
        };
        if let Some(d) = hop {
            self.at(
                t + d,
                Ev::AtLender {
                    borrow: id,
                    attempt,
                    lender,
                    relay,
                    spend: Box::new(spend),
                    truth: m,
                },
            );
        }
        self.at(t + timeout, Ev::Timeout { borrow: id, attempt });
    }

    /// The lender's side: idempotent retries, headroom, then the protocol's redeemer (checks + claim).
    pub(super) fn lend(&mut self, t: Ms, l: usize, spend: &TokenSpend, via: Option<usize>) -> Answer {
        let window_ms = self.window_ms;
        let local = self.local(l, t);
        let via = via.map(|r| self.members[r].id);
        self.sync_member(l, t);
        let lender = &mut self.members[l];
        lender.roll(t, window_ms);
        self.fresh_serve = false;
        if lender.answered.contains(&spend.request_digest)
            && lender
                .spent
                .contains(spend.token.input.epoch, &spend.token.hash())
        {
            return Answer::Served;
        }
        if lender.remaining() == 0 {
            let resets = crate::net::EPOCH_START_MS + (lender.window + 1) * window_ms;
            return Answer::NoHeadroom {
                retry_after_ms: resets.saturating_sub(local).max(1000),
            };
        }
        match lender
            .redeemer
            .redeem(spend, &spend.request_digest, local, &lender.spent)
        {
            Ok(redemption) => {
                lender.used += 1;
                lender.answered.insert(spend.request_digest);
                lender.records.push(LenderRecord {
                    at: t,
                    token_hash: redemption.token_hash,
                    request_digest: spend.request_digest,
                    via,
                });
                self.out.lender_load[l] += 1;
                self.fresh_serve = true;
                self.check_serve(l, &redemption.token_hash);
                self.note_spent_epochs(l);
                Answer::Served
            }
            Err(e) => Answer::Refused(e.label()),
        }
    }

    /// Safety invariants, checked on every serve.
    pub(super) fn check_serve(&mut self, l: usize, hash: &TokenHash) {
        let lender = &self.members[l];
        if lender.used > lender.capacity {
            self.violation(format!(
                "lender {l} served {} > capacity {}",
                lender.used, lender.capacity
            ));
        }
        if !self.served_by[l].insert(*hash) {
            self.violation(format!("lender {l} served token {hash} twice"));
        }
        if !self.genuine.contains(hash) {
            self.violation(format!(
                "lender {l} served token {hash} that the issuer never signed"
            ));
        }
    }

    pub(super) fn violation(&mut self, what: String) {
        let seed = self.out.seed;
        self.out.violations.push(format!("seed {seed}: {what}"));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_at_lender(
        &mut self,
        t: Ms,
        id: u64,
        attempt: u32,
        l: usize,
        relay: Option<usize>,
        spend: &TokenSpend,
        truth: usize,
    ) {
        let answer = self.lend(t, l, spend, relay);
        // The lender's records must never name the borrower.
        if let Some(rec) = self.members[l].records.last()
            && rec.request_digest == spend.request_digest
            && rec.via == Some(self.members[truth].id)
        {
            self.violation(format!("lender {l} recorded borrower {truth}"));
        }
        if answer == Answer::Served && self.fresh_serve {
            self.score_linkage(t, l, relay, spend, truth);
        }
        let hop = match relay {
            Some(r) => self
                .net
                .send(l, r, t)
                .and_then(|d1| self.net.send(r, truth, t + d1).map(|d2| d1 + d2)),
            None => self.net.send(l, truth, t),
        };
        if let Some(d) = hop {
            self.at(
                t + d,
                Ev::Reply {
                    borrow: id,
                    attempt,
                    answer,
                },
            );
        }
    }

    pub(super) fn on_reply(&mut self, t: Ms, id: u64, attempt: u32, answer: Answer) {
        let Some(b) = self.borrows.get_mut(&id) else {
            return;
        };
        if b.attempt != attempt {
            return;
        }
        let (m, l) = (b.borrower, b.lender);
        match answer {
            Answer::Served => {
                let b = self.borrows.remove(&id);
                if let Some(b) = b {
                    self.out.served_borrowed += 1;
                    self.out.borrow_latency_ms.push(t - b.started);
                    self.out.bins[(b.started / self.bin_ms) as usize].served += 1;
                    self.note_borrow_served(b.started, b.token.token.input.epoch);
                }
            }
            Answer::NoHeadroom { retry_after_ms } => {
                b.last_cause = "no_lender_headroom";
                let local = self.local(m, t);
                let default_ms = (self.s.routing.cooldown_s * 1000.0) as u64;
                let me = &mut self.members[m];
                me.cooling[l] = Some(routing::cooldown_until(
                    local,
                    Some(retry_after_ms.min(default_ms.max(1) * 20)),
                    default_ms,
                    &mut me.rng,
                ));
                self.route(t, id);
            }
            Answer::Refused(reason) => {
                b.last_cause = if reason == "double_spend" {
                    "token_already_spent"
                } else {
                    reason
                };
                let epoch = b.token.token.input.epoch;
                if reason == "double_spend" {
                    // The token is spent (an earlier attempt's claim whose answer was lost): a fresh one.
                    match self.take_token(m, t, None) {
                        Some(tok) => {
                            if let Some(b) = self.borrows.get_mut(&id) {
                                b.token = tok;
                            }
                        }
                        None => {
                            let cause = self.no_token_cause(m, self.local(m, t));
                            return self.give_up(id, cause, false);
                        }
                    }
                } else if matches!(reason, "epoch_closed" | "unknown_epoch" | "wrong_key_id") {
                    // This lender does not take the token's epoch (its clock or its book differs): try the next
                    // lender with a token of another epoch if there is one; the refused token stays unspent.
                    if let Some(tok) = self.take_token(m, t, Some(epoch))
                        && let Some(b) = self.borrows.get_mut(&id)
                    {
                        let old = std::mem::replace(&mut b.token, tok);
                        self.members[m].wallet.put_back(old);
                    }
                }
                self.route(t, id);
            }
        }
    }

    pub(super) fn on_timeout(&mut self, t: Ms, id: u64, attempt: u32) {
        let Some(b) = self.borrows.get_mut(&id) else {
            return;
        };
        if b.attempt != attempt {
            return;
        }
        b.last_cause = "timeout";
        if !b.retried {
            // Same request id and token at the same lender: it answers idempotently.
            b.retried = true;
            return self.send_spend(t, id);
        }
        // The token may have been claimed: a fresh token elsewhere.
        let m = b.borrower;
        match self.take_token(m, t, None) {
            Some(tok) => {
                if let Some(b) = self.borrows.get_mut(&id) {
                    b.token = tok;
                }
                self.route(t, id);
            }
            None => self.give_up(id, "timeout", false),
        }
    }

    pub(super) fn give_up(&mut self, id: u64, cause: &str, put_back: bool) {
        if let Some(b) = self.borrows.remove(&id) {
            if put_back {
                self.members[b.borrower].wallet.put_back(b.token);
            }
            self.fail_cause(cause, b.started);
        }
    }

    pub(super) fn on_crash(&mut self, t: Ms, i: usize) {
        let (group, key) = (self.group, self.att_key.clone());
        self.members[i].crash(group, key);
        let pending: Vec<u64> = self
            .borrows
            .iter()
            .filter(|(_, b)| b.borrower == i)
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            self.give_up(id, "borrower_crashed", true);
        }
        let _ = t;
    }
}
