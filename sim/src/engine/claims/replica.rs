//! The replica's side of a claim (the node's `roles::replica`, rules from `protocol::claims`), and what a replica
//! could learn from the claims it gets.
//!
//! A replica votes only on a claim of an epoch its own book accepts, computed over the roster frozen in that epoch's
//! announcement as its book holds it, sent by the lender the claim names, for a token it is a replica of
//! (`claims::check_claim`). Then the first claim of a token is stored in its durable store (`Member::claims`,
//! surviving crashes) and answered `Granted` — again to the same claim, `Denied` to any other; a `Release` of the
//! claim it holds forgets it. A multi-spender with `multi_spend_as_replica` lies: it grants every claim of its own
//! tokens. (The node's restore point — refusing epochs up to a mark newer than its store — guards
//! against a store restored from a backup, which the simulator does not model.)
//!
//! **What a replica learns.** A claim carries the token's hash (blinded at issuance: the admin cannot link it, and
//! neither can anyone else), its epoch, the claiming lender, the borrower's random request id and the roster's
//! digest, and it comes from the lender's connection. Two attackers sit at the token's first replica other than the
//! lender and name the borrower of every honest borrow's claim they see, scored like the others
//! ([`super::super::linkage`]):
//! - `replica`: from the claim alone — it rules out the lender and itself (a claim of its own token it recognises,
//!   counted apart, not scored) and names one of the rest;
//! - `replica-headroom`: the claim's lender and time together with the headroom buckets the replica holds as a
//!   member, ranked as the `lender` attacker ranks them. A claim tells the replica *when and where* a borrow
//!   happened, so it can run the lender's own attack; the gap to `replica` is what the buckets leak, not the claim.

use lendmesh_protocol::PeerId;
use lendmesh_protocol::claims::{self, ClaimRefusal};
use lendmesh_protocol::routing;
use lendmesh_protocol::wire::{ClaimRequest, ClaimResponse};

use super::super::{Ev, Sim, linkage};
use crate::member::Role;
use crate::net::Ms;

impl Sim<'_> {
    /// Replica `r`'s answer to `request` from lender `lender`, recorded in its store before it is given.
    pub(in crate::engine) fn replica_answer(
        &mut self,
        t: Ms,
        r: usize,
        lender: usize,
        request: &ClaimRequest,
    ) -> ClaimResponse {
        self.sync_member(r, t);
        let local = self.local(r, t);
        let claim = *request.claim();
        let me = &self.members[r];
        let roster: Option<Vec<PeerId>> = me
            .book
            .get(claim.epoch)
            .filter(|_| me.book.accepts(claim.epoch, local))
            .map(|i| i.frozen_roster());
        let checked = match roster {
            None => Err(ClaimRefusal::UnknownEpoch),
            Some(roster) => claims::check_claim(
                &claim,
                &self.members[lender].id,
                &me.id,
                &roster,
                self.cl.replicas(),
            ),
        };
        if let Err(why) = checked {
            *self.cl.run.refusals.entry(why.label().to_owned()).or_default() += 1;
            return ClaimResponse::Refused(why);
        }
        let (key, id) = ((claim.epoch, claim.token_hash), claim.id());
        let lies = self.s.adversaries.multi_spend_as_replica
            && self.members[r].role == Role::MultiSpender
            && self.cl.adversary_tokens.contains(&claim.token_hash);
        let store = &mut self.members[r].claims;
        match request {
            ClaimRequest::Release(_) => {
                if store.get(&key) == Some(&id) {
                    store.remove(&key);
                }
                ClaimResponse::Released
            }
            ClaimRequest::Claim(_) => {
                // A lying replica (the multi-spender, for its own tokens) grants every claim.
                if *store.entry(key).or_insert(id) == id || lies {
                    ClaimResponse::Granted
                } else {
                    ClaimResponse::Denied
                }
            }
        }
    }

    /// A claim or a release reached a replica (up: the network delivers nothing to a member that is down). Its answer
    /// goes back; one lost on the way fails the lender's request at once, and the lender asks again.
    pub(in crate::engine) fn on_claim_at_replica(
        &mut self,
        t: Ms,
        lender: usize,
        ask: &super::Ask,
        request: &ClaimRequest,
    ) {
        let r = ask.replica;
        let claim = request.claim();
        let seen = self.members[r].claims.get(&(claim.epoch, claim.token_hash)) == Some(&claim.id());
        let answer = self.replica_answer(t, r, lender, request);
        let release = matches!(request, ClaimRequest::Release(_));
        if release {
            self.release_reached(ask.lend, r);
        } else if let Some(truth) = ask.truth
            && !seen
        {
            // Scored once per claim, when the replica first sees it (not again when the lender asks again).
            self.score_replica(t, r, lender, truth);
        }
        match self.net.send(r, lender, t) {
            Some(d) => self.at(
                t + d,
                Ev::ClaimAnswer {
                    lend: ask.lend,
                    replica: r,
                    answer,
                    release,
                },
            ),
            None => self.ask_failed(t, ask, *request),
        }
    }

    /// Replica `r` names the borrower of a claim from `lender` that reached it at `t` (see the module doc).
    fn score_replica(&mut self, t: Ms, r: usize, lender: usize, truth: usize) {
        if truth == r {
            self.cl.run.own_claims_seen += 1;
            return;
        }
        let plausible: Vec<usize> = (0..self.n).filter(|&p| p != r && p != lender).collect();
        if plausible.is_empty() {
            return;
        }
        let guess = plausible[routing::uniform_index(&mut self.cl.rng, plausible.len())];
        self.out
            .linkage
            .entry("replica".into())
            .or_default()
            .record(guess == truth, plausible.len());
        let keyed = self.headroom_keys(r, &[lender], t);
        let bucketed =
            linkage::guess_min_in(&mut self.cl.rng, keyed.iter().map(|&(p, b, _)| (p, b)).collect());
        self.out
            .linkage
            .entry("replica-headroom".into())
            .or_default()
            .record(bucketed == Some(truth), plausible.len());
    }
}
