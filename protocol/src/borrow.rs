//! The borrower's rules (docs/design.md §6 steps 2–6) as a state machine: which lender and relay to try next, what to do
//! with the token after each outcome, when to cool a lender down, and when to give up.
//!
//! The node and the simulator both drive one [`BorrowRun`] per request:
//! ```text
//! loop {
//!     match run.decide(&view, rng) {
//!         Decision::TakeToken => match wallet.take() { Some(t) => run.token_taken(), None => run.no_token(why) },
//!         Decision::Send { lender, relay, same_request } => {
//!             // bind the token to `lender` (a fresh request id unless `same_request`), seal, send
//!             for effect in run.record(outcome, now, rng) { /* cool down, drop the token, count */ }
//!         }
//!         Decision::Finish(finish) => break, // return the token to the wallet if `finish.return_token`
//!     }
//! }
//! ```
//! The rules, each decided once here for both drivers:
//! - A lender is chosen by the routing policy among fresh attestations, never self, never one already tried for this
//!   request, never one cooling down; the relay uniformly among connected members other than self and the lender.
//!   With no relay, `strict` privacy gives up and `best-effort` goes direct.
//! - **Refused before any claim** (no headroom, upstream 429/503, lender busy, stale key config, unreachable): the
//!   token is unspent; the lender cools down until its `Retry-After` (capped at [`MAX_COOLDOWN_MS`] so one answer
//!   cannot drop a lender for hours: its attestations say when it recovers) or [`DEFAULT_COOLDOWN_MS`], with
//!   jitter, and the same token is re-bound to the next lender.
//! - **Token rejected**: burnt only when the rejection says the token is unusable anywhere (double spend, bad
//!   signature, wrong key id or type, bad spend signature). A rejection that is this lender's view — its epoch window
//!   or clock (`epoch_closed`, `unknown_epoch`, `time_skew`) — keeps the token for another lender and cools this one
//!   down: burning a good token because one lender's clock is off would waste the member's quota.
//! - **No answer after the request may have reached the lender** (ambiguous): retried once with the same request id
//!   and spend at the same lender through another relay (the lender answers a known request id from its cache);
//!   still ambiguous, the token is given up as spent — never spent twice — and a fresh one goes elsewhere; unless the
//!   relay went silent, the lender cools down for [`LENDER_FAILED_COOLDOWN_MS`] (a lender that fails, or answers
//!   garbage, would otherwise cost a token per borrow). When the
//!   relay itself went silent after accepting the request, that relay has failed: it cools down and the retry never
//!   goes through it (with no other relay, the token is given up at once: [`Decision::DropToken`]). When the relay
//!   answered that the lender was silent, the relay is fine and may carry the retry.
//! - **Too few of the token's replicas answered the lender's claim** (`no_quorum`, design §7): the token is unspent
//!   and the lender is healthy, but any lender would ask the same replicas. The token is set aside — back in the
//!   wallet, spent last ([`Effect::SetTokenAside`]) — and a fresh token, whose replicas are others, goes to the same
//!   choice of lenders; the lender is not cooled down or counted as tried. After [`MAX_TOKEN_SWAPS`] such swaps the
//!   refusal counts like any other.
//! - **Failed after the claim** (upstream error, unreadable request): the token is spent; the borrow fails.
//! - **The relay failed** (could not be reached, its stream could not be opened, it did not acknowledge the request
//!   in time, or it refused to forward): the request never left this node as far as the token is concerned, so the
//!   failure is the relay's — the relay cools down, the lender does not, the token stays unspent, and the request
//!   goes out again through another relay (never the one that just failed; at most [`MAX_RELAY_FAILURES`] per
//!   request, then `no_relay`).
//! - **Conversation stickiness.** A run may carry a preferred lender ([`BorrowRun::with_sticky`]: the one that served
//!   the conversation's last turn, so the provider's prompt cache stays warm). It is chosen whenever it is eligible
//!   (fresh headroom, not cooling down, not this node) until a first lender attempt settles; once it has refused or
//!   failed it is tried no more for this request — like any lender tried — and the run moves on by the policy. A
//!   relay's failure settles nothing, so the request goes out again to the preferred lender through another relay.
//! - At most `max_attempts` lenders per request (a setting: [`DEFAULT_MAX_ATTEMPTS`]).
//! - **Why it ended, truthfully.** With no lender left to try, a run whose attempts were all clean refusals (the
//!   token unspent) ends as the case that holds now — no member has headroom ([`BorrowFailure::NoLender`]), or
//!   members with headroom are cooling down ([`BorrowFailure::LendersCooling`], retry when the first cooldown
//!   ends) — rather than as a failure; a failure names the hop that failed by its role (`relay: …`, `lender: …`).

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::ids::PeerId;
use crate::routing::{self, Candidate, LenderQuery, Policy, RoutingParams};

