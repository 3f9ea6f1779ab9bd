//! Borrowing (docs/design.md §6), driven exactly as the node drives it: every borrow is one `protocol::borrow::BorrowRun`.
//! This file only moves data between that machine and the simulated world, and measures; it decides nothing (the
//! lender's side is [`super::lend`]).
//!
//! **Borrower** ([`Sim::drive`]). A request that no fresh lender serves (`protocol::routing::nobody_serves`: some
//! of the lenders the member holds a fresh attestation of advertise an upstream, none for it) is refused at once as `no_capable_lender`,
//! before any token is taken, as the node refuses it. Otherwise each step reads the member's own view (its peer
//! table, refreshed from gossip, with its cooldowns; only the lenders that serve the request's API and model, each
//! with the bucket of its best serving upstream; relays are the members with a fresh attestation) and asks the run
//! to `decide`:
//! - `TakeToken`: the oldest spendable token from the member's wallet, or `no_token`;
//! - `Send`: the token bound to the chosen lender under a fresh request id (or, when `same_request`, the previous
//!   request id and spend unchanged), through the chosen relay, with the scenario's timeout;
//! - `Finish`: the token goes back to the wallet if the run says so; the borrow is counted served or failed.
//!
//! Each lender's answer, or the timeout, becomes an `AttemptResult` passed to `record`, whose effects are carried
//! out: a cooldown in the member's table, or the token dropped. What a refusal means for the token, how long a
//! lender cools down (its `Retry-After` capped, or the default), the idempotent retry after a timeout and the attempt
//! budget are all the machine's (see its module doc).
//!
//! Failure causes in the report are the simulator's measurement: a `BorrowFailure` names the cause, and `Failed`
//! takes the label of the last attempt's outcome (`no_lender_headroom`, `token_already_spent`, a redeemer label,
//! `timeout`, …).

use lendmesh_protocol::PeerId;
use lendmesh_protocol::borrow::{AttemptResult, BorrowFailure, Decision, Effect, Finish, RouteView};
use lendmesh_protocol::refill::RefillPlanner;
use lendmesh_protocol::routing::Candidate;
use lendmesh_protocol::routing::{self as routing_rules, Offer};
use rand_core::RngCore;

use super::{Borrow, Ev, Sent, Sim};
use crate::member::Answer;
use crate::net::Ms;

/// The failure-cause label of a lender's answer (for the report; `Served` has none).
fn cause_of(answer: Answer) -> &'static str {
    match answer {
        Answer::Served => "served",
        Answer::NoHeadroom { .. } => "no_lender_headroom",
        Answer::TokenRejected("double_spend") => "token_already_spent",
        Answer::TokenRejected(label) => label,
        Answer::UpstreamRefused { .. } => "upstream_refused",
        Answer::UpstreamFailed => "upstream_failed",
        Answer::Busy => "lender_busy",
        Answer::NotServed => "lender_not_serving",
        Answer::NoQuorum => "no_quorum",
    }
}

/// What a lender's answer means to the borrow machine (as the node's borrower reads the sealed answer).
fn attempt_result(answer: Answer) -> AttemptResult {
    let refused = |retry_after_ms, delivered| AttemptResult::Refused {
        retry_after_ms,
        why: cause_of(answer).into(),
        delivered,
    };
    match answer {
        Answer::Served => AttemptResult::Served,
        Answer::NoHeadroom { retry_after_ms } => refused(Some(retry_after_ms), true),
        Answer::TokenRejected(label) => AttemptResult::TokenRejected { label: label.into() },
        Answer::UpstreamRefused { .. } => refused(None, true),
        Answer::UpstreamFailed => AttemptResult::Spent {
            why: cause_of(answer).into(),
        },
        // The node's `DeliveryFailure::LenderBusy`: the lender refused before opening the request.
        Answer::Busy => refused(None, false),
        // The node's `BorrowRefusal::NotServed`: refused before any claim, no `Retry-After`.
        Answer::NotServed => refused(None, true),
        // The node's `BorrowRefusal::NoQuorum`: refused before any work, the token unspent; another token has
        // other replicas.
        Answer::NoQuorum => AttemptResult::NoQuorum,
    }
}

/// How an adversary's spend was answered, for the attack tally.
pub(super) fn refusal_label(answer: Answer) -> String {
    match answer {
        Answer::Served => "served".into(),
        Answer::NoHeadroom { .. } => "refused:no_headroom".into(),
        Answer::TokenRejected(label) => format!("refused:{label}"),
        Answer::UpstreamRefused { status } => format!("refused:upstream_{status}"),
        Answer::UpstreamFailed => "refused:upstream_failed".into(),
        Answer::Busy => "refused:lender_busy".into(),
        Answer::NotServed => "refused:not_served".into(),
        Answer::NoQuorum => "refused:no_quorum".into(),
    }
}

