//! One spend per token across the group (docs/design.md §7) in virtual time, on `protocol::claims`: the lender's
//! side here, the replica's in [`replica`].
//!
//! A lender that redeemed a token (scenarios whose `[claims]` mode is `strict` or `lenient`) takes the unit of
//! capacity, computes the token's replica set over the roster frozen in the token's epoch announcement as its own
//! book holds it (`claims::replica_set`), and sends a `Claim` to every replica over the simulated network (its own
//! share it answers itself, as the node does). Each answer is recorded in a `claims::Tally`; as soon as its
//! `verdict` is no longer `Pending` — or when the per-replica timeout (`[claims] timeout_ms`, the node's 5 s) ends
//! every ask still open — the lender acts as the node's `roles::claimer` does:
//! - `Serve`: the upstream (step 4 of the ladder) and the answer;
//! - `SpentElsewhere`, `SplitVote`: refused as `spent_elsewhere` / `split_vote`, the token stays spent;
//! - `Unreachable`: `lenient` serves anyway (counted); `strict` gives the unit back, releases its own spent-set entry
//!   and the grants it got (`ClaimRequest::Release`, each answered within the timeout), then refuses `NoQuorum`.
//!
//! Each ask is the node's `Claimer::ask`: a request that fails at once — here, a message lost on the way there or
//! back — is asked again after 100 ms, at most three times within the timeout (a replica answers the same claim the
//! same way again); a replica that is down or cut off answers nothing, and costs the whole timeout unless the others
//! settle the verdict first. A lender that crashes while it waits forgets the lend (the token stays in its durable
//! spent set, and in the replicas' stores). Retries of the same request id join the lend (`LendLadder`'s `Join`) and
//! get its answer, and a borrower whose lender is still claiming keeps waiting (the node's borrower waits for the
//! first byte once the relay accepted).
//!
//! Measured ([`ClaimsRun`]): verdicts of honest and adversarial claims, the borrows whose claim reached a majority,
//! the time to a verdict, releases and the ones lost, the replicas' refusals, and — in every mode, `off` included —
//! tokens served by more than one lender anywhere in the group. With `strict`, one is a violation.

use std::collections::{BTreeMap, HashMap, HashSet};

use lendmesh_protocol::PeerId;
use lendmesh_protocol::claims::{self, Claim, Tally, Verdict};
use lendmesh_protocol::redeemer::Redemption;
use lendmesh_protocol::token::{TokenHash, TokenSpend};
use lendmesh_protocol::wire::{ClaimRequest, ClaimResponse};
use rand_chacha::ChaCha8Rng;

use super::lend::AtLender;
use super::{Ev, Sim};
use crate::member::Answer;
use crate::net::Ms;
use crate::outcome::{ClaimCounts, ClaimsRun};
use crate::scenario::{Claims, ClaimsMode, Scenario};

mod replica;
#[cfg(test)]
mod tests;

/// Requests per replica and claim (or release) at most, within the timeout (the node's `roles::claimer`).
const CLAIM_ATTEMPTS: u32 = 3;
/// Pause before asking a replica again after a request failed at once (the node's `roles::claimer`).
const CLAIM_RETRY_PAUSE_MS: Ms = 100;

/// One request of a lend's claim or release to one replica, as it travels.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ask {
    /// The lend.
    pub(super) lend: u64,
    /// The replica.
    pub(super) replica: usize,
    /// 1, then the retries.
    pub(super) attempt: u32,
    /// The borrower, when this replica is where the linkage attackers sit (ground truth for scoring only).
    pub(super) truth: Option<usize>,
}

/// A redeemed lend, as the lender holds it while its claim is out.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lend {
    /// The lender.
    pub(super) lender: usize,
    /// The borrower's request id.
    pub(super) request_id: [u8; 16],
    /// The token, redeemed into the lender's spent set.
    pub(super) redemption: Redemption,
    /// The upstream whose unit of capacity it took.
    pub(super) upstream: usize,
    /// The lender's capacity window then.
    pub(super) window: u64,
    /// The relay the request came through.
    pub(super) via: Option<PeerId>,
    /// The request's digest.
    pub(super) request_digest: [u8; 32],
}