/// Lenders tried per request at most, by default.
pub const DEFAULT_MAX_ATTEMPTS: usize = 6;
/// Cooldown after a refusal that named no retry time.
pub const DEFAULT_COOLDOWN_MS: u64 = 15_000;
/// Longest cooldown a lender's `Retry-After` can impose.
pub const MAX_COOLDOWN_MS: u64 = 5 * 60_000;
/// Relays that may fail one request before it gives up (each is avoided for the rest of the request).
pub const MAX_RELAY_FAILURES: usize = 3;
/// Tokens one request may set aside because their replicas could not form a majority, before `no_quorum` counts as
/// an ordinary refusal (each fresh token has other replicas; with most of the group offline none will do).
pub const MAX_TOKEN_SWAPS: usize = 2;
/// How long a lender is left out of routing after an answer given up as possibly claimed twice in a row (the
/// idempotent retry through another relay failed too): every borrow sent to a failing lender costs a token.
pub const LENDER_FAILED_COOLDOWN_MS: u64 = 60_000;
/// How long a relay that failed is left out of routing.
pub const RELAY_COOLDOWN_MS: u64 = 10_000;
/// Suggested wait when no member has headroom: about one attestation period, by which fresh headroom is heard.
pub const NO_HEADROOM_RETRY_S: u64 = 10;
/// Suggested wait when no relay is usable: about the first reconnection attempts.
pub const NO_RELAY_RETRY_S: u64 = 5;

/// Whether a borrow may skip the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrivacyMode {
    /// Never borrow without a relay (default).
    #[default]
    Strict,
    /// Go direct to the lender when no relay is available (the lender then sees this node's identity).
    BestEffort,
}

impl std::str::FromStr for PrivacyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(PrivacyMode::Strict),
            "best-effort" => Ok(PrivacyMode::BestEffort),
            other => Err(format!(
                "unknown privacy mode '{other}'; use strict or best-effort"
            )),
        }
    }
}

impl std::fmt::Display for PrivacyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrivacyMode::Strict => "strict",
            PrivacyMode::BestEffort => "best-effort",
        })
    }
}

/// Borrowing settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BorrowConfig {
    /// Lender choice.
    pub policy: Policy,
    /// Routing tunables.
    pub params: RoutingParams,
    /// Relay requirement.
    pub privacy: PrivacyMode,
    /// Lenders tried per request at most.
    pub max_attempts: usize,
}

impl Default for BorrowConfig {
    fn default() -> Self {
        BorrowConfig {
            policy: Policy::default(),
            params: RoutingParams::default(),
            privacy: PrivacyMode::Strict,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// What the borrower knows when it routes: fresh lender candidates, connected members (relay candidates).
#[derive(Clone, Copy, Debug)]
pub struct RouteView<'a> {
    /// This node.
    pub me: &'a PeerId,
    /// Lenders with fresh attestations.
    pub candidates: &'a [Candidate],
    /// Connected active members.
    pub connected: &'a [PeerId],
    /// Roster members besides this node.
    pub known: usize,
    /// Now (the borrower's clock).
    pub now_ms: u64,
}

/// Why the wallet had no token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoToken {
    /// Empty for now; it refills from the issuer.
    Empty {
        /// When the next refill attempt is due (ms since the Unix epoch): now when none is backing off, later
        /// after failed refills. `None` when no refill is planned (e.g. the store failed).
        refill_at_ms: Option<u64>,
    },
    /// The quota of the current epoch is spent.
    QuotaExhausted {
        /// When the next epoch starts, if known.
        next_epoch_starts_at_ms: Option<u64>,
    },
}

/// How one attempt ended, as the driver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// The lender served it.
    Served,
    /// Refused before any claim: the token is unspent. `delivered`: the lender's own answer came back (not a
    /// relay's or the network's).
    Refused {
        /// The lender's `Retry-After`, if any.
        retry_after_ms: Option<u64>,
        /// What happened.
        why: String,
        /// The lender answered (vs. the relay or the network).
        delivered: bool,
    },
    /// Refused before any claim because too few of the token's replicas answered (`no_quorum`): the token is
    /// unspent, the lender is fine, and another token (other replicas) may be served.
    NoQuorum,
    /// The lender rejected the token (its redeemer's label).
    TokenRejected {
        /// The rejection label (`double_spend`, `epoch_closed`, …).
        label: String,
    },
    /// The relay could not be reached or refused to forward: the request never reached the lender.
    RelayFailed {
        /// What happened.
        why: String,
    },
    /// It may have reached the lender, and no answer settles whether the token was claimed.
    Ambiguous {
        /// What happened.
        why: String,
        /// The relay accepted the request and then went silent (vs. the relay answering that the lender was
        /// silent): the relay has failed, and the retry avoids it.
        relay_silent: bool,
    },
    /// Failed after the claim: the token is spent.
    Spent {
        /// What happened.
        why: String,
    },
}