impl Sim<'_> {
    /// Member `m` borrows for a request of kind `need` its own upstreams could not serve.
    pub(super) fn start_borrow(&mut self, t: Ms, m: usize, need: u16) {
        // The node's rule: a request that no fresh lender serves is refused at once, before any token is taken.
        if !self.begin_borrow(t, m, need, false) {
            self.refuse_unserved(need);
        }
    }

    /// A cover borrow of a request member `m` could serve itself (`protocol::exposure`); false (nothing started) when
    /// no fresh lender serves it — the member then serves it itself.
    pub(super) fn start_cover_borrow(&mut self, t: Ms, m: usize, need: u16) -> bool {
        self.begin_borrow(t, m, need, true)
    }

    /// Starts a borrow unless no fresh lender serves `need` (then false).
    fn begin_borrow(&mut self, t: Ms, m: usize, need: u16, cover: bool) -> bool {
        self.refresh_view(m, t);
        if self.nobody_serves(m, t, need) {
            return false;
        }
        self.note_borrow(t, m);
        self.mix.note_borrow(need, m);
        let mut digest = [0u8; 32];
        self.members[m].rng.fill_bytes(&mut digest);
        let id = self.next_borrow;
        self.next_borrow += 1;
        let mut b = Borrow::new(m, t, need, self.borrow_cfg, digest);
        b.cover = cover;
        self.borrows.insert(id, b);
        self.drive(t, id);
        true
    }

    /// Brings member `m`'s peer table up to what gossip brought it by `t`.
    fn refresh_view(&mut self, m: usize, t: Ms) {
        self.sync_member(m, t);
        for p in (0..self.n).filter(|&p| p != m) {
            self.refresh_one(m, p, t);
        }
    }

    /// Whether none of the lenders member `m` holds a fresh attestation of serves `need`, though some advertise an
    /// upstream (`protocol::routing::nobody_serves`, as the node's borrower asks it).
    fn nobody_serves(&self, m: usize, t: Ms, need: u16) -> bool {
        let local = self.local(m, t);
        let fresh: Vec<Offer<'_>> = self
            .offers(m, local)
            .into_iter()
            .filter(|o| o.attestation_age_ms <= self.params.max_age_ms)
            .collect();
        routing_rules::nobody_serves(&self.layout.needs[usize::from(need)], &fresh)
    }

    /// Member `m`'s lenders as its table holds them at its clock `local`: attested capabilities, age, cooldown.
    fn offers(&self, m: usize, local: u64) -> Vec<Offer<'_>> {
        let me = &self.members[m];
        (0..self.n)
            .filter(|&p| p != m)
            .filter_map(|p| {
                me.table[p].as_ref().map(|v| Offer {
                    peer: self.members[p].id,
                    capabilities: &v.capabilities,
                    attestation_age_ms: local.saturating_sub(v.issued_at_ms),
                    cooling_until_ms: me.cooling[p],
                })
            })
            .collect()
    }

    /// Counts an unserved request of a borrow started at `started`.
    pub(super) fn fail_cause(&mut self, cause: &str, started: Ms) {
        *self.out.failures.entry(cause.to_owned()).or_default() += 1;
        self.note_borrow_failed(started, cause);
    }

    /// Member `m`'s routing view at its clock `local` for a request of kind `need`: the lenders it holds an
    /// attestation of that serve it (`protocol::routing::candidates_for`: each with the bucket of its best serving
    /// upstream, with its cooldowns), and the members it can relay through (a fresh attestation stands for a live
    /// connection, whatever the lender serves).
    fn route_view(&self, m: usize, local: u64, need: u16) -> (Vec<Candidate>, Vec<PeerId>) {
        let offers = self.offers(m, local);
        let connected = offers
            .iter()
            .filter(|o| o.attestation_age_ms <= self.params.max_age_ms)
            .map(|o| o.peer)
            .collect();
        let capable = routing_rules::candidates_for(&self.layout.needs[usize::from(need)], &offers);
        (capable.candidates, connected)
    }

    /// Runs borrow `id`'s machine until it sends an attempt (then the answer or the timeout drives it on) or
    /// finishes.
    pub(super) fn drive(&mut self, t: Ms, id: u64) {
        let Some((m, need)) = self.borrows.get(&id).map(|b| (b.borrower, b.need)) else {
            return;
        };
        self.refresh_view(m, t);
        let local = self.local(m, t);
        let (candidates, connected) = self.route_view(m, local, need);
        let me = self.members[m].id;
        loop {
            let view = RouteView {
                me: &me,
                candidates: &candidates,
                connected: &connected,
                known: self.n - 1,
                now_ms: local,
            };
            let Some(b) = self.borrows.get_mut(&id) else {
                return;
            };
            match b.run.decide(&view, &mut self.members[m].rng) {
                Decision::TakeToken => {
                    let token = self.take_token(m, t);
                    let why = match token {
                        Some(_) => None,
                        // Empty or quota spent: `protocol::refill`'s rule, as in the node.
                        None => {
                            let me = &self.members[m];
                            let current = me.book.current(local).map(|c| c.epoch());
                            let quota = me
                                .book
                                .get(current.unwrap_or(0))
                                .and_then(|i| i.signed.announcement.roster.roster.entry(&me.id))
                                .map_or(0, |x| x.quota_per_epoch);
                            Some(me.planner.no_token(current, quota, me.book.next_start_ms(local)))
                        }
                    };
                    let Some(b) = self.borrows.get_mut(&id) else {
                        return;
                    };
                    match why {
                        None => {
                            b.token = token;
                            b.run.token_taken();
                            self.mix.kind(need).tokens_taken += 1;
                        }
                        Some(why) => b.run.no_token(why),
                    }
                }
                Decision::DropToken => b.token = None,
                Decision::Send {
                    lender,
                    relay,
                    same_request,
                } => return self.send_attempt(t, id, lender, relay, same_request),
                Decision::Finish(finish) => return self.finish_borrow(t, id, finish),
            }
        }
    }

    /// Binds the token to `lender` (or resends the previous request unchanged) and sends it through `relay`, with a
    /// timeout.
    fn send_attempt(
        &mut self,
        t: Ms,
        id: u64,
        lender_id: PeerId,
        relay_id: Option<PeerId>,
        same_request: bool,
    ) {
        let timeout = self.s.routing.timeout_ms as Ms;
        let Some(m) = self.borrows.get(&id).map(|b| b.borrower) else {
            return;
        };
        let local = self.local(m, t);
        let lender = self.index.get(&lender_id).copied();
        let relay = relay_id.and_then(|r| self.index.get(&r).copied());
        let Some(b) = self.borrows.get_mut(&id) else {
            return;
        };
        let resend = match &b.sent {
            Some(s) if same_request => Some((s.request_id, s.spend.clone())),
            _ => None,
        };
        let fresh = match (&b.token, resend) {
            (_, Some(again)) => Some(again),
            (Some(token), None) => {
                let mut request_id = [0u8; 16];
                self.members[m].rng.fill_bytes(&mut request_id);
                Some((request_id, token.spend(lender_id, b.digest, local)))
            }
            (None, None) => None,
        };
        let (Some(lender), Some((request_id, spend))) = (lender, fresh) else {
            // The machine never sends without a token, and only to a member's attestation.
            self.violation(format!(
                "borrow {id}: asked to send without a token or to a stranger"
            ));
            if let Some(b) = self.borrows.remove(&id) {
                self.fail_cause("internal", b.started);
            }
            return;
        };
        if !same_request && relay.is_none() {
            self.out.direct_borrows += 1;
        }
        b.attempt += 1;
        let (attempt, need) = (b.attempt, b.need);
        self.mix.kind(need).attempts += 1;
        b.sent = Some(Sent {
            request_id,
            spend: spend.clone(),
        });
        self.out.borrow_messages += 1;
        let hop = match relay {
            Some(r) => self
                .net
                .send(m, r, t)
                .and_then(|d1| self.net.send(r, lender, t + d1).map(|d2| d1 + d2)),
            None => self.net.send(m, lender, t),
        };
        if hop.is_some() {
            use lendmesh_protocol::limits::Surface;
            match relay {
                Some(r) => {
                    self.audit_limits(r, m, Surface::Relay, t);
                    self.audit_limits(lender, r, Surface::Borrow, t);
                }
                None => self.audit_limits(lender, m, Surface::Borrow, t),
            }
        }
        if let Some(d) = hop {
            self.at(
                t + d,
                Ev::AtLender {
                    borrow: id,
                    attempt,
                    lender,
                    relay,
                    request_id,
                    spend: Box::new(spend),
                    need,
                    truth: m,
                },
            );
        }
        self.at(t + timeout, Ev::Timeout { borrow: id, attempt });
    }

    /// Hands the outcome of borrow `id`'s attempt to its machine and carries out the effects.
    fn record(&mut self, t: Ms, id: u64, result: AttemptResult, cause: &'static str) {
        let Some(m) = self.borrows.get(&id).map(|b| b.borrower) else {
            return;
        };
        let local = self.local(m, t);
        let Some(b) = self.borrows.get_mut(&id) else {
            return;
        };
        if result != AttemptResult::Served {
            b.last_cause = cause;
        }
        let effects = b.run.record(result, local, &mut self.members[m].rng);
        for effect in effects {
            match effect {
                Effect::CoolDown { peer, until_ms } => {
                    if let Some(&p) = self.index.get(&peer) {
                        self.members[m].cooling[p] = Some(until_ms);
                    }
                }
                Effect::DropToken => {
                    if let Some(b) = self.borrows.get_mut(&id) {
                        b.token = None;
                    }
                }
                Effect::SetTokenAside => {
                    if let Some(token) = self.borrows.get_mut(&id).and_then(|b| b.token.take()) {
                        self.members[m].wallet.set_aside(token);
                    }
                }
                // Only `AttemptResult::RelayFailed` cools a relay, and this driver does not report it yet: a
                // relay that is down or partitioned still reads as an undelivered refusal here.
                Effect::CoolDownRelay { .. } => {}
            }
        }
    }

    /// Ends borrow `id` as its machine decided.
    fn finish_borrow(&mut self, t: Ms, id: u64, finish: Finish) {
        let Some(mut b) = self.borrows.remove(&id) else {
            return;
        };
        let m = b.borrower;
        if finish.return_token
            && let Some(token) = b.token.take()
        {
            self.members[m].wallet.put_back(token);
            self.mix.kind(b.need).tokens_returned += 1;
        }
        match finish.result {
            Ok(()) => {
                self.out.served_borrowed += 1;
                self.mix.kind(b.need).served_borrowed += 1;
                self.out.borrow_latency_ms.push(t - b.started);
                self.out.bins[(b.started / self.bin_ms) as usize].served += 1;
                let epoch = b.sent.map_or(0, |s| s.spend.token.input.epoch);
                self.note_borrow_served(b.started, epoch);
            }
            Err(_)
                if b.cover && {
                    let window_ms = self.window_ms;
                    let me = &mut self.members[m];
                    me.roll(t, window_ms);
                    me.serve_own(&self.layout.needs[usize::from(b.need)])
                } =>
            {
                // A cover borrow that failed: the member serves the request itself, as it could have.
                self.out.served_own += 1;
                self.mix.kind(b.need).served_own += 1;
                self.out.bins[(b.started / self.bin_ms) as usize].served += 1;
            }
            Err(failure) => {
                let cause = match failure {
                    BorrowFailure::NoLender { .. } => "no_lender_available",
                    BorrowFailure::LendersCooling { .. } => "lenders_cooling_down",
                    BorrowFailure::NoRelay { .. } => "no_relay",
                    BorrowFailure::NoToken(_) => self.no_token_cause(m, self.local(m, t)),
                    BorrowFailure::Timeout { .. } => "timeout",
                    BorrowFailure::Failed { .. } => b.last_cause,
                };
                self.mix.kind(b.need).failed += 1;
                self.fail_cause(cause, b.started);
            }
        }
    }

    pub(super) fn on_reply(&mut self, t: Ms, id: u64, attempt: u32, answer: Answer) {
        if self.borrows.get(&id).is_none_or(|b| b.attempt != attempt) {
            return;
        }
        self.record(t, id, attempt_result(answer), cause_of(answer));
        self.drive(t, id);
    }

    /// No answer in time: it may have reached the lender.
    pub(super) fn on_timeout(&mut self, t: Ms, id: u64, attempt: u32) {
        if self.borrows.get(&id).is_none_or(|b| b.attempt != attempt) {
            return;
        }
        if self.lender_still_claiming(id, attempt) {
            // The request reached a lender that is still claiming its token: the node's borrower, once the relay
            // accepted, waits for the first byte, so this one waits on too.
            let timeout = self.s.routing.timeout_ms as Ms;
            return self.at(t + timeout, Ev::Timeout { borrow: id, attempt });
        }
        // The simulated path has no acknowledgement: a timeout does not say which hop went silent.
        let ambiguous = AttemptResult::Ambiguous {
            why: "timeout".into(),
            relay_silent: false,
        };
        self.record(t, id, ambiguous, "timeout");
        self.drive(t, id);
    }

    /// A crash: memory is lost (peer table, cooldowns, lend cache, refill planner and its backoff), and the member's
    /// borrows in flight end; their tokens are lost, as in the node (a token leaves the store before it is bound
    /// and sent, and only a finished run returns it). Its lends waiting for a claim's verdict end unanswered.
    pub(super) fn on_crash(&mut self, i: usize) {
        self.drop_lends(i);
        let (group, key) = (self.group, self.att_key.clone());
        let me = &mut self.members[i];
        me.crash(group, key);
        me.planner = RefillPlanner::new(self.s.tokens.low_water, self.s.tokens.refill_batch);
        let pending: Vec<u64> = self
            .borrows
            .iter()
            .filter(|(_, b)| b.borrower == i)
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            if let Some(b) = self.borrows.remove(&id) {
                self.fail_cause("borrower_crashed", b.started);
            }
        }
    }
}
