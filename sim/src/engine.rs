//! The discrete-event loop: a binary heap of events keyed by (virtual time, sequence number), one seeded RNG per
//! concern, and the protocol's own state machines doing every check and making every decision: borrows run
//! `protocol::borrow::BorrowRun` among the lenders `protocol::capability` finds capable, lenders `protocol::lend`'s
//! ladder and, with claims, `protocol::claims`' replica sets and tally, refills `protocol::refill::RefillPlanner`
//! (see [`borrow`], [`lend`], [`claims`], [`mixed`] and [`Sim::maybe_refill`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use ed25519_dalek::SigningKey;
use lendmesh_protocol::attestation::{Attestation, AttestationBody, AttestationKey};
use lendmesh_protocol::borrow::{BorrowConfig, BorrowRun};
use lendmesh_protocol::epoch::EpochBook;
use lendmesh_protocol::group::{Roster, RosterEntry};
use lendmesh_protocol::issuer::{IssueError, Issuer};
use lendmesh_protocol::refill::BatchFate;
use lendmesh_protocol::refill::RefillEpoch;
use lendmesh_protocol::refill::RefillPlanner;
use lendmesh_protocol::routing::RoutingParams;
use lendmesh_protocol::token::{TokenHash, TokenSpend, WalletToken};
use lendmesh_protocol::wallet::Wallet;
use lendmesh_protocol::wire::{ClaimRequest, ClaimResponse, IssueRequest};
use lendmesh_protocol::{GroupId, PeerId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::member::{Answer, Member, Publication, Role};
use crate::net::{Ms, Network, mix};
use crate::outcome::{Bin, RunResult};
use crate::scenario::{Scenario, UNLIMITED_QUOTA};
use crate::upstream::Upstream;
use crate::workload::{self, Layout, Request};

mod attacks;
mod borrow;
mod claims;
mod epochs;
mod lend;
mod limits;
mod linkage;
mod mixed;

use claims::ClaimState;
use epochs::EpochState;
use mixed::MixTally;

#[derive(Debug)]
enum Ev {
    Demand(usize),
    Publish(usize),
    Crash(usize),
    Attack(usize),
    /// Member `i` checks whether to refill (start, restart, the end of a refill backoff).
    Refill(usize),
    AtLender {
        borrow: u64,
        attempt: u32,
        lender: usize,
        relay: Option<usize>,
        request_id: [u8; 16],
        spend: Box<TokenSpend>,
        /// The request's kind (what the lender reads from the request: its API and model).
        need: u16,
        /// Ground truth for scoring the linkage attackers; the lender's logic never reads it.
        truth: usize,
    },
    Reply {
        borrow: u64,
        attempt: u32,
        answer: Answer,
    },
    Timeout {
        borrow: u64,
        attempt: u32,
    },
    IssueAtAdmin {
        member: usize,
        request: Box<IssueRequest>,
    },
    IssueReply {
        member: usize,
        request_id: [u8; 16],
        epoch: u32,
        remaining: u32,
        sigs: Vec<Vec<u8>>,
    },
    /// The admin's epoch work (announcements, rotation, retirements).
    Epochs,
    /// Tokens of epochs a rotation dropped, presented to every lender.
    Probe,
    /// New epoch announcements reach a member.
    Adopt(usize),
    AdvSpend {
        lender: usize,
        request_id: [u8; 16],
        spend: Box<TokenSpend>,
        kind: &'static str,
    },
    /// A lender's claim (or release) reaches one of the token's replicas.
    ClaimAtReplica {
        lend: u64,
        lender: usize,
        replica: usize,
        request: Box<ClaimRequest>,
        /// The lender's request to this replica for it (1, then its retries).
        attempt: u32,
        /// The borrower, when this replica is where the linkage attackers sit (ground truth for scoring only).
        truth: Option<usize>,
    },
    /// A lender asks a replica again after its request failed at once.
    ClaimRetry {
        lend: u64,
        replica: usize,
        request: Box<ClaimRequest>,
        attempt: u32,
        truth: Option<usize>,
    },
    /// A replica's answer reaches the lender.
    ClaimAnswer {
        lend: u64,
        replica: usize,
        answer: ClaimResponse,
        release: bool,
    },
    /// The per-replica timeout of a lend's claims (stage 0) or releases (stage 1).
    ClaimTimer {
        lend: u64,
        stage: u8,
    },
    AdvAttestation {
        victim: usize,
        about: usize,
        att: Box<Attestation>,
        kind: &'static str,
    },
}

#[derive(Debug)]
struct Item {
    t: Ms,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

/// One borrow in flight: `protocol`'s machine and what the driver holds for it.
#[derive(Debug)]
struct Borrow {
    borrower: usize,
    started: Ms,
    /// The request's kind (`Layout::needs`).
    need: u16,
    /// Every rule of this borrow.
    run: BorrowRun,
    /// Stands for the request's content (the spend is bound to it).
    digest: [u8; 32],
    /// The token taken for it, until served, dropped or returned.
    token: Option<WalletToken>,
    /// The last attempt sent (resent unchanged on the idempotent retry).
    sent: Option<Sent>,
    /// Attempts sent, to match answers and timeouts to the one in flight.
    attempt: u32,
    /// The last unserved attempt's outcome, as a failure cause.
    last_cause: &'static str,
    /// A cover borrow (`protocol::exposure`): the member could have served it, and does if the borrow fails.
    cover: bool,
}

impl Borrow {
    fn new(borrower: usize, started: Ms, need: u16, cfg: BorrowConfig, digest: [u8; 32]) -> Self {
        Borrow {
            borrower,
            started,
            need,
            run: BorrowRun::new(cfg),
            digest,
            token: None,
            sent: None,
            attempt: 0,
            last_cause: "no_lender_available",
            cover: false,
        }
    }
}

/// An attempt as sent: its request id and the token bound to its lender.
#[derive(Debug)]
struct Sent {
    request_id: [u8; 16],
    spend: TokenSpend,
}

/// How far back gossip lookups walk (publications); older ones are outside any useful freshness window.
const GOSSIP_LOOKBACK: usize = 8;

/// A run in progress.
#[derive(Debug)]
pub(crate) struct Sim<'a> {
    s: &'a Scenario,
    n: usize,
    window_ms: Ms,
    end: Ms,
    stop: Ms,
    net: Network,
    members: Vec<Member>,
    index: HashMap<PeerId, usize>,
    roster: Roster,
    group: GroupId,
    att_key: AttestationKey,
    issuer: Issuer,
    ep: EpochState,
    admin_rng: ChaCha8Rng,
    adv_rng: ChaCha8Rng,
    pubs: Vec<Vec<Publication>>,
    att_memo: Vec<Option<(u64, Attestation)>>,
    queue: BinaryHeap<Reverse<Item>>,
    next_seq: u64,
    borrows: BTreeMap<u64, Borrow>,
    next_borrow: u64,
    trace: Vec<Request>,
    /// Who shares which upstreams and asks for what.
    layout: Layout,
    /// Per request kind and the mixed-upstreams counts.
    mix: MixTally,
    genuine: HashSet<TokenHash>,
    served_by: Vec<HashSet<TokenHash>>,
    admin_sigs: HashMap<Vec<u8>, usize>,
    first_issued: Vec<Option<Ms>>,
    /// When the admin last signed a batch for each member.
    last_issued: Vec<Option<Ms>>,
    issued: Vec<u64>,
    params: RoutingParams,
    borrow_cfg: BorrowConfig,
    bin_ms: Ms,
    fresh_serve: bool,
    /// Group-wide single spend (scenarios with `[claims]`).
    cl: ClaimState,
    /// The node's per-member limits, audited over honest traffic.
    limits: limits::LimitsAudit,
    out: RunResult,
}

impl<'a> Sim<'a> {
    /// Sets up a run: keys, roster, the first epoch and the issuer, members, demand trace. Fails only if the
    /// protocol refuses the run's own group material (a bug).
    pub(crate) fn new(s: &'a Scenario, seed: u64) -> Result<Self, String> {
        let n = s.members;
        let end = (s.duration_hours * 3_600_000.0) as Ms;
        let stop = end + (s.liveness_bound_s * 1000.0) as Ms;
        let stream = |k: u64| ChaCha8Rng::seed_from_u64(mix(seed ^ mix(k)));
        let mut setup = stream(1);
        let mut group_bytes = [0u8; 16];
        setup.fill_bytes(&mut group_bytes);
        let group = GroupId(group_bytes);
        let att_key = AttestationKey::random(&mut setup);
        let keys: Vec<SigningKey> = (0..n)
            .map(|_| {
                let mut b = [0u8; 32];
                setup.fill_bytes(&mut b);
                SigningKey::from_bytes(&b)
            })
            .collect();
        let mut admin_seed = [0u8; 32];
        setup.fill_bytes(&mut admin_seed);
        let admin_key = SigningKey::from_bytes(&admin_seed);
        let admin = PeerId::from_public_key(&admin_key.verifying_key());
        let quota = s.epochs.as_ref().map_or(UNLIMITED_QUOTA, |e| e.quota_per_epoch);
        let roster = Roster {
            group_id: group,
            version: 1,
            admin,
            members: keys
                .iter()
                .map(|k| RosterEntry {
                    peer: PeerId::from_public_key(&k.verifying_key()),
                    quota_per_epoch: quota,
                    expires_at_ms: u64::MAX,
                })
                .collect(),
            removed: Vec::new(),
        };
        let net = Network::new(s, seed, stream(2), end);
        // The first epoch starts a minute before the slowest clock, so every member is inside it from the start.
        let behind = (0..=n)
            .map(|i| crate::net::EPOCH_START_MS.saturating_sub(net.local_ms(i, 0)))
            .max()
            .unwrap_or(0);
        let (ep, issuer, first) = EpochState::new(s, group, admin_key, roster.clone(), behind + 60_000)?;
        let layout = Layout::new(s);
        let caps = workload::capacities(s, &layout, seed);
        let roles = roles(s);
        let mut members: Vec<Member> = Vec::with_capacity(n);
        for (i, k) in keys.into_iter().enumerate() {
            let book = EpochBook::new(first.clone(), &group, &admin).map_err(|e| e.to_string())?;
            let planner = RefillPlanner::new(s.tokens.low_water, s.tokens.refill_batch)
                .with_issuance(s.exposure.issuance, &mut stream(3000 + i as u64));
            let upstreams = layout
                .upstreams(i)
                .iter()
                .zip(&caps[i])
                .map(|(u, &c)| Upstream::new(u.api, u.models.clone(), c))
                .collect();
            members.push(Member::new(
                k,
                roles[i],
                upstreams,
                n,
                group,
                att_key.clone(),
                book,
                planner,
                stream(1000 + i as u64),
            ));
        }
        let index = members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        let bin_ms = (end / 48).max(1);
        let params = RoutingParams {
            half_life_ms: (s.routing.half_life_s * 1000.0) as u64,
            ..RoutingParams::default()
        };
        let out = RunResult {
            seed,
            lender_load: vec![0; n],
            bins: vec![Bin::default(); (end / bin_ms + 1) as usize],
            bin_minutes: bin_ms as f64 / 60_000.0,
            ..RunResult::default()
        };
        Ok(Sim {
            s,
            n,
            window_ms: (s.capacity.window_minutes * 60_000.0) as Ms,
            end,
            stop,
            net,
            members,
            index,
            roster,
            group,
            att_key,
            issuer,
            ep,
            admin_rng: stream(3),
            adv_rng: stream(4),
            pubs: vec![Vec::new(); n],
            att_memo: vec![None; n],
            // Every member, and the admin (the network's node `n` when it is not a member).
            limits: limits::LimitsAudit::new(n + 1),
            queue: BinaryHeap::new(),
            next_seq: 0,
            borrows: BTreeMap::new(),
            next_borrow: 0,
            trace: workload::trace(s, &layout, seed, end),
            mix: MixTally::new(&layout, n),
            layout,
            genuine: HashSet::new(),
            served_by: vec![HashSet::new(); n],
            admin_sigs: HashMap::new(),
            first_issued: vec![None; n],
            last_issued: vec![None; n],
            issued: vec![0; n],
            params,
            borrow_cfg: BorrowConfig {
                policy: s.routing.policy,
                params,
                privacy: s.privacy,
                max_attempts: s.routing.max_attempts,
            },
            bin_ms,
            fresh_serve: false,
            cl: ClaimState::new(s, stream(5)),
            out,
        })
    }

    fn at(&mut self, t: Ms, ev: Ev) {
        self.next_seq += 1;
        self.queue.push(Reverse(Item {
            t,
            seq: self.next_seq,
            ev,
        }));
    }

    fn local(&self, i: usize, t: Ms) -> u64 {
        self.net.local_ms(i, t)
    }

    /// Runs to the end of the liveness phase. `progress` gets the fraction of virtual time done.
    pub(crate) fn run(mut self, progress: &mut dyn FnMut(f64)) -> RunResult {
        if !self.trace.is_empty() {
            self.at(self.trace[0].t, Ev::Demand(0));
        }
        let period = (self.s.attestation_period_s * 1000.0) as Ms;
        let attack = (self.s.adversaries.period_s * 1000.0) as Ms;
        for i in 0..self.n {
            let phase = mix(self.out.seed ^ i as u64) % period.max(1);
            self.at(phase, Ev::Publish(i));
            if self.members[i].role != Role::Honest {
                self.at(attack / 2 + phase, Ev::Attack(i));
            }
            // A node checks its wallet as it starts, and again when it restarts.
            self.at(0, Ev::Refill(i));
            for (down, up) in self.net.crash_spans(i) {
                self.at(down, Ev::Crash(i));
                self.at(up, Ev::Refill(i));
            }
        }
        // The admin's epoch schedule (nothing to do in a single-epoch run).
        self.on_admin_epochs(0);
        let mut last_report = 0;
        while let Some(Reverse(item)) = self.queue.pop() {
            if item.t > self.stop {
                break;
            }
            self.out.events += 1;
            if item.t >= last_report + self.stop / 100 {
                last_report = item.t;
                progress(item.t as f64 / self.stop as f64);
            }
            self.handle(item.t, item.ev);
        }
        progress(1.0);
        self.finish()
    }

    fn handle(&mut self, t: Ms, ev: Ev) {
        match ev {
            Ev::Demand(k) => self.on_demand(t, k),
            Ev::Publish(i) => self.on_publish(t, i),
            Ev::Crash(i) => self.on_crash(i),
            Ev::Attack(i) => self.on_attack(t, i),
            Ev::Refill(i) => {
                if !self.net.is_down(i, t) {
                    self.sync_member(i, t);
                    self.maybe_refill(t, i);
                }
            }
            Ev::AtLender {
                borrow,
                attempt,
                lender,
                relay,
                request_id,
                spend,
                need,
                truth,
            } => {
                let at = lend::AtLender {
                    id: borrow,
                    attempt,
                    lender,
                    relay,
                    request_id,
                    need,
                    truth,
                };
                self.on_at_lender(t, &at, &spend)
            }
            Ev::Reply {
                borrow,
                attempt,
                answer,
            } => self.on_reply(t, borrow, attempt, answer),
            Ev::Timeout { borrow, attempt } => self.on_timeout(t, borrow, attempt),
            Ev::IssueAtAdmin { member, request } => self.on_issue(t, member, &request),
            Ev::IssueReply {
                member,
                request_id,
                epoch,
                remaining,
                sigs,
            } => self.on_issue_reply(t, member, request_id, epoch, remaining, &sigs),
            Ev::Epochs => self.on_admin_epochs(t),
            Ev::Probe => self.on_probe(t),
            Ev::Adopt(i) => self.on_adopt(t, i),
            Ev::AdvSpend {
                lender,
                request_id,
                spend,
                kind,
            } => {
                if self.net.is_down(lender, t) {
                    self.out.attacks.outcome(kind, "lost");
                    return;
                }
                let need = self.probe_need(lender);
                match self.lend(t, lender, request_id, &spend, None, &need) {
                    lend::Lent::Now(answer) => self.answer_adversary(lender, kind, answer),
                    lend::Lent::Later(id) => self.attach(t, id, claims::Asker::Adversary { kind }),
                }
            }
            Ev::ClaimAtReplica {
                lend,
                lender,
                replica,
                request,
                attempt,
                truth,
            } => {
                let ask = claims::Ask {
                    lend,
                    replica,
                    attempt,
                    truth,
                };
                self.on_claim_at_replica(t, lender, &ask, &request)
            }
            Ev::ClaimRetry {
                lend,
                replica,
                request,
                attempt,
                truth,
            } => {
                let ask = claims::Ask {
                    lend,
                    replica,
                    attempt,
                    truth,
                };
                self.on_claim_retry(t, &ask, &request)
            }
            Ev::ClaimAnswer {
                lend,
                replica,
                answer,
                release,
            } => self.on_claim_answer(t, lend, replica, answer, release),
            Ev::ClaimTimer { lend, stage } => self.on_claim_timer(t, lend, stage),
            Ev::AdvAttestation {
                victim,
                about,
                att,
                kind,
            } => self.on_adv_attestation(t, victim, about, &att, kind),
        }
    }

    // ---- demand and own capacity -------------------------------------------------------------------------

    fn on_demand(&mut self, t: Ms, k: usize) {
        if let Some(next) = self.trace.get(k + 1) {
            let nt = next.t;
            self.at(nt, Ev::Demand(k + 1));
        }
        let Request { member: m, need, .. } = self.trace[k];
        if self.net.is_down(m, t) {
            self.out.offline_requests += 1;
            return;
        }
        self.out.demand += 1;
        self.mix.kind(need).demand += 1;
        let bin = (t / self.bin_ms) as usize;
        self.out.bins[bin].demand += 1;
        self.sync_member(m, t);
        let window_ms = self.window_ms;
        let me = &mut self.members[m];
        me.roll(t, window_ms);
        let wanted = &self.layout.needs[usize::from(need)];
        // `protocol::exposure`: a request the member could serve may go out as a cover borrow, or early when its
        // own headroom is below this request's threshold.
        let route = self.s.exposure.route(me.own_left(wanted), &mut me.rng);
        if route.by_choice() && self.start_cover_borrow(t, m, need) {
            if route == lendmesh_protocol::exposure::Route::Early {
                self.out.early_borrows += 1;
            } else {
                self.out.cover_borrows += 1;
            }
            self.note_demand(t, false);
            return;
        }
        let me = &mut self.members[m];
        if me.serve_own(&self.layout.needs[usize::from(need)]) {
            self.out.served_own += 1;
            self.mix.kind(need).served_own += 1;
            self.out.bins[bin].served += 1;
            self.note_demand(t, true);
            return;
        }
        self.note_demand(t, false);
        self.start_borrow(t, m, need);
    }

    /// Member `m`'s refill, as the node's member actor makes it: a pending batch is sent again first (same request
    /// id: the issuer answers it without charging again); otherwise `RefillPlanner::next` over the book's signable
    /// epochs (the current one and the announced next) says which epoch and how many, or nothing. Nothing while a
    /// batch is on its way or the planner backs off after a failure.
    ///
    /// The node checks every 2 s and after every take; here it is checked exactly when the planner's answer can
    /// change — a take ([`Sim::take_token`]), an announcement adopted, a batch landed or refused, the backoff over, a
    /// (re)start — which gives the same refills without the polling. (Expiry and time passing only shrink the
    /// signable epochs, and the planner never asks for an epoch that is not signable.)
    pub(super) fn maybe_refill(&mut self, t: Ms, m: usize) {
        if self.net.is_down(m, t) {
            return;
        }
        let local = self.local(m, t);
        let me = &mut self.members[m];
        if me.refill_in_flight || !me.planner.due(local) {
            return;
        }
        if me.refill.is_none() {
            let epochs: Vec<RefillEpoch> = me
                .book
                .refill_epochs(local)
                .into_iter()
                .filter_map(|e| me.book.get(e))
                .map(|i| RefillEpoch {
                    epoch: i.epoch(),
                    quota: i
                        .signed
                        .announcement
                        .roster
                        .roster
                        .entry(&me.id)
                        .map_or(0, |x| x.quota_per_epoch),
                    starts_at_ms: i.starts_at_ms(),
                    ends_at_ms: i.effective_end_ms,
                })
                .collect();
            let wallet = &me.wallet;
            let Some(step) = me.planner.next_at(local, &epochs, |e| wallet.balance_in(e)) else {
                // On the schedule, wake up when its next step falls due (in this member's clock).
                if let Some(due) = me.planner.next_due_ms(local, &epochs) {
                    let at = t + (due - local);
                    if at <= self.stop && me.schedule_wake.is_none_or(|w| w <= t || w > at) {
                        me.schedule_wake = Some(at);
                        self.at(at, Ev::Refill(m));
                    }
                }
                return;
            };
            let Some(key) = me.book.get(step.epoch).map(|i| i.key.clone()) else {
                return;
            };
            let Ok((_, batch)) = Wallet::prepare_batch(&key, step.epoch, step.count, &mut me.rng) else {
                return;
            };
            me.refill = Some(batch);
        }
        let Some(request) = self.members[m].refill.as_ref().map(|b| b.request.clone()) else {
            return;
        };
        let admin = self.net.admin();
        match self.net.send(m, admin, t) {
            Some(d) => {
                self.members[m].refill_in_flight = true;
                self.at(
                    t + d,
                    Ev::IssueAtAdmin {
                        member: m,
                        request: Box::new(request),
                    },
                );
            }
            None => self.refill_failed(t, m),
        }
    }

    /// A refill of member `m` failed (lost on the way, refused, or its epoch retired meanwhile; the member learns it
    /// at once, where a node would wait for its request timeout): the planner's backoff says when to try again.
    fn refill_failed(&mut self, t: Ms, m: usize) {
        let local = self.local(m, t);
        let me = &mut self.members[m];
        me.refill_in_flight = false;
        let wait = me.planner.failed(local, &mut me.rng);
        if t + wait <= self.stop {
            self.at(t + wait, Ev::Refill(m));
        }
    }

    /// Whether `request_id` is member `m`'s pending batch (an answer to an older one changes nothing).
    fn pending_is(&self, m: usize, request_id: &[u8; 16]) -> bool {
        self.members[m]
            .refill
            .as_ref()
            .is_some_and(|b| &b.request_id == request_id)
    }

    fn on_issue(&mut self, t: Ms, m: usize, request: &IssueRequest) {
        self.audit_limits(self.net.admin(), m, lendmesh_protocol::limits::Surface::Issue, t);
        let peer = self.members[m].id;
        let now = self.local(self.net.admin(), t);
        let grant = match self.issuer.issue(&peer, request, now, &mut self.admin_rng) {
            Ok(grant) => grant,
            Err(_) if !self.pending_is(m, &request.request_id) => return,
            Err(e) => {
                // The refusal travels back (shortcut: the member knows at once); which refusals drop the pending
                // batch is `protocol::refill`'s rule, as in the node.
                let me = &mut self.members[m];
                me.refill_in_flight = false;
                if me.planner.refused(request.epoch, &e) == BatchFate::Drop {
                    me.refill = None;
                }
                if let IssueError::OverQuota { .. } = e {
                    // Not a failure: ask for what is left, if anything.
                    return self.maybe_refill(t, m);
                }
                return self.refill_failed(t, m);
            }
        };
        if grant.charged {
            let count = grant.blind_signatures.len() as u64;
            self.out.tokens_issued += count;
            self.note_issued(request.epoch, m, count);
            // The admin's observation: who got how many blind signatures, when.
            self.first_issued[m].get_or_insert(t);
            self.last_issued[m] = Some(t);
            self.issued[m] += count;
            for sig in &grant.blind_signatures {
                self.admin_sigs.insert(sig.clone(), m);
            }
        }
        let admin = self.net.admin();
        match self.net.send(admin, m, t) {
            Some(d) => self.at(
                t + d,
                Ev::IssueReply {
                    member: m,
                    request_id: request.request_id,
                    epoch: request.epoch,
                    remaining: grant.remaining,
                    sigs: grant.blind_signatures,
                },
            ),
            // Lost: the member keeps its pending batch and sends it again after the backoff.
            None if self.pending_is(m, &request.request_id) => self.refill_failed(t, m),
            None => {}
        }
    }

    fn on_issue_reply(
        &mut self,
        t: Ms,
        m: usize,
        request_id: [u8; 16],
        epoch: u32,
        remaining: u32,
        sigs: &[Vec<u8>],
    ) {
        if self.net.is_down(m, t) || !self.members[m].refill_in_flight || !self.pending_is(m, &request_id) {
            return;
        }
        self.sync_member(m, t);
        let me = &mut self.members[m];
        me.refill_in_flight = false;
        me.planner.record_remaining(epoch, remaining);
        let Some(batch) = me.refill.take() else {
            return;
        };
        // The epoch may have been retired while the answer travelled: then its tokens are of no use.
        let Some(key) = me.book.get(batch.epoch).map(|i| i.key.clone()) else {
            return self.refill_failed(t, m);
        };
        if me.wallet.finalize(&key, &batch, sigs).is_err() {
            me.refill = Some(batch);
            return self.refill_failed(t, m);
        }
        me.expired_since_refill = false;
        me.planner.reset_backoff();
        for p in &batch.tokens {
            self.genuine.insert(p.input.hash());
        }
        // The next step, if any (the node's refill loop goes on until the planner has nothing to ask).
        self.maybe_refill(t, m);
    }

    // ---- attestations and gossip -------------------------------------------------------------------------

    fn on_publish(&mut self, t: Ms, i: usize) {
        let period = (self.s.attestation_period_s * 1000.0) as Ms;
        if t + period <= self.stop {
            self.at(t + period, Ev::Publish(i));
        }
        if self.net.is_down(i, t) {
            return;
        }
        self.sync_member(i, t);
        let window_ms = self.window_ms;
        let local = self.local(i, t);
        let me = &mut self.members[i];
        me.roll(t, window_ms);
        me.seq += 1;
        let resets = crate::net::EPOCH_START_MS + (me.window + 1) * window_ms;
        let (mut buckets, headroom) = me.buckets();
        // What is attested (`protocol::exposure`): nothing below the floor. (Under a floor the node attests no reset
        // time either; the simulator's windows are the same for every member, so the attackers know them anyway
        // and the publication keeps the true one, which routing reads only for a `none` bucket.)
        let exposure = self.s.exposure;
        buckets.iter_mut().for_each(|b| *b = exposure.attested(*b));
        let headroom = exposure.attested(headroom);
        let (seq, exact) = (me.seq, me.remaining());
        let admin = self.net.admin();
        if i != admin {
            self.audit_limits(admin, i, lendmesh_protocol::limits::Surface::Gossip, t);
        }
        self.pubs[i].push(Publication {
            t,
            seq,
            issued_at_ms: local,
            headroom,
            buckets,
            exact,
            resets_at_ms: resets,
        });
    }

    /// The newest publication of `p` that reached `r` by `now`.
    fn latest_delivered(&self, p: usize, r: usize, now: Ms) -> Option<Publication> {
        let list = &self.pubs[p];
        let idx = list.partition_point(|x| x.t <= now);
        list[idx.saturating_sub(GOSSIP_LOOKBACK)..idx]
            .iter()
            .rev()
            .find(|x| self.net.gossip_delivered(p, r, x.seq, x.t, now))
            .copied()
    }

    fn attestation(&mut self, p: usize, pubn: &Publication) -> Option<Attestation> {
        if let Some((seq, att)) = &self.att_memo[p]
            && *seq == pubn.seq
        {
            return Some(att.clone());
        }
        // One capability per upstream, each with its own bucket; `headroom` is the best of them (as the node's).
        let upstreams = &self.members[p].upstreams;
        let capabilities = crate::upstream::capabilities(upstreams, &pubn.buckets, pubn.resets_at_ms);
        let body = AttestationBody {
            group_id: self.group,
            peer_id: self.members[p].id,
            seq: pubn.seq,
            issued_at_ms: pubn.issued_at_ms,
            headroom: pubn.headroom,
            window_resets_at_ms: pubn.resets_at_ms,
            ohttp_key_config: vec![0x20; 41],
            epoch_keys: vec![],
            capabilities,
        };
        let att = Attestation::create(body, &self.att_key, &self.members[p].key).ok()?;
        self.att_memo[p] = Some((pubn.seq, att.clone()));
        Some(att)
    }

    /// Feeds `r`'s acceptor the newest attestation of `p` that reached it.
    fn refresh_one(&mut self, r: usize, p: usize, now: Ms) {
        let Some(pubn) = self.latest_delivered(p, r, now) else {
            return;
        };
        if pubn.seq <= self.members[r].fed_seq[p] {
            return;
        }
        let Some(att) = self.attestation(p, &pubn) else {
            return;
        };
        let local = self.local(r, now);
        let me = &mut self.members[r];
        me.fed_seq[p] = pubn.seq;
        match me.acceptor.accept(&att, &self.roster, local) {
            Ok(()) => {
                me.table[p] = Some(crate::member::PeerView {
                    headroom: att.body.headroom,
                    issued_at_ms: att.body.issued_at_ms,
                    capabilities: att.body.offered(),
                });
            }
            Err(e) => {
                *self
                    .out
                    .attestation_rejections
                    .entry(e.label().to_owned())
                    .or_default() += 1
            }
        }
    }

    // ---- the end -----------------------------------------------------------------------------------------

    fn finish(mut self) -> RunResult {
        if !self.borrows.is_empty() {
            let k = self.borrows.len();
            let bound = self.s.liveness_bound_s;
            self.violation(format!(
                "liveness: {k} borrows still pending {bound} s after faults healed"
            ));
        }
        let pool = self.pool();
        crate::baseline::fill(
            &mut self.out,
            &self.trace,
            &pool,
            &self.net,
            self.window_ms,
            self.bin_ms,
        );
        let caps: Vec<u32> = self.members.iter().map(Member::capacity).collect();
        let out = &mut self.out;
        out.served_fraction =
            crate::outcome::ratio((out.served_own + out.served_borrowed) as f64, out.demand as f64);
        out.borrow_latency_ms.sort_unstable();
        let x: Vec<f64> = out
            .lender_load
            .iter()
            .zip(&caps)
            .map(|(&l, &c)| l as f64 / f64::from(c))
            .collect();
        let (sum, sq) = (x.iter().sum::<f64>(), x.iter().map(|v| v * v).sum::<f64>());
        out.jain = crate::outcome::ratio(sum * sum, x.len() as f64 * sq);
        let loads = &out.lender_load;
        let mean = loads.iter().sum::<u64>() as f64 / loads.len().max(1) as f64;
        out.herding = crate::outcome::ratio(loads.iter().copied().max().unwrap_or(0) as f64, mean);
        self.out.epochs = self.finish_epochs();
        self.out.mixed = self.finish_mixed();
        self.out.claims = self.finish_claims();
        self.out.limits = self.limits.result();
        self.out
    }

    /// Every member's upstreams as the baselines see them: capacity per window and which request kinds each serves.
    fn pool(&self) -> crate::baseline::Pool {
        let serves = self
            .members
            .iter()
            .map(|m| {
                m.upstreams
                    .iter()
                    .map(|u| self.layout.needs.iter().map(|n| u.serves(n)).collect())
                    .collect()
            })
            .collect();
        let capacity = self
            .members
            .iter()
            .map(|m| m.upstreams.iter().map(|u| u.capacity).collect())
            .collect();
        crate::baseline::Pool { capacity, serves }
    }
}

fn roles(s: &Scenario) -> Vec<Role> {
    let a = &s.adversaries;
    let mut roles = vec![Role::Honest; s.members];
    let mut k = s.members;
    for (count, role) in [
        (a.double_spenders, Role::DoubleSpender),
        (a.forgers, Role::Forger),
        (a.attestation_replayers, Role::AttestationReplayer),
        (a.attestation_forgers, Role::AttestationForger),
        (a.multi_spenders, Role::MultiSpender),
    ] {
        for _ in 0..count {
            k -= 1;
            roles[k] = role;
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use lendmesh_protocol::attestation::HeadroomBucket;

    use super::lend::Lent;
    use super::*;

    fn small() -> Scenario {
        let path = format!("{}/scenarios/test-skew.toml", env!("CARGO_MANIFEST_DIR"));
        Scenario::from_file(std::path::Path::new(&path)).unwrap()
    }

    #[test]
    fn invariant_checks_fire() {
        let s = small();
        let mut sim = Sim::new(&s, 1).unwrap();
        let fake = TokenHash([7; 32]);
        sim.check_serve(0, &fake);
        assert_eq!(sim.out.violations.len(), 1, "a token the issuer never signed");
        sim.genuine.insert(fake);
        sim.check_serve(1, &fake);
        assert_eq!(sim.out.violations.len(), 1);
        sim.check_serve(1, &fake);
        assert_eq!(
            sim.out.violations.len(),
            2,
            "the same token served twice by one lender"
        );
        sim.members[2].upstreams[0].used = sim.members[2].upstreams[0].capacity + 1;
        sim.genuine.insert(TokenHash([8; 32]));
        sim.check_serve(2, &TokenHash([8; 32]));
        assert_eq!(sim.out.violations.len(), 3, "over capacity");
        assert!(sim.out.violations.iter().all(|v| v.starts_with("seed 1:")));
    }

    /// Member `m` gets one token of the first epoch from the real issuer.
    pub(super) fn issue_one(sim: &mut Sim<'_>, m: usize) -> WalletToken {
        let key = sim.members[m].book.get(0).unwrap().key.clone();
        let (request, batch) = Wallet::prepare_batch(&key, 0, 1, &mut sim.members[m].rng).unwrap();
        let now = sim.local(sim.net.admin(), 0);
        let peer = sim.members[m].id;
        let grant = sim
            .issuer
            .issue(&peer, &request, now, &mut sim.admin_rng)
            .unwrap();
        let me = &mut sim.members[m];
        me.wallet.finalize(&key, &batch, &grant.blind_signatures).unwrap();
        sim.genuine.insert(batch.tokens[0].input.hash());
        sim.members[m].wallet.take(|_| true).unwrap()
    }

    #[test]
    fn a_lender_answers_a_request_id_once_and_forgets_it_in_a_crash() {
        let s = small();
        let mut sim = Sim::new(&s, 1).unwrap();
        let token = issue_one(&mut sim, 0);
        let (lender, t) = (1, 1_000);
        let need = sim.layout.needs[0].clone();
        let spend = token.spend(sim.members[lender].id, [3; 32], sim.local(0, t));
        assert_eq!(
            sim.lend(t, lender, [1; 16], &spend, Some(2), &need),
            Lent::Now(Answer::Served)
        );
        assert!(sim.fresh_serve);
        // The borrower's retry (same request id, through another relay): the cached answer, no second serve.
        assert_eq!(
            sim.lend(t + 10, lender, [1; 16], &spend, Some(3), &need),
            Lent::Now(Answer::Served)
        );
        assert!(!sim.fresh_serve);
        // Replays are keyed by request id, not by content: the same spend under another id is a double spend.
        assert_eq!(
            sim.lend(t + 20, lender, [2; 16], &spend, Some(3), &need),
            Lent::Now(Answer::TokenRejected("double_spend"))
        );
        // The cache is memory: after a crash the retry meets the durable spent set.
        sim.on_crash(lender);
        assert_eq!(
            sim.lend(t + 30, lender, [1; 16], &spend, Some(2), &need),
            Lent::Now(Answer::TokenRejected("double_spend"))
        );
        assert_eq!(sim.out.lender_load[lender], 1);
        assert!(sim.out.violations.is_empty(), "{:?}", sim.out.violations);
    }

    #[test]
    fn refusals_cool_lenders_down_with_a_capped_retry_after_and_the_same_token_goes_elsewhere() {
        use lendmesh_protocol::borrow::MAX_COOLDOWN_MS;
        let s = small();
        let mut sim = Sim::new(&s, 5).unwrap();
        let token = issue_one(&mut sim, 0);
        let hash = token.token.hash();
        sim.members[0].wallet.put_back(token);
        let t = 1_000;
        let local = sim.local(0, t);
        // Member 0 sees every other member with headroom; all but member 2 are in fact exhausted for the window.
        for p in 1..sim.n {
            let issued_at_ms = sim.local(p, t);
            let capabilities = crate::upstream::capabilities(
                &sim.members[p].upstreams,
                &[HeadroomBucket::High],
                local + 3_600_000,
            );
            sim.members[0].table[p] = Some(crate::member::PeerView {
                headroom: HeadroomBucket::High,
                issued_at_ms,
                capabilities,
            });
            if p != 2 {
                let u = &mut sim.members[p].upstreams[0];
                u.used = u.capacity;
            }
        }
        sim.start_borrow(t, 0, 0);
        while let Some(Reverse(item)) = sim.queue.pop() {
            sim.handle(item.t, item.ev);
        }
        assert_eq!(sim.out.served_borrowed, 1, "{:?}", sim.out.failures);
        assert!(
            sim.members[2].spent.contains(0, &hash),
            "the token refused elsewhere, spent here"
        );
        let cooled: Vec<u64> = sim.members[0].cooling.iter().flatten().copied().collect();
        assert!(!cooled.is_empty(), "some exhausted lender was tried first");
        for until in cooled {
            // The refusals said "retry in ~30 min" (the window's reset); the cooldown is capped at 5 min (+ jitter).
            assert!(until >= local + MAX_COOLDOWN_MS && until <= local + MAX_COOLDOWN_MS * 5 / 4 + 10_000);
        }
        assert!(sim.out.violations.is_empty(), "{:?}", sim.out.violations);
    }

    #[test]
    fn every_member_refills_to_the_planners_level_at_start_whatever_its_headroom() {
        let s = small();
        let mut sim = Sim::new(&s, 3).unwrap();
        for i in 0..sim.n {
            sim.handle(0, Ev::Refill(i));
        }
        while let Some(Reverse(item)) = sim.queue.pop() {
            assert!(
                matches!(
                    item.ev,
                    Ev::IssueAtAdmin { .. } | Ev::IssueReply { .. } | Ev::Refill(_)
                ),
                "{:?}",
                item.ev
            );
            sim.handle(item.t, item.ev);
        }
        for i in 0..sim.n {
            let me = &sim.members[i];
            assert_eq!(
                me.remaining(),
                me.capacity(),
                "nothing used: own headroom is full"
            );
            assert_eq!(me.wallet.balance(), s.tokens.refill_batch as usize, "member {i}");
            assert!(me.refill.is_none() && !me.refill_in_flight);
            let wallet = &me.wallet;
            assert_eq!(
                me.planner.next(&[(0, UNLIMITED_QUOTA)], |e| wallet.balance_in(e)),
                None
            );
        }
    }

    #[test]
    fn events_pop_in_time_then_insertion_order() {
        let s = small();
        let mut sim = Sim::new(&s, 1).unwrap();
        sim.at(5, Ev::Publish(2));
        sim.at(3, Ev::Publish(1));
        sim.at(5, Ev::Publish(0));
        let order: Vec<(Ms, u64)> =
            std::iter::from_fn(|| sim.queue.pop().map(|Reverse(i)| (i.t, i.seq))).collect();
        assert_eq!(order, vec![(3, 2), (5, 1), (5, 3)]);
    }
}