/// Redeemer labels that make a token unusable anywhere (burnt); any other rejection is one lender's view.
pub const BURNING_REJECTIONS: [&str; 7] = [
    "double_spend",
    "bad_signature",
    "wrong_key_id",
    "wrong_token_type",
    "bad_spend_signature",
    // Group-wide claims (docs/design.md §7): another lender won the token, or a split vote burnt it.
    "spent_elsewhere",
    "split_vote",
];

/// Why a borrow failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BorrowFailure {
    /// No member has headroom (no fresh attestation with headroom).
    NoLender {
        /// Roster members besides this node.
        known: usize,
        /// Fresh attestations, with headroom or not.
        fresh: usize,
        /// Suggested wait in seconds.
        retry_s: u64,
    },
    /// Members with headroom exist, but every one is cooling down after a refusal or failure (or is not answering).
    LendersCooling {
        /// Lenders with headroom that are cooling down.
        cooling: usize,
        /// Seconds until the first cooldown ends.
        retry_s: u64,
    },
    /// No usable relay and strict privacy.
    NoRelay {
        /// Connected members usable as relays.
        connected: usize,
        /// Relays that failed this request.
        failed: usize,
        /// Suggested wait in seconds.
        retry_s: u64,
    },
    /// No token.
    NoToken(NoToken),
    /// Every attempt was ambiguous.
    Timeout {
        /// Lenders tried.
        tried: usize,
    },
    /// Every attempt failed, or one failed after the claim.
    Failed {
        /// Lenders tried.
        tried: usize,
        /// The last failure.
        last: String,
    },
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    /// Served, or why not.
    pub result: Result<(), BorrowFailure>,
    /// The driver still holds an unspent token: put it back in the wallet.
    pub return_token: bool,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take a token from the wallet; answer with [`BorrowRun::token_taken`] or [`BorrowRun::no_token`].
    TakeToken,
    /// The token held may have been claimed and cannot be retried: drop it (never return it to the wallet), then
    /// decide again.
    DropToken,
    /// Bind the token to `lender` and send through `relay` (direct when `None`). `same_request`: resend the previous
    /// request id and spend unchanged (the idempotent retry); otherwise a fresh request id.
    Send {
        /// The lender.
        lender: PeerId,
        /// The relay.
        relay: Option<PeerId>,
        /// Resend the previous attempt unchanged.
        same_request: bool,
    },
    /// Done.
    Finish(Finish),
}

/// A side effect of an attempt's outcome, for the driver to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Do not route to `peer` before `until_ms`.
    CoolDown {
        /// The lender.
        peer: PeerId,
        /// Until then.
        until_ms: u64,
    },
    /// Do not use `peer` as a relay before `until_ms`.
    CoolDownRelay {
        /// The relay.
        peer: PeerId,
        /// Until then.
        until_ms: u64,
    },
    /// The token is gone (spent, burnt, or possibly claimed): drop it, never return it to the wallet.
    DropToken,
    /// The token is unspent but its replicas cannot form a majority now: return it to the wallet to be spent last
    /// (after every other token of its epoch), and take another.
    SetTokenAside,
}

#[derive(Clone, Debug)]
struct Pending {
    lender: PeerId,
    relay: Option<PeerId>,
    retry: bool,
    first_why: Option<String>,
}