/// Who waits for a lend's answer.
#[derive(Clone, Debug)]
pub(super) enum Asker {
    /// A borrow's attempt.
    Borrow {
        /// The attempt.
        at: AtLender,
        /// Its spend.
        spend: Box<TokenSpend>,
    },
    /// An adversary's spend.
    Adversary {
        /// Its kind, for the attack tally.
        kind: &'static str,
    },
}

impl Asker {
    /// The borrower, for an honest borrow (ground truth for the replica linkage attackers, which score borrows as
    /// the other attackers do; the lender's logic never reads it).
    fn borrower(&self) -> Option<usize> {
        match self {
            Asker::Borrow { at, .. } => Some(at.truth),
            Asker::Adversary { .. } => None,
        }
    }
}

/// Where a lend's claim is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the replicas' votes.
    Claiming,
    /// `strict` without a majority: waiting for the releases to be answered.
    Releasing {
        /// Releases not answered yet.
        outstanding: usize,
    },
}

impl Stage {
    fn timer(self) -> u8 {
        match self {
            Stage::Claiming => 0,
            Stage::Releasing { .. } => 1,
        }
    }
}

/// A lend waiting for its claim.
#[derive(Debug)]
struct Pending {
    lend: Lend,
    claim: Claim,
    tally: Tally,
    started: Ms,
    stage: Stage,
    /// The end of the current stage's asks.
    deadline: Ms,
    /// The first asked; the others are retries that joined.
    askers: Vec<Asker>,
    /// Releases sent, and whether each reached its replica.
    released: Vec<(usize, bool)>,
}

/// Claims in one run.
#[derive(Debug)]
pub(super) struct ClaimState {
    /// `[claims]`, if the scenario has the table.
    cfg: Option<Claims>,
    /// What lenders do (`off` without the table).
    pub(super) mode: ClaimsMode,
    pending: BTreeMap<u64, Pending>,
    next: u64,
    /// `(lender, request id)` → its pending lend, for the retries that join it.
    by_request: HashMap<(usize, [u8; 16]), u64>,
    /// Serves of each token, all lenders.
    serves: HashMap<TokenHash, u32>,
    /// Tokens adversaries presented.
    pub(super) adversary_tokens: HashSet<TokenHash>,
    /// Tokens multi-spenders presented, in order.
    pub(super) multi_tokens: Vec<TokenHash>,
    /// Honest borrows whose token was claimed: whether some claim of it reached a majority.
    borrows: BTreeMap<u64, bool>,
    /// Honest tokens some claim of which found no majority.
    no_majority: HashSet<TokenHash>,
    /// The replica linkage attackers' guesses (their own stream: claims move no other random choice).
    rng: ChaCha8Rng,
    run: ClaimsRun,
}

impl ClaimState {
    pub(super) fn new(s: &Scenario, rng: ChaCha8Rng) -> Self {
        ClaimState {
            cfg: s.claims.clone(),
            mode: s.claims.as_ref().map_or(ClaimsMode::Off, |c| c.mode),
            pending: BTreeMap::new(),
            next: 0,
            by_request: HashMap::new(),
            serves: HashMap::new(),
            adversary_tokens: HashSet::new(),
            multi_tokens: Vec::new(),
            borrows: BTreeMap::new(),
            no_majority: HashSet::new(),
            rng,
            run: ClaimsRun::default(),
        }
    }

    /// The lend still waiting for its verdict under `request_id` at lender `l`.
    pub(super) fn joinable(&self, l: usize, request_id: [u8; 16]) -> Option<u64> {
        self.by_request.get(&(l, request_id)).copied()
    }

    /// Counts a serve of `hash`; returns its serves so far.
    pub(super) fn count_serve(&mut self, hash: &TokenHash) -> u32 {
        let n = self.serves.entry(*hash).or_default();
        *n += 1;
        *n
    }

    fn replicas(&self) -> usize {
        self.cfg.as_ref().map_or(claims::DEFAULT_REPLICAS, |c| c.replicas)
    }

