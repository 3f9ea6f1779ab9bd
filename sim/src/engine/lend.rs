//! The lender's side (docs/design.md §6 step 4), driven as the node drives it: `protocol::lend`'s ladder, the real
//! `Redeemer`, and — in scenarios with `[claims]` on — the token claimed at its replicas before any work
//! ([`super::claims`]).
//!
//! [`Sim::lend`]: `LendLadder::admit` by request id (a known id gets its cached answer again; one still being claimed
//! is joined), then the first of the lender's upstreams that serves the request (`protocol::capability`'s rule) and
//! passes `lend::headroom` (no reserve is modelled) — none serving it: `NotServed`, none with room: `NoHeadroom`, both
//! before any claim — the real `Redeemer` claiming into the member's spent set, and `lend::after_upstream` on what
//! the simulated upstream did. The upstream is capacity only: a request that got a unit of capacity is served
//! (status 200).
//!
//! Without claims a lend finishes at once. With them it waits for the replicas' answers: the unit of capacity is
//! taken before the claim (the node's upstream permit) and given back if the lender refuses, and the answer goes to
//! whoever asked — a borrow's attempt ([`Sim::answer_borrow`]) or an adversary's spend ([`Sim::answer_adversary`]) —
//! when the verdict is in.

use lendmesh_protocol::PeerId;
use lendmesh_protocol::capability::Need;
use lendmesh_protocol::lend::{self, Admission, UpstreamOutcome, UpstreamVerdict};
use lendmesh_protocol::redeemer::Redemption;
use lendmesh_protocol::token::{TokenHash, TokenSpend};

use super::Sim;
use super::borrow::refusal_label;
use crate::member::{Answer, LenderRecord};
use crate::net::Ms;

/// Units of capacity a lender keeps for itself (`lend::headroom`'s reserve; the node's `reserve` setting). The
/// simulator models no reserve.
const LEND_RESERVE: u64 = 0;

/// A borrow attempt as it reaches a lender.
#[derive(Clone, Copy, Debug)]
pub(super) struct AtLender {
    /// The borrow.
    pub(super) id: u64,
    /// Its attempt number.
    pub(super) attempt: u32,
    /// The lender.
    pub(super) lender: usize,
    /// The relay it came through.
    pub(super) relay: Option<usize>,
    /// The attempt's request id.
    pub(super) request_id: [u8; 16],
    /// The request's kind.
    pub(super) need: u16,
    /// The borrower (ground truth for the linkage attackers and the invariants only).
    pub(super) truth: usize,
}

/// What [`Sim::lend`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lent {
    /// Answered now.
    Now(Answer),
    /// Waiting for its claim's verdict (a new request, or a retry that joined one in flight): the caller attaches
    /// who asked ([`Sim::attach`]), and gets the answer when the verdict is in.
    Later(u64),
}