/// One request's borrow: see the module doc.
#[derive(Clone, Debug)]
pub struct BorrowRun {
    cfg: BorrowConfig,
    /// The preferred lender (conversation stickiness), honoured until a first lender attempt settles.
    sticky: Option<PeerId>,
    tried: Vec<PeerId>,
    has_token: bool,
    token_problem: Option<NoToken>,
    pending: Option<Pending>,
    /// An ambiguous first try to repeat at the same lender.
    retry: Option<Pending>,
    /// Relays that failed this request: never chosen again for it.
    failed_relays: Vec<PeerId>,
    timeouts: usize,
    /// Tokens set aside for want of a replica majority ([`MAX_TOKEN_SWAPS`]).
    token_swaps: usize,
    /// Every attempt so far was a clean refusal (the token unspent, the lender's own or the network's answer).
    only_refusals: bool,
    last: String,
    finished: Option<Finish>,
}

impl BorrowRun {
    /// A run with no token yet.
    pub fn new(cfg: BorrowConfig) -> Self {
        Self::with_sticky(cfg, None)
    }

    /// A run with no token yet that prefers `sticky` — the lender that served the conversation before — for its
    /// first lender choice, when that lender is eligible (see the module doc).
    pub fn with_sticky(cfg: BorrowConfig, sticky: Option<PeerId>) -> Self {
        BorrowRun {
            cfg,
            sticky,
            tried: Vec::new(),
            has_token: false,
            token_problem: None,
            pending: None,
            retry: None,
            failed_relays: Vec::new(),
            timeouts: 0,
            token_swaps: 0,
            only_refusals: true,
            last: "no attempt".into(),
            finished: None,
        }
    }

    /// Lenders tried so far.
    pub fn tried(&self) -> &[PeerId] {
        &self.tried
    }

    /// The lender that served, once the run has finished served (for the driver's conversation map).
    pub fn served_by(&self) -> Option<PeerId> {
        match &self.finished {
            Some(Finish { result: Ok(()), .. }) => self.tried.last().copied(),
            _ => None,
        }
    }

    /// The driver took a token.
    pub fn token_taken(&mut self) {
        self.has_token = true;
    }

    /// The wallet had none.
    pub fn no_token(&mut self, why: NoToken) {
        self.token_problem = Some(why);
    }

    fn finish(&mut self, result: Result<(), BorrowFailure>) -> Decision {
        let finish = Finish {
            result,
            return_token: self.has_token,
        };
        self.has_token = false;
        self.finished = Some(finish.clone());
        Decision::Finish(finish)
    }

    /// The next step. `view` is read fresh for every decision (attestations and cooldowns change during a run).
    pub fn decide(&mut self, view: &RouteView<'_>, rng: &mut impl RngCore) -> Decision {
        if let Some(f) = &self.finished {
            return Decision::Finish(f.clone());
        }
        if let Some(why) = self.token_problem {
            return self.finish(Err(BorrowFailure::NoToken(why)));
        }
        if let Some(retry) = self.retry.take() {
            // The idempotent retry: same lender, same request, another relay if there is one; the same relay only
            // if it did not fail (it answered that the lender was silent), or when going direct.
            let lender = retry.lender;
            let relays = self.usable_relays(view.connected);
            let relay = routing::choose_relay(view.me, &lender, &relays, rng)
                .or(retry.relay.filter(|r| !self.failed_relays.contains(r)));
            if relay.is_none() && retry.relay.is_some() {
                // No path for the retry: the first try stays unsettled, so the token is given up as possibly
                // claimed (never spent twice).
                self.settle_ambiguous(lender, retry.first_why.unwrap_or_default());
                return Decision::DropToken;
            }
            self.pending = Some(Pending { relay, ..retry });
            return Decision::Send {
                lender,
                relay,
                same_request: true,
            };
        }
        if self.tried.len() >= self.cfg.max_attempts {
            return self.give_up();
        }
        // Lenders no usable relay reaches are passed over for this decision (in strict privacy a borrow never goes
        // direct): another lender may have one. Only when none has does the run end for want of a relay.
        let relays = self.usable_relays(view.connected);
        let mut unreachable: Vec<PeerId> = Vec::new();
        let (lender, relay) = loop {
            let skip: Vec<PeerId> = self.tried.iter().chain(&unreachable).copied().collect();
            let q = LenderQuery {
                me: view.me,
                candidates: view.candidates,
                tried: &skip,
                now_ms: view.now_ms,
                // Only for the first lender choice: once a lender attempt has settled, the run moves on by the
                // policy.
                sticky: self.sticky.as_ref().filter(|_| skip.is_empty()),
            };
            let Some(lender) = routing::choose_lender(self.cfg.policy, &q, &self.cfg.params, rng) else {
                if !unreachable.is_empty() {
                    return self.no_relay(view.connected.len());
                }
                if !self.only_refusals {
                    return self.give_up();
                }
                // Nothing was lost: say which case holds now.
                return self.finish(Err(no_lender(view, &self.cfg.params)));
            };
            let relay = routing::choose_relay(view.me, &lender, &relays, rng);
            if relay.is_none() && self.cfg.privacy == PrivacyMode::Strict {
                unreachable.push(lender);
                continue;
            }
            break (lender, relay);
        };
        if !self.has_token {
            return Decision::TakeToken;
        }
        self.pending = Some(Pending {
            lender,
            relay,
            retry: false,
            first_why: None,
        });
        Decision::Send {
            lender,
            relay,
            same_request: false,
        }
    }