    fn timeout_ms(&self) -> Ms {
        self.cfg.as_ref().map_or(5_000, |c| c.timeout_ms as Ms)
    }
}

impl Sim<'_> {
    /// Opens the claim of a redeemed lend (the messages leave when the first asker is attached); returns its id.
    pub(super) fn open_claim(&mut self, t: Ms, lend: Lend) -> u64 {
        let l = lend.lender;
        let epoch = lend.redemption.epoch;
        // Redeemed, so the epoch is accepted and its announcement held; a missing one is no quorum, as in the node.
        let roster: Vec<PeerId> = self.members[l]
            .book
            .get(epoch)
            .map(|i| i.frozen_roster())
            .unwrap_or_default();
        let claim = Claim {
            token_hash: lend.redemption.token_hash,
            epoch,
            lender: self.members[l].id,
            request_id: lend.request_id,
            roster: claims::roster_digest(&roster),
        };
        let replicas = if roster.is_empty() {
            Vec::new()
        } else {
            claims::replica_set(&claim.token_hash, &roster, self.cl.replicas())
        };
        let id = self.cl.next;
        self.cl.next += 1;
        self.cl.by_request.insert((l, lend.request_id), id);
        self.cl.pending.insert(
            id,
            Pending {
                lend,
                claim,
                tally: Tally::new(replicas),
                started: t,
                stage: Stage::Claiming,
                deadline: t + self.cl.timeout_ms(),
                askers: Vec::new(),
                released: Vec::new(),
            },
        );
        id
    }

    /// `asker` waits for lend `id`'s answer; the first one sends the claim.
    pub(super) fn attach(&mut self, t: Ms, id: u64, asker: Asker) {
        let Some(p) = self.cl.pending.get_mut(&id) else {
            return;
        };
        let first = p.askers.is_empty();
        if first && let Asker::Borrow { at, .. } = &asker {
            self.cl.borrows.entry(at.id).or_insert(false);
        }
        let truth = asker.borrower();
        p.askers.push(asker);
        if first {
            self.send_claims(t, id, truth);
        }
    }

    /// Sends lend `id`'s claim to every replica of its token (answering its own share at once).
    fn send_claims(&mut self, t: Ms, id: u64, truth: Option<usize>) {
        let Some(p) = self.cl.pending.get(&id) else {
            return;
        };
        let (l, claim, deadline) = (p.lend.lender, p.claim, p.deadline);
        let replicas: Vec<usize> = p
            .tally
            .replicas()
            .iter()
            .filter_map(|r| self.index.get(r).copied())
            .collect();
        // The replica linkage attackers sit at the token's first replica other than the lender.
        let scored = replicas.iter().copied().find(|&r| r != l);
        for r in replicas {
            let request = ClaimRequest::Claim(claim);
            if r == l {
                let answer = self.replica_answer(t, r, l, &request);
                let me = self.members[l].id;
                if let Some(p) = self.cl.pending.get_mut(&id) {
                    p.tally.record(me, ClaimResponse::vote(Some(answer)));
                }
            } else {
                let ask = Ask {
                    lend: id,
                    replica: r,
                    attempt: 1,
                    truth: truth.filter(|_| scored == Some(r)),
                };
                self.send_ask(t, l, &ask, request);
            }
        }
        self.at(deadline, Ev::ClaimTimer { lend: id, stage: 0 });
        if self
            .cl
            .pending
            .get(&id)
            .is_some_and(|p| p.tally.verdict(false) != Verdict::Pending)
        {
            self.conclude(t, id);
        }
    }

    /// Lender `l` sends one request to a replica. A replica that is down or cut off from it answers nothing (the ask
    /// waits for its timeout); a message lost on the way fails the request at once.
    fn send_ask(&mut self, t: Ms, l: usize, ask: &Ask, request: ClaimRequest) {
        let r = ask.replica;
        if self.net.is_down(r, t) || self.net.partitioned(l, r, t) {
            return;
        }
        match self.net.send(l, r, t) {
            Some(d) => {
                self.audit_limits(r, l, lendmesh_protocol::limits::Surface::Claim, t + d);
                self.at(
                    t + d,
                    Ev::ClaimAtReplica {
                        lend: ask.lend,
                        lender: l,
                        replica: r,
                        request: Box::new(request),
                        attempt: ask.attempt,
                        truth: ask.truth,
                    },
                )
            }
            None => self.ask_failed(t, ask, request),
        }
    }

    /// An ask failed at once (lost there or back): asked again after a pause while attempts and time are left, as
    /// the node's `Claimer::ask` does.
    pub(super) fn ask_failed(&mut self, t: Ms, ask: &Ask, request: ClaimRequest) {
        let Some(p) = self.cl.pending.get(&ask.lend) else {
            return;
        };
        let again = t + CLAIM_RETRY_PAUSE_MS;
        if ask.attempt < CLAIM_ATTEMPTS && again < p.deadline {
            self.at(
                again,
                Ev::ClaimRetry {
                    lend: ask.lend,
                    replica: ask.replica,
                    request: Box::new(request),
                    attempt: ask.attempt + 1,
                    truth: ask.truth,
                },
            );
        }
    }

    /// The pause after a failed ask is over: the lender asks again, if it still waits for that answer.
    pub(super) fn on_claim_retry(&mut self, t: Ms, ask: &Ask, request: &ClaimRequest) {
        let Some(p) = self.cl.pending.get(&ask.lend) else {
            return;
        };
        let waiting = matches!(
            (p.stage, request),
            (Stage::Claiming, ClaimRequest::Claim(_)) | (Stage::Releasing { .. }, ClaimRequest::Release(_))
        );
        if waiting {
            let l = p.lend.lender;
            self.send_ask(t, l, ask, *request);
        }
    }

    /// Whether borrow `id`'s attempt `attempt` is at a lender still claiming its token.
    pub(super) fn lender_still_claiming(&self, id: u64, attempt: u32) -> bool {
        self.cl.pending.values().any(|p| {
            p.askers
                .iter()
                .any(|a| matches!(a, Asker::Borrow { at, .. } if at.id == id && at.attempt == attempt))
        })
    }

    /// A replica's answer reached the lender.
    pub(super) fn on_claim_answer(
        &mut self,
        t: Ms,
        id: u64,
        replica: usize,
        answer: ClaimResponse,
        release: bool,
    ) {
        let peer = self.members[replica].id;
        let Some(p) = self.cl.pending.get_mut(&id) else {
            return;
        };
        match (p.stage, release) {
            (Stage::Claiming, false) => {
                p.tally.record(peer, ClaimResponse::vote(Some(answer)));
                if p.tally.verdict(false) != Verdict::Pending {
                    self.conclude(t, id);
                }
            }
            (Stage::Releasing { outstanding }, true) => {
                let left = outstanding.saturating_sub(1);
                p.stage = Stage::Releasing { outstanding: left };
                if left == 0 {
                    self.finish_released(t, id);
                }
            }
            _ => {}
        }
    }

    /// The per-replica timeout of lend `id`'s asks of `stage` is over.
    pub(super) fn on_claim_timer(&mut self, t: Ms, id: u64, stage: u8) {
        match self.cl.pending.get(&id).map(|p| p.stage) {
            Some(s @ Stage::Claiming) if s.timer() == stage => self.conclude(t, id),
            Some(s @ Stage::Releasing { .. }) if s.timer() == stage => self.finish_released(t, id),
            _ => {}
        }
    }

    /// The verdict of lend `id`'s claim (every ask still open counts as unreachable), and what the lender does.
    fn conclude(&mut self, t: Ms, id: u64) {
        let Some(mut p) = self.cl.pending.remove(&id) else {
            return;
        };
        let verdict = p.tally.verdict(true);
        let adversary = matches!(p.askers.first(), Some(Asker::Adversary { .. }));
        let lenient = self.cl.mode == ClaimsMode::Lenient;
        let run = &mut self.cl.run;
        let counts: &mut ClaimCounts = if adversary {
            &mut run.adversary
        } else {
            &mut run.honest
        };
        counts.claims += 1;
        match verdict {
            Verdict::Serve => counts.serve += 1,
            Verdict::SpentElsewhere => counts.spent_elsewhere += 1,
            Verdict::SplitVote => counts.split_vote += 1,
            Verdict::Unreachable | Verdict::Pending if lenient => counts.unreachable_served += 1,
            Verdict::Unreachable | Verdict::Pending => counts.unreachable_refused += 1,
        }
        let majority = matches!(
            verdict,
            Verdict::Serve | Verdict::SpentElsewhere | Verdict::SplitVote
        );
        if !adversary {
            run.claim_ms.push(t - p.started);
            if !majority && !self.cl.no_majority.insert(p.claim.token_hash) {
                self.cl.run.no_majority_again += 1;
            }
        }
        if majority && let Some(Asker::Borrow { at, .. }) = p.askers.first() {
            self.cl.borrows.insert(at.id, true);
        }
        let Lend {
            lender: l,
            upstream: k,
            redemption,
            request_digest,
            via,
            ..
        } = p.lend;
        self.fresh_serve = false;
        let answer = match verdict {
            Verdict::Serve => self.after_claim(t, l, k, &redemption, request_digest, via, true),
            Verdict::SpentElsewhere => Answer::TokenRejected("spent_elsewhere"),
            Verdict::SplitVote => Answer::TokenRejected("split_vote"),
            Verdict::Unreachable | Verdict::Pending if lenient => {
                self.after_claim(t, l, k, &redemption, request_digest, via, true)
            }
            Verdict::Unreachable | Verdict::Pending => {
                // Strict: nothing done, so the token stays unspent — here and at the replicas that granted it.
                let lender = &self.members[l];
                if let Err(e) = lender.redeemer.release(&redemption, &lender.spent) {
                    self.violation(format!("lender {l} could not release a claim: {e}"));
                }
                self.unreserve(t, &p.lend);
                let releases = self.releases(t, &mut p);
                if releases.is_empty() {
                    return self.finish_lend(t, p, Answer::NoQuorum);
                }
                p.stage = Stage::Releasing {
                    outstanding: releases.len(),
                };
                p.deadline = t + self.cl.timeout_ms();
                self.at(p.deadline, Ev::ClaimTimer { lend: id, stage: 1 });
                self.cl.pending.insert(id, p);
                for (r, request) in releases {
                    let ask = Ask {
                        lend: id,
                        replica: r,
                        attempt: 1,
                        truth: None,
                    };
                    self.send_ask(t, l, &ask, request);
                }
                return;
            }
        };
        if answer != Answer::Served {
            // Refused after the claim (spent elsewhere, burnt): no work done, the unit goes back.
            self.unreserve(t, &p.lend);
        }
        self.finish_lend(t, p, answer);
    }

    /// The releases `p` sends, to the replicas that granted its claim (its own share is released at once).
    fn releases(&mut self, t: Ms, p: &mut Pending) -> Vec<(usize, ClaimRequest)> {
        let l = p.lend.lender;
        // Measured, not known to the lender: replicas that stored this claim but whose grant never reached it get no
        // release, and keep the claim.
        let granted = p.tally.granted();
        let key = (p.claim.epoch, p.claim.token_hash);
        let unheard = p
            .tally
            .replicas()
            .iter()
            .filter(|r| !granted.contains(r))
            .filter_map(|r| self.index.get(r))
            .filter(|&&r| self.members[r].claims.get(&key) == Some(&p.claim.id()))
            .count();
        self.cl.run.grants_unheard += unheard as u64;
        let mut releases = Vec::new();
        for peer in granted {
            let Some(&r) = self.index.get(&peer) else {
                continue;
            };
            let request = ClaimRequest::Release(p.claim);
            if r == l {
                self.replica_answer(t, r, l, &request);
                continue;
            }
            self.cl.run.releases += 1;
            p.released.push((r, false));
            releases.push((r, request));
        }
        releases
    }

    /// The releases of lend `id` are answered, or their timeout is over: refuse `NoQuorum`.
    fn finish_released(&mut self, t: Ms, id: u64) {
        if let Some(p) = self.cl.pending.remove(&id) {
            self.cl.run.releases_lost += p.released.iter().filter(|(_, reached)| !reached).count() as u64;
            self.fresh_serve = false;
            self.finish_lend(t, p, Answer::NoQuorum);
        }
    }

    /// A release of lend `id` reached replica `r`.
    pub(super) fn release_reached(&mut self, id: u64, r: usize) {
        if let Some(p) = self.cl.pending.get_mut(&id)
            && let Some(x) = p.released.iter_mut().find(|(x, _)| *x == r)
        {
            x.1 = true;
        }
    }

    /// Caches the answer in the lender's ladder and gives it to everyone who asked (a fresh serve only to the first).
    fn finish_lend(&mut self, t: Ms, p: Pending, answer: Answer) {
        let l = p.lend.lender;
        self.cl.by_request.remove(&(l, p.lend.request_id));
        let local = self.local(l, t);
        self.members[l].ladder.finish(p.lend.request_id, answer, local);
        let fresh = self.fresh_serve;
        for (k, asker) in p.askers.into_iter().enumerate() {
            self.fresh_serve = fresh && k == 0;
            match asker {
                Asker::Borrow { at, spend } => self.answer_borrow(t, &at, &spend, answer),
                Asker::Adversary { kind, .. } => self.answer_adversary(l, kind, answer),
            }
        }
    }

    /// Gives back the unit of capacity `lend` took (unless its window is over: then the unit went with it).
    fn unreserve(&mut self, t: Ms, lend: &Lend) {
        let window_ms = self.window_ms;
        let me = &mut self.members[lend.lender];
        me.roll(t, window_ms);
        if me.window == lend.window
            && let Some(u) = me.upstreams.get_mut(lend.upstream)
        {
            u.used = u.used.saturating_sub(1);
        }
    }

    /// Lender `i` crashed: its lends waiting for a verdict are forgotten, unanswered (the borrowers time out).
    pub(super) fn drop_lends(&mut self, i: usize) {
        let ids: Vec<u64> = self
            .cl
            .pending
            .iter()
            .filter(|(_, p)| p.lend.lender == i)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(p) = self.cl.pending.remove(&id) else {
                continue;
            };
            self.cl.by_request.remove(&(i, p.lend.request_id));
            let me = &mut self.members[i];
            if me.window == p.lend.window
                && let Some(u) = me.upstreams.get_mut(p.lend.upstream)
            {
                u.used = u.used.saturating_sub(1);
            }
            for asker in &p.askers {
                if let Asker::Adversary { kind, .. } = asker {
                    self.out.attacks.outcome(kind, "lost_in_lender_crash");
                }
            }
        }
    }

    /// The run's claims section (scenarios with `[claims]`).
    pub(super) fn finish_claims(&mut self) -> Option<ClaimsRun> {
        self.cl.cfg.as_ref()?;
        let cl = &mut self.cl;
        let mut run = std::mem::take(&mut cl.run);
        run.claim_ms.sort_unstable();
        run.borrows_claimed = cl.borrows.len() as u64;
        run.borrows_majority = cl.borrows.values().filter(|&&m| m).count() as u64;
        let twice: Vec<(&TokenHash, &u32)> = cl.serves.iter().filter(|(_, n)| **n > 1).collect();
        run.tokens_served_twice = twice.len() as u64;
        run.honest_tokens_served_twice = twice
            .iter()
            .filter(|(h, _)| !cl.adversary_tokens.contains(h))
            .count() as u64;
        run.extra_serves = twice.iter().map(|(_, n)| u64::from(**n - 1)).sum();
        run.max_serves = cl.serves.values().copied().max().map_or(0, u64::from);
        run.multi_tokens = cl.multi_tokens.len() as u64;
        for h in &cl.multi_tokens {
            let n = cl.serves.get(h).copied().unwrap_or(0);
            *run.multi_served_at.entry(n.to_string()).or_default() += 1;
        }
        run.max_replica_claims = self
            .members
            .iter()
            .map(|m| m.claims.len() as u64)
            .max()
            .unwrap_or(0);
        Some(run)
    }
}