impl Sim<'_> {
    /// The lender's side, `protocol::lend`'s ladder for a request that needs `need`: a known request id gets its
    /// answer again; then an upstream that serves it with headroom, the redeemer's checks and claim, and what the
    /// upstream's answer means for the claim.
    pub(super) fn lend(
        &mut self,
        t: Ms,
        l: usize,
        request_id: [u8; 16],
        spend: &TokenSpend,
        via: Option<usize>,
        need: &Need,
    ) -> Lent {
        let window_ms = self.window_ms;
        let local = self.local(l, t);
        self.sync_member(l, t);
        self.fresh_serve = false;
        let lender = &mut self.members[l];
        lender.roll(t, window_ms);
        // 1. Without claims lends finish at once, so no request id is ever in flight to join; with claims a retry
        //    joins the lend still waiting for its verdict.
        match lender.ladder.admit(request_id, local) {
            Admission::Replay(answer) => return Lent::Now(answer),
            Admission::Join => {
                return match self.cl.joinable(l, request_id) {
                    Some(id) => Lent::Later(id),
                    None => Lent::Now(Answer::Busy),
                };
            }
            Admission::Busy => return Lent::Now(Answer::Busy),
            Admission::Proceed => {}
        }
        let lent = self.lend_new(t, l, request_id, spend, via, local, need);
        if let Lent::Now(answer) = lent {
            self.members[l].ladder.finish(request_id, answer, local);
        }
        lent
    }

    /// Steps 2–4 of the ladder for a new request id.
    #[allow(clippy::too_many_arguments)]
    fn lend_new(
        &mut self,
        t: Ms,
        l: usize,
        request_id: [u8; 16],
        spend: &TokenSpend,
        via: Option<usize>,
        local: u64,
        need: &Need,
    ) -> Lent {
        let window_ms = self.window_ms;
        let via = via.map(|r| self.members[r].id);
        let lender = &mut self.members[l];
        // 2. The first upstream that serves the request and has headroom beyond the reserve (the node's
        //    `acquire_lend`); none serving it, or none with room: refused before any claim.
        let resets = crate::net::EPOCH_START_MS + (lender.window + 1) * window_ms;
        let mut refusal = Answer::NotServed;
        let mut chosen = None;
        for (k, u) in lender
            .upstreams
            .iter()
            .enumerate()
            .filter(|(_, u)| u.serves(need))
        {
            match lend::headroom(u64::from(u.remaining()), LEND_RESERVE, resets, local) {
                Ok(()) => {
                    chosen = Some(k);
                    break;
                }
                Err(retry_after_ms) => refusal = Answer::NoHeadroom { retry_after_ms },
            }
        }
        let Some(k) = chosen else {
            return Lent::Now(refusal);
        };
        // 3. Redeem and claim before any work.
        let redemption = match lender
            .redeemer
            .redeem(spend, &spend.request_digest, local, &lender.spent)
        {
            Ok(r) => r,
            Err(e) => return Lent::Now(Answer::TokenRejected(e.label())),
        };
        if self.cl.mode.claims() {
            // 3b. One spend across the group: the unit is taken now (the node's permit) and the token claimed at its
            //     replicas; the answer waits for the verdict.
            lender.upstreams[k].used += 1;
            let window = lender.window;
            let lend = super::claims::Lend {
                lender: l,
                request_id,
                redemption,
                upstream: k,
                window,
                via,
                request_digest: spend.request_digest,
            };
            return Lent::Later(self.open_claim(t, lend));
        }
        Lent::Now(self.after_claim(t, l, k, &redemption, spend.request_digest, via, false))
    }

    /// Step 4, once the token is the lender's to spend: the simulated upstream (capacity only: status 200) and what
    /// its answer means for the claim. `reserved`: the unit of capacity was taken before the claim.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn after_claim(
        &mut self,
        t: Ms,
        l: usize,
        k: usize,
        redemption: &Redemption,
        request_digest: [u8; 32],
        via: Option<PeerId>,
        reserved: bool,
    ) -> Answer {
        match lend::after_upstream(UpstreamOutcome::Status(200)) {
            UpstreamVerdict::Served => {}
            UpstreamVerdict::ReleaseAndRefuse { status } => {
                // No work done: the token can be spent elsewhere.
                let lender = &self.members[l];
                if let Err(e) = lender.redeemer.release(redemption, &lender.spent) {
                    self.violation(format!("lender {l} could not release a claim: {e}"));
                }
                return Answer::UpstreamRefused { status };
            }
            UpstreamVerdict::Failed => return Answer::UpstreamFailed,
        }
        let lender = &mut self.members[l];
        let upstream = &mut lender.upstreams[k];
        if !reserved {
            upstream.used += 1;
        }
        upstream.lent_total += 1;
        lender.records.push(LenderRecord {
            at: t,
            token_hash: redemption.token_hash,
            request_digest,
            via,
        });
        self.out.lender_load[l] += 1;
        self.fresh_serve = true;
        self.check_serve(l, &redemption.token_hash);
        self.note_spent_epochs(l);
        Answer::Served
    }

    /// Safety invariants, checked on every serve.
    pub(super) fn check_serve(&mut self, l: usize, hash: &TokenHash) {
        let lender = &self.members[l];
        if let Some((k, u)) = lender
            .upstreams
            .iter()
            .enumerate()
            .find(|(_, u)| u.used > u.capacity)
        {
            let (used, capacity) = (u.used, u.capacity);
            self.violation(format!(
                "lender {l} served {used} > capacity {capacity} of its upstream {k}"
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
        // One serve per token in the whole group: what `strict` claims promise (counted in every mode).
        // (A multi-spender lying as a replica is outside what claims promise: its double serves are measured, not
        // violations.)
        let serves = self.cl.count_serve(hash);
        if serves > 1
            && self.cl.mode == crate::scenario::ClaimsMode::Strict
            && !self.s.adversaries.multi_spend_as_replica
        {
            self.violation(format!(
                "token {hash} served by {serves} lenders with strict claims (lender {l} the last)"
            ));
        }
    }

    pub(super) fn violation(&mut self, what: String) {
        let seed = self.out.seed;
        self.out.violations.push(format!("seed {seed}: {what}"));
    }

    /// A request lender `l` serves (what an adversary's spend presents): one of its first upstream's API, naming no
    /// model.
    pub(super) fn probe_need(&self, l: usize) -> Need {
        let api = self.members[l].upstreams.first().map(|u| u.api);
        crate::scenario::RequestKind {
            api: api.unwrap_or(lendmesh_protocol::capability::Api::Any),
            model: None,
            weight: 1.0,
        }
        .need()
    }

    pub(super) fn on_at_lender(&mut self, t: Ms, at: &AtLender, spend: &TokenSpend) {
        let wanted = self.layout.needs[usize::from(at.need)].clone();
        match self.lend(t, at.lender, at.request_id, spend, at.relay, &wanted) {
            Lent::Now(answer) => self.answer_borrow(t, at, spend, answer),
            Lent::Later(lend) => {
                let asker = super::claims::Asker::Borrow {
                    at: *at,
                    spend: Box::new(spend.clone()),
                };
                self.attach(t, lend, asker);
            }
        }
    }

    /// Lender `at.lender`'s answer to a borrow attempt: checked, scored by the linkage attackers when it is a fresh
    /// serve ([`Sim::fresh_serve`]), and sent back the way it came.
    pub(super) fn answer_borrow(&mut self, t: Ms, at: &AtLender, spend: &TokenSpend, answer: Answer) {
        let AtLender {
            id,
            attempt,
            lender: l,
            relay,
            truth,
            ..
        } = *at;
        if answer == Answer::NotServed {
            // The borrower routed it to a lender none of whose upstreams serves it.
            self.mix.misrouted += 1;
        }
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
                super::Ev::Reply {
                    borrow: id,
                    attempt,
                    answer,
                },
            );
        }
    }

    /// Lender `l`'s answer to an adversary's spend of `kind`, tallied.
    pub(super) fn answer_adversary(&mut self, l: usize, kind: &'static str, answer: Answer) {
        let late = match answer {
            Answer::Served if self.fresh_serve => self.check_probe_served(l, kind),
            _ => None,
        };
        let label = match answer {
            Answer::Served if !self.fresh_serve => "answered_idempotently_no_second_serve".to_owned(),
            Answer::Served => late.unwrap_or("served").to_owned(),
            refused => refusal_label(refused),
        };
        self.out.attacks.outcome(kind, &label);
    }
}