    fn usable_relays(&self, connected: &[PeerId]) -> Vec<PeerId> {
        connected
            .iter()
            .filter(|p| !self.failed_relays.contains(p))
            .copied()
            .collect()
    }

    fn no_relay(&mut self, connected: usize) -> Decision {
        let failed = self.failed_relays.len();
        let retry_s = if failed > 0 {
            RELAY_COOLDOWN_MS / 1000
        } else {
            NO_RELAY_RETRY_S
        };
        self.finish(Err(BorrowFailure::NoRelay {
            connected: connected.saturating_sub(failed),
            failed,
            retry_s,
        }))
    }

    fn settle_ambiguous(&mut self, lender: PeerId, why: String) {
        self.tried.push(lender);
        self.timeouts += 1;
        self.only_refusals = false;
        self.last = format!("no answer: {why}");
        self.has_token = false;
    }

    fn give_up(&mut self) -> Decision {
        let tried = self.tried.len();
        let failure = if self.timeouts > 0 && self.timeouts == tried {
            BorrowFailure::Timeout { tried }
        } else {
            BorrowFailure::Failed {
                tried,
                last: self.last.clone(),
            }
        };
        self.finish(Err(failure))
    }

    /// Records the outcome of the last [`Decision::Send`]; returns what the driver must do about it.
    pub fn record(&mut self, result: AttemptResult, now_ms: u64, rng: &mut impl RngCore) -> Vec<Effect> {
        let Some(p) = self.pending.take() else {
            return vec![];
        };
        // The retry's own failure was the lender's (not a relay's or the network's refusal to carry it).
        let lender_failed_retry = p.retry
            && matches!(
                result,
                AttemptResult::Ambiguous {
                    relay_silent: false,
                    ..
                }
            );
        // On the idempotent retry only the lender's own answer settles it.
        let result = match result {
            AttemptResult::Refused {
                why,
                delivered: false,
                ..
            } if p.retry => AttemptResult::Ambiguous {
                why: format!("{}; retry: {why}", p.first_why.clone().unwrap_or_default()),
                relay_silent: false,
            },
            other => other,
        };
        let lost = match &result {
            AttemptResult::Served
            | AttemptResult::Refused { .. }
            | AttemptResult::NoQuorum
            | AttemptResult::RelayFailed { .. } => false,
            AttemptResult::TokenRejected { label } => BURNING_REJECTIONS.contains(&label.as_str()),
            AttemptResult::Ambiguous { .. } | AttemptResult::Spent { .. } => true,
        };
        self.only_refusals &= !lost;
        match result {
            AttemptResult::Served => {
                self.tried.push(p.lender);
                self.has_token = false;
                self.finished = Some(Finish {
                    result: Ok(()),
                    return_token: false,
                });
                vec![]
            }
            AttemptResult::Refused {
                retry_after_ms, why, ..
            } => {
                self.tried.push(p.lender);
                self.last = format!("lender: {why}");
                vec![Effect::CoolDown {
                    peer: p.lender,
                    until_ms: cooldown_until(now_ms, retry_after_ms, rng),
                }]
            }
            AttemptResult::NoQuorum if self.token_swaps < MAX_TOKEN_SWAPS => {
                self.token_swaps += 1;
                self.has_token = false;
                self.last = "lender: too few of the token's replicas answered its claim".into();
                vec![Effect::SetTokenAside]
            }
            AttemptResult::NoQuorum => {
                // Token after token found no majority: much of the group is offline. The lender is tried (not
                // cooled: it is healthy), and a run that ends here says so rather than "no headroom".
                self.tried.push(p.lender);
                self.only_refusals = false;
                self.last = "lender: too few of the token's replicas answered its claim (much of the group is offline)"
                    .into();
                vec![]
            }
            AttemptResult::TokenRejected { label } => {
                self.tried.push(p.lender);
                self.last = format!("lender: token rejected: {label}");
                if BURNING_REJECTIONS.contains(&label.as_str()) {
                    self.has_token = false;
                    vec![Effect::DropToken]
                } else {
                    vec![Effect::CoolDown {
                        peer: p.lender,
                        until_ms: cooldown_until(now_ms, None, rng),
                    }]
                }
            }
            AttemptResult::RelayFailed { why } => {
                // The relay's failure, not the lender's: the lender is not tried, the token is unspent.
                let relay = p.relay;
                self.last = format!("relay: {why}");
                let mut effects = Vec::new();
                if let Some(r) = relay {
                    self.failed_relays.push(r);
                    effects.push(Effect::CoolDownRelay {
                        peer: r,
                        until_ms: now_ms.saturating_add(RELAY_COOLDOWN_MS),
                    });
                }
                if p.retry {
                    // The idempotent retry could not go out: the first try stays unsettled, so the token is given
                    // up as possibly claimed (never spent twice).
                    self.settle_ambiguous(p.lender, p.first_why.clone().unwrap_or_default());
                    effects.push(Effect::DropToken);
                } else if self.failed_relays.len() >= MAX_RELAY_FAILURES {
                    let connected = self.failed_relays.len();
                    if let Decision::Finish(f) = self.no_relay(connected) {
                        self.finished = Some(f);
                    }
                }
                effects
            }
            AttemptResult::Ambiguous { why, relay_silent } => {
                let mut effects = Vec::new();
                if relay_silent && let Some(r) = p.relay {
                    // The relay accepted the request and went silent: the relay failed.
                    self.failed_relays.push(r);
                    effects.push(Effect::CoolDownRelay {
                        peer: r,
                        until_ms: now_ms.saturating_add(RELAY_COOLDOWN_MS),
                    });
                }
                if p.retry {
                    // It may have been claimed: never spend it again.
                    let why = format!("{}; retry: {why}", p.first_why.clone().unwrap_or_default());
                    self.settle_ambiguous(p.lender, why);
                    effects.push(Effect::DropToken);
                    if lender_failed_retry {
                        // Two relays in turn got no usable answer from the lender: the lender failed (frozen,
                        // overloaded, or answering garbage on purpose), and each borrow sent to it costs a token.
                        effects.push(Effect::CoolDown {
                            peer: p.lender,
                            until_ms: now_ms.saturating_add(LENDER_FAILED_COOLDOWN_MS),
                        });
                    }
                } else {
                    self.retry = Some(Pending {
                        retry: true,
                        first_why: Some(why),
                        ..p
                    });
                }
                effects
            }
            AttemptResult::Spent { why } => {
                self.tried.push(p.lender);
                self.has_token = false;
                let tried = self.tried.len();
                self.finished = Some(Finish {
                    result: Err(BorrowFailure::Failed {
                        tried,
                        last: format!("lender: {why}"),
                    }),
                    return_token: false,
                });
                vec![Effect::DropToken]
            }
        }
    }
}

/// Why no lender can be chosen now, with nothing lost: members with headroom cooling down (retry when the first
/// cooldown ends), or no member with headroom at all.
fn no_lender(view: &RouteView<'_>, params: &RoutingParams) -> BorrowFailure {
    let cooling: Vec<u64> = view
        .candidates
        .iter()
        .filter(|c| {
            &c.peer != view.me
                && c.headroom != crate::attestation::HeadroomBucket::None
                && c.attestation_age_ms <= params.max_age_ms
        })
        .filter_map(|c| c.cooling_until_ms.filter(|t| *t > view.now_ms))
        .collect();
    match cooling.iter().min() {
        Some(first) => BorrowFailure::LendersCooling {
            cooling: cooling.len(),
            retry_s: first.saturating_sub(view.now_ms).div_ceil(1000).max(1),
        },
        None => BorrowFailure::NoLender {
            known: view.known,
            fresh: view.candidates.len(),
            retry_s: NO_HEADROOM_RETRY_S,
        },
    }
}

/// When a refused lender may be tried again: its `Retry-After` capped at [`MAX_COOLDOWN_MS`], or the default, with
/// jitter (see [`routing::cooldown_until`]).
pub fn cooldown_until(now_ms: u64, retry_after_ms: Option<u64>, rng: &mut impl RngCore) -> u64 {
    routing::cooldown_until(
        now_ms,
        retry_after_ms.map(|r| r.min(MAX_COOLDOWN_MS)),
        DEFAULT_COOLDOWN_MS,
        rng,
    )
}

#[cfg(test)]
mod tests;
