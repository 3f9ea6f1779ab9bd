//! The borrower: what a member's node does when its own capacity is gone (docs/design.md §6 steps 2–6).
//!
//! The rules — which lender and relay, what a refusal, a rejected token or a missing answer mean for the token, when
//! to cool a lender down and when to give up — are `protocol`'s [`BorrowRun`] state machine, which the simulator
//! drives too. This driver only moves data: it reads the routing view from the PeerBook, takes and returns tokens
//! through the member actor, binds the token to the chosen lender, seals the request to the lender's OHTTP key
//! (RFC 9458), sends it through the relay, and reports each attempt's [`AttemptResult`] back to the machine.
//!
//! **Which hop failed** (docs/design.md §6) is read off the relay stream (`net::streams`): no stream opened in
//! time, the request not written, or no [`RelayFrame::Accepted`] in time — the request never left this node:
//! `RelayFailed`, token unspent, and the relay is marked unhealthy until it answers a ping; the relay's refusal to
//! forward — `RelayFailed`; the relay answering that it could not reach the lender — the lender's refusal before any
//! claim; accepted and then silent — ambiguous with the relay to blame; the relay answering that the lender was
//! silent — ambiguous with nobody blamed yet.
//!
//! **Conversation stickiness**: a borrow that names a conversation prefers the lender that served its last turn
//! ([`Conversations`], a bounded map of hashed names; the run's `with_sticky`), and a served borrow records its
//! lender there.

use std::sync::Arc;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::bhttp;
pub use lendmesh_protocol::borrow::PrivacyMode;
use lendmesh_protocol::borrow::{
    AttemptResult, BorrowConfig, BorrowFailure, BorrowRun, Decision, Effect, RouteView,
};
use lendmesh_protocol::capability::Need;
use lendmesh_protocol::routing::{self as routing_rules, Offer};
use lendmesh_protocol::routing::{Candidate, Policy, RoutingParams};
use lendmesh_protocol::scrub::{self, ApiFamily, ScrubSettings};
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wire::{
    self, BorrowRefusal, BorrowResponse, DeliveryFailure, HttpRequest, InnerBorrowRequest,
    InnerBorrowResponse, RelayFrame, RelayRequest, RelayResponse,
};
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::metrics::NodeMetrics;
use crate::net::NetworkHandle;
use crate::net::streams::{LendError, RELAY_PROTOCOL, StreamError};
pub use crate::roles::borrowed::BorrowedResponse;
use crate::roles::borrowed::{SealedReader, SealedRequest};
use crate::roles::member::{MemberHandle, NoToken};
use crate::roles::peerbook::{AttemptOutcome, PeerBookHandle};
use crate::roles::sticky::{ConversationKey, Conversations};

/// How often a borrower waiting for a relay's answer checks that the relay still answers pings.
const RELAY_HEALTH_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// Why a borrow failed; each maps to an HTTP status and a sentence for the tool.
#[derive(Debug, thiserror::Error)]
pub enum BorrowError {
    /// No member has headroom.
    #[error(
        "no member has headroom: {fresh} fresh attestations from {known} other members, none with headroom; retry after ~{retry_s} s"
    )]
    NoLender {
        /// Roster members besides this node.
        known: usize,
        /// Fresh attestations with headroom or not.
        fresh: usize,
        /// Suggested wait.
        retry_s: u64,
    },
    /// No member's upstream serves the request's API or model.
    #[error(
        "no member of the group serves {what}: none of the {lenders} members with a fresh attestation advertises an upstream for it (check the model name, or ask a member who has it to list it in its upstream's `models`)"
    )]
    NotServed {
        /// The API and model asked for.
        what: String,
        /// Members with a fresh attestation.
        lenders: usize,
    },
    /// Members with headroom exist, but all are cooling down after refusals or failures, or are not answering.
    #[error(
        "{cooling} members with headroom are cooling down after refusals or failures (or are not answering); the first is back in ~{retry_s} s"
    )]
    LendersCooling {
        /// Lenders with headroom cooling down.
        cooling: usize,
        /// Seconds until the first is back.
        retry_s: u64,
    },
    /// No relay can be used and privacy mode is strict.
    #[error(
        "no relay available: {connected} usable members connected ({failed} relays failed this request; a relay must differ from this node and the lender, answer pings and not be cooling down); strict privacy mode refuses to go direct"
    )]
    NoRelay {
        /// Usable connected members.
        connected: usize,
        /// Relays that failed this request.
        failed: usize,
        /// Suggested wait.
        retry_s: u64,
    },
    /// The wallet is empty; a refill is due at `refill_at_ms`.
    #[error("{}", empty_message(*refill_at_ms))]
    WalletEmpty {
        /// When the next refill attempt is due (ms since the Unix epoch), if one is planned.
        refill_at_ms: Option<u64>,
    },
    /// This member's quota for the current epoch is spent.
    #[error("{}", quota_message(*next_epoch_starts_at_ms))]
    QuotaExhausted {
        /// When the next epoch starts (ms since the Unix epoch), if known.
        next_epoch_starts_at_ms: Option<u64>,
    },
    /// The lender did not answer in time.
    #[error("the lender did not answer in time (tried {tried} lenders); retry")]
    Timeout {
        /// Lenders tried.
        tried: usize,
    },
    /// Every attempt failed.
    #[error("borrowing failed after trying {tried} lenders: {last}")]
    Failed {
        /// Lenders tried.
        tried: usize,
        /// The last failure.
        last: String,
    },
}

fn empty_message(refill_at_ms: Option<u64>) -> String {
    match refill_at_ms {
        Some(at) => {
            let secs = at.saturating_sub(now_ms()).div_ceil(1000);
            format!(
                "the wallet has no tokens left; the next refill from the issuer is due in {secs} s (earlier refills failed if that is not 0: is the admin node reachable?)"
            )
        }
        None => "the wallet has no tokens left and no refill is planned; see the node's log".into(),
    }
}

fn quota_message(next: Option<u64>) -> String {
    match next {
        Some(at) => {
            let secs = at.saturating_sub(now_ms()).div_ceil(1000);
            format!(
                "this member's token quota for the current epoch is spent; the next epoch starts in {secs} s (at {at} ms since the Unix epoch) with a fresh quota"
            )
        }
        None => {
            "this member's token quota for the current epoch is spent; no next epoch is announced yet".into()
        }
    }
}

impl From<BorrowFailure> for BorrowError {
    fn from(f: BorrowFailure) -> Self {
        match f {
            BorrowFailure::NoLender {
                known,
                fresh,
                retry_s,
            } => BorrowError::NoLender {
                known,
                fresh,
                retry_s,
            },
            BorrowFailure::LendersCooling { cooling, retry_s } => {
                BorrowError::LendersCooling { cooling, retry_s }
            }
            BorrowFailure::NoRelay {
                connected,
                failed,
                retry_s,
            } => BorrowError::NoRelay {
                connected,
                failed,
                retry_s,
            },
            BorrowFailure::NoToken(NoToken::Empty { refill_at_ms }) => {
                BorrowError::WalletEmpty { refill_at_ms }
            }
            BorrowFailure::NoToken(NoToken::QuotaExhausted {
                next_epoch_starts_at_ms,
            }) => BorrowError::QuotaExhausted {
                next_epoch_starts_at_ms,
            },
            BorrowFailure::Timeout { tried } => BorrowError::Timeout { tried },
            BorrowFailure::Failed { tried, last } => BorrowError::Failed { tried, last },
        }
    }
}

impl BorrowError {
    /// A machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            BorrowError::NoLender { .. } => "no_lender_available",
            BorrowError::NotServed { .. } => "no_capable_lender",
            BorrowError::LendersCooling { .. } => "lenders_cooling_down",
            BorrowError::NoRelay { .. } => "no_relay_available",
            BorrowError::WalletEmpty { .. } => "wallet_empty",
            BorrowError::QuotaExhausted { .. } => "quota_exhausted",
            BorrowError::Timeout { .. } => "lender_timeout",
            BorrowError::Failed { .. } => "borrow_failed",
        }
    }

    /// The HTTP status for the tool.
    pub fn status(&self) -> u16 {
        match self {
            BorrowError::NoLender { .. }
            | BorrowError::LendersCooling { .. }
            | BorrowError::NoRelay { .. }
            | BorrowError::WalletEmpty { .. } => 503,
            BorrowError::QuotaExhausted { .. } => 429,
            // Not found in this group: retrying does not help until a member shares it.
            BorrowError::NotServed { .. } => 404,
            BorrowError::Timeout { .. } => 504,
            BorrowError::Failed { .. } => 502,
        }
    }

    /// Seconds the tool may wait before retrying.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            BorrowError::NoLender { retry_s, .. }
            | BorrowError::LendersCooling { retry_s, .. }
            | BorrowError::NoRelay { retry_s, .. } => Some(*retry_s),
            // A refill takes an issuer round trip after it is due: at least a second.
            BorrowError::WalletEmpty { refill_at_ms } => {
                Some(refill_at_ms.map_or(5, |at| at.saturating_sub(now_ms()).div_ceil(1000).max(1)))
            }
            BorrowError::QuotaExhausted {
                next_epoch_starts_at_ms,
            } => Some(
                next_epoch_starts_at_ms.map_or(60, |at| at.saturating_sub(now_ms()).div_ceil(1000).max(1)),
            ),
            _ => None,
        }
    }
}

/// The borrower's handles and settings.
#[derive(Clone, Debug)]
pub struct Borrower {
    /// This node.
    pub me: PeerId,
    /// Routing information.
    pub peerbook: PeerBookHandle,
    /// Tokens.
    pub member: MemberHandle,
    /// The network.
    pub net: NetworkHandle,
    /// Lender choice.
    pub policy: Policy,
    /// Routing tunables.
    pub params: RoutingParams,
    /// Relay requirement.
    pub privacy: PrivacyMode,
    /// NodeMetrics.
    pub counters: Arc<NodeMetrics>,
    /// Which lender served each conversation last (conversation stickiness), shared by every borrow of the node.
    pub conversations: Arc<Conversations>,
    /// What of a tool's request may leave for a lender (`[privacy] redact_environment`).
    pub scrub: ScrubSettings,
}

impl Borrower {
    /// What of the tool's request leaves for a lender (`protocol::scrub`, docs/design.md §9.1): the headers the
    /// request's API needs, nothing else; the body's identifying fields replaced by the conversation's pseudonym or
    /// removed, and the environment a tool wrote into the prompt withheld (unless `[privacy] redact_environment` is
    /// off). The conversation is the one the tool named, else the tool's session header or the conversation's start;
    /// its key stays on this node.
    fn outgoing(&self, http: HttpRequest, named: Option<&str>) -> (HttpRequest, Option<ConversationKey>) {
        let family = ApiFamily::of(&http.path_and_query, &http.headers);
        let body = scrub::Body::parse(&http.body);
        let key = match named {
            Some(name) => Some(self.conversations.key(name.as_bytes())),
            None => scrub::conversation_hint(family, &http.headers, &body)
                .map(|h| self.conversations.key(&h.key())),
        };
        let pseudonym = match &key {
            Some(k) => self.conversations.pseudonym(k),
            None => {
                let mut one_off = [0u8; 16];
                rand_core::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut one_off);
                hex::encode(one_off)
            }
        };
        let (body, report) = scrub::scrub_body(family, &http.body, body, &pseudonym, self.scrub);
        for (what, n) in [
            ("field", report.fields),
            ("environment", report.environment),
            ("not_json", u32::from(report.not_json)),
        ] {
            if n > 0 {
                self.counters
                    .scrubbed
                    .get_or_create(&crate::metrics::OutcomeLabel { outcome: what.into() })
                    .inc_by(u64::from(n));
            }
        }
        let outgoing = HttpRequest {
            headers: scrub::borrowed_headers(family, &http.headers),
            method: http.method,
            path_and_query: http.path_and_query,
            body,
        };
        (outgoing, key)
    }

    /// Borrows one request, driving `protocol`'s [`BorrowRun`]. Returns once the lender's answer has begun (its
    /// head); the body streams from the lender. Failover to another lender happens only before that.
    ///
    /// `conversation` (the gateway's checked `Lendmesh-Conversation` header): the lender that served this
    /// conversation last is preferred while it is eligible, and the lender that serves is remembered for it.
    pub async fn borrow(
        &self,
        http: HttpRequest,
        conversation: Option<&str>,
    ) -> Result<BorrowedResponse, BorrowError> {
        let started = std::time::Instant::now();
        let (http, conversation) = self.outgoing(http, conversation);
        let need = Need::of(
            &http.path_and_query,
            &http.headers,
            &scrub::Body::parse(&http.body),
        );
        // A request no member serves is refused at once, before any token is taken.
        let first = self.peerbook.routing().await;
        if routing_rules::nobody_serves(&need, &offers(&first)) {
            let e = BorrowError::NotServed {
                what: need.describe(),
                lenders: first.lenders.len(),
            };
            self.counters.inc(&self.counters.borrows_failed);
            NodeMetrics::outcome(&self.counters.borrows, e.code());
            return Err(e);
        }
        let mut next_reset_ms: Option<u64>;
        let http_bytes = bhttp::encode_request(&http);
        let digest = wire::request_digest(&http_bytes);
        let sticky = conversation
            .as_ref()
            .and_then(|key| self.conversations.lender(key, now_ms()));
        let config = BorrowConfig {
            policy: self.policy,
            params: self.params,
            privacy: self.privacy,
            ..BorrowConfig::default()
        };
        let mut run = BorrowRun::with_sticky(config, sticky);
        let mut rng = rand::rngs::OsRng;
        let mut token: Option<WalletToken> = None;
        let mut sent: Option<(InnerBorrowRequest, Vec<u8>)> = None;
        let mut served: Option<BorrowedResponse> = None;
        // How the token in hand ends if it is not put back (`store::ledger`): after the last attempt's result.
        let mut outcome = String::from("given_up:unsent");
        let finish = loop {
            let view = self.peerbook.routing().await;
            // Only lenders that serve the request's API and model, each with that upstream's headroom.
            let capable = capable(&need, &view);
            next_reset_ms = capable.next_reset_ms;
            let candidates: Vec<Candidate> = capable.candidates;
            let route = RouteView {
                me: &self.me,
                candidates: &candidates,
                connected: &view.connected,
                known: view.known,
                now_ms: now_ms(),
            };
            match run.decide(&route, &mut rng) {
                Decision::DropToken => {
                    if let Some(t) = token.take() {
                        self.member.settle(&t, "given_up:ambiguous".into()).await;
                    }
                }
                Decision::TakeToken => match self.member.take().await {
                    Ok(t) => {
                        token = Some(t);
                        run.token_taken();
                    }
                    Err(why) => run.no_token(why),
                },
                Decision::Send {
                    lender,
                    relay,
                    same_request,
                } => {
                    let key_config = view
                        .lenders
                        .iter()
                        .find(|l| l.candidate.peer == lender)
                        .map(|l| l.key_config.clone())
                        .or_else(|| sent.as_ref().map(|(_, k)| k.clone()))
                        .unwrap_or_default();
                    let inner = match (&sent, same_request, &token) {
                        (Some((inner, _)), true, _) => inner.clone(),
                        (_, _, Some(t)) => {
                            let mut request_id = [0u8; 16];
                            rand_core::RngCore::fill_bytes(&mut rng, &mut request_id);
                            InnerBorrowRequest {
                                request_id,
                                spend: t.spend(lender, digest, now_ms()),
                                http_request: http_bytes.clone(),
                            }
                        }
                        _ => {
                            warn!("borrow run asked to send without a token; giving up");
                            break run_failure("no token to send");
                        }
                    };
                    debug!(
                        lender = %lender.short(),
                        relay = ?relay.map(|r| r.short()),
                        retry = same_request,
                        candidates = candidates.len(),
                        sticky = sticky.is_some(),
                        "borrow attempt"
                    );
                    let (result, response) = self.attempt(lender, relay, &key_config, &inner).await;
                    sent = Some((inner, key_config));
                    self.report(lender, relay, &result);
                    outcome = settled_as(&result);
                    if let AttemptResult::Served = result {
                        served = response;
                    }
                    for effect in run.record(result, now_ms(), &mut rng) {
                        match effect {
                            Effect::CoolDown { peer, until_ms } => {
                                self.peerbook.cool_down(peer, until_ms).await
                            }
                            Effect::CoolDownRelay { peer, until_ms } => {
                                self.peerbook.cool_down_relay(peer, until_ms).await
                            }
                            Effect::DropToken => {
                                if let Some(t) = token.take() {
                                    self.member.settle(&t, outcome.clone()).await;
                                }
                            }
                            Effect::SetTokenAside => {
                                if let Some(t) = token.take() {
                                    self.member.set_aside(t).await;
                                }
                            }
                        }
                    }
                }
                Decision::Finish(finish) => break finish,
            }
        };
        if let Some(t) = token.take() {
            if finish.return_token {
                self.member.put_back(t).await;
            } else {
                self.member.settle(&t, outcome).await;
            }
        }
        let result = match (finish.result, served) {
            (Ok(()), Some(resp)) => Ok(resp),
            (Ok(()), None) => Err(BorrowError::Failed {
                tried: run.tried().len(),
                last: "served without a response".into(),
            }),
            (Err(f), _) => Err(match BorrowError::from(f) {
                // Capable lenders with no headroom: retry when the first of them resets.
                BorrowError::NoLender {
                    known,
                    fresh,
                    retry_s,
                } => BorrowError::NoLender {
                    known,
                    fresh,
                    retry_s: next_reset_ms.map_or(retry_s, |at| {
                        at.saturating_sub(now_ms()).div_ceil(1000).clamp(1, 24 * 3600)
                    }),
                },
                e => e,
            }),
        };
        match &result {
            Ok(_) => {
                if let (Some(key), Some(lender)) = (conversation, run.served_by()) {
                    let moved = sticky.is_some_and(|s| s != lender);
                    debug!(lender = %lender.short(), remembered = sticky.is_some(), moved, "conversation served");
                    self.conversations.record(key, lender, now_ms());
                }
                self.counters.inc(&self.counters.borrows_ok);
                NodeMetrics::outcome(&self.counters.borrows, "ok");
                self.counters
                    .borrow_latency
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                self.counters.inc(&self.counters.borrows_failed);
                NodeMetrics::outcome(&self.counters.borrows, e.code());
            }
        }
        result
    }

    /// Tells the PeerBook how an attempt went (per-peer outcomes on `/v1/peers`).
    fn report(&self, lender: PeerId, relay: Option<PeerId>, result: &AttemptResult) {
        let (outcome, delivered) = match result {
            AttemptResult::Served => (AttemptOutcome::Served, true),
            AttemptResult::Refused { delivered, why, .. } => {
                debug!(lender = %lender.short(), %why, "lender refused before claiming");
                (AttemptOutcome::Refused, *delivered)
            }
            AttemptResult::NoQuorum => {
                debug!(lender = %lender.short(), "too few of the token's replicas answered; trying another token");
                (AttemptOutcome::Refused, true)
            }
            AttemptResult::TokenRejected { label } => {
                warn!(lender = %lender.short(), %label, "token rejected");
                (AttemptOutcome::Failed, true)
            }
            AttemptResult::Spent { .. } => (AttemptOutcome::Failed, true),
            AttemptResult::RelayFailed { why } => {
                debug!(relay = ?relay.map(|r| r.short()), %why, "the relay failed; trying another with the same token");
                self.peerbook
                    .record_outcome(lender, relay, AttemptOutcome::NotSent, false);
                return;
            }
            AttemptResult::Ambiguous { why, relay_silent } => {
                warn!(lender = %lender.short(), relay = ?relay.map(|r| r.short()), relay_silent, %why,
                    "no answer settles whether the lender claimed the token");
                (AttemptOutcome::Failed, !relay_silent)
            }
        };
        self.peerbook.record_outcome(lender, relay, outcome, delivered);
    }

    /// One attempt: seal (chunked OHTTP), send through the relay (or direct), open the head of the answer.
    async fn attempt(
        &self,
        lender: PeerId,
        relay: Option<PeerId>,
        key_config: &[u8],
        inner: &InnerBorrowRequest,
    ) -> (AttemptResult, Option<BorrowedResponse>) {
        let sealed = match wire::encode(inner).map_err(|e| e.to_string()) {
            Ok(plain) => SealedRequest::seal(key_config, &plain).await,
            Err(e) => Err(e),
        };
        let mut sealed = match sealed {
            Ok(r) => r,
            Err(e) => {
                return (
                    AttemptResult::Refused {
                        retry_after_ms: None,
                        why: format!("cannot seal the request to its key: {e}"),
                        delivered: false,
                    },
                    None,
                );
            }
        };
        let bytes = std::mem::take(&mut sealed.bytes);
        let delivered = match relay {
            Some(relay) => self.via_relay(relay, lender, bytes).await,
            None => self.direct(lender, bytes).await,
        };
        let stream = match delivered {
            Ok(s) => s,
            Err(a) => return (a, None),
        };
        let streams = self.net.streams();
        let idle = streams.timeouts().idle;
        let mut reader: SealedReader = match sealed.open(stream) {
            Ok(r) => r,
            Err(e) => {
                return (
                    AttemptResult::Ambiguous {
                        why: format!("cannot open the answer: {e}"),
                        relay_silent: false,
                    },
                    None,
                );
            }
        };
        let head = streams
            .recv::<InnerBorrowResponse, _>(&mut reader, &lender, idle)
            .await;
        match head {
            Err(e) => (
                AttemptResult::Ambiguous {
                    why: format!("unreadable answer: {e}"),
                    relay_silent: false,
                },
                None,
            ),
            Ok(InnerBorrowResponse::Refused {
                reason,
                retry_after_ms,
            }) => (refusal(reason, retry_after_ms), None),
            Ok(InnerBorrowResponse::Served) => {
                match BorrowedResponse::open(reader, streams.clone(), lender, &self.counters).await {
                    Ok(resp) => (AttemptResult::Served, Some(resp)),
                    // The lender took the token and its upstream answered, but the answer broke off before its head.
                    Err(e) => (
                        AttemptResult::Spent {
                            why: format!("its answer broke off before its head: {e}"),
                        },
                        None,
                    ),
                }
            }
        }
    }

    /// Through `relay` on a `/lendmesh/relay/2` stream: the stream, positioned at the lender's sealed answer, or what
    /// the attempt means.
    async fn via_relay(
        &self,
        relay: PeerId,
        lender: PeerId,
        sealed: Vec<u8>,
    ) -> Result<libp2p::Stream, AttemptResult> {
        let streams = self.net.streams();
        let timeouts = streams.timeouts();
        // Until the relay acknowledges, the request has not left this node: the relay failed, the token is unspent.
        let never_left = |what: &str, e: &StreamError| {
            if !matches!(e, StreamError::Stopped) {
                self.peerbook.unhealthy(relay);
            }
            AttemptResult::RelayFailed {
                why: format!("{what}: {e}"),
            }
        };
        let mut stream = streams
            .open(relay, RELAY_PROTOCOL)
            .await
            .map_err(|e| never_left("no stream to the relay", &e))?;
        streams
            .send(&mut stream, &relay, &RelayRequest { lender, sealed })
            .await
            .map_err(|e| never_left("the request could not be written to the relay", &e))?;
        match streams
            .recv::<RelayFrame, _>(&mut stream, &relay, timeouts.ack)
            .await
        {
            Ok(RelayFrame::Accepted) => {}
            Ok(RelayFrame::Answer(answer)) => return relay_answer(answer).map(|()| stream),
            Err(e) => return Err(never_left("the relay did not acknowledge the request", &e)),
        }
        // Accepted: from here on the request may reach the lender. The relay waits for the lender's stream and
        // first byte; this waits for the relay a little longer. This side stays open (closing it tells the relay
        // the tool went away).
        // A relay that froze after accepting would hold the tool for the whole first-byte limit (minutes): while
        // the answer is awaited, a relay that `protocol::health` leaves out (silent to pings while another member
        // answers) ends the wait as a silent relay.
        let within = timeouts.open + timeouts.first_byte + std::time::Duration::from_secs(1);
        let received = {
            let answer = streams.recv::<RelayFrame, _>(&mut stream, &relay, within);
            tokio::pin!(answer);
            let mut check = tokio::time::interval(RELAY_HEALTH_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            check.tick().await;
            loop {
                tokio::select! {
                    r = &mut answer => break Some(r),
                    _ = check.tick() => {
                        if self.peerbook.silent(relay).await {
                            break None;
                        }
                    }
                }
            }
        };
        match received {
            Some(Ok(RelayFrame::Answer(answer))) => relay_answer(answer).map(|()| stream),
            Some(Ok(RelayFrame::Accepted)) => Err(AttemptResult::Ambiguous {
                why: "the relay acknowledged twice and sent no answer".into(),
                relay_silent: true,
            }),
            Some(Err(e)) => Err(AttemptResult::Ambiguous {
                why: format!("the relay accepted the request, then: {e}"),
                relay_silent: true,
            }),
            None => Err(AttemptResult::Ambiguous {
                why: "the relay accepted the request, then stopped answering pings".into(),
                relay_silent: true,
            }),
        }
    }

    /// Straight to the lender (best-effort privacy, no relay) on a `/lendmesh/borrow/2` stream.
    async fn direct(&self, lender: PeerId, sealed: Vec<u8>) -> Result<libp2p::Stream, AttemptResult> {
        match self.net.streams().lend(lender, sealed).await {
            Ok((BorrowResponse::Sealed, stream)) => Ok(stream),
            Ok((BorrowResponse::Failed(f), _)) => Err(delivery_failure(f)),
            // Nothing was written: the lender never saw it.
            Err(e @ LendError::NotOpened(_)) => {
                if !matches!(e, LendError::NotOpened(StreamError::Stopped)) {
                    self.peerbook.unhealthy(lender);
                }
                Err(AttemptResult::Refused {
                    retry_after_ms: None,
                    why: e.to_string(),
                    delivered: false,
                })
            }
            Err(e @ LendError::NoHead(_)) => Err(AttemptResult::Ambiguous {
                why: e.to_string(),
                relay_silent: false,
            }),
        }
    }
}

/// The relay's answer frame: the sealed answer follows, or why not.
fn relay_answer(answer: RelayResponse) -> Result<(), AttemptResult> {
    match answer {
        RelayResponse::Delivered => Ok(()),
        RelayResponse::Failed(f) => Err(delivery_failure(f)),
    }
}

/// What a lender's refusal means to the borrow machine.
fn refusal(reason: BorrowRefusal, retry_after_ms: Option<u64>) -> AttemptResult {
    match reason {
        BorrowRefusal::NoHeadroom => AttemptResult::Refused {
            retry_after_ms,
            why: "no headroom".into(),
            delivered: true,
        },
        BorrowRefusal::UpstreamRefused { status } => AttemptResult::Refused {
            retry_after_ms,
            why: format!("its upstream refused ({status})"),
            delivered: true,
        },
        BorrowRefusal::TokenRejected(label) => AttemptResult::TokenRejected { label },
        BorrowRefusal::UpstreamFailed(e) => AttemptResult::Spent {
            why: format!("its upstream failed: {e}"),
        },
        BorrowRefusal::BadRequest(e) => AttemptResult::Spent {
            why: format!("it could not read the request: {e}"),
        },
        BorrowRefusal::AlreadyServed => AttemptResult::Spent {
            why: "it served this request to an earlier attempt whose answer was lost on the way".into(),
        },
        BorrowRefusal::NoQuorum => AttemptResult::NoQuorum,
        BorrowRefusal::NotServed => AttemptResult::Refused {
            retry_after_ms,
            why: "none of its upstreams serves this API or model".into(),
            delivered: true,
        },
    }
}

/// The lenders of `view` as `protocol::routing` takes them.
fn offers(view: &crate::roles::peerbook::RoutingView) -> Vec<Offer<'_>> {
    view.lenders
        .iter()
        .map(|l| Offer {
            peer: l.candidate.peer,
            capabilities: &l.capabilities,
            attestation_age_ms: l.candidate.attestation_age_ms,
            cooling_until_ms: l.candidate.cooling_until_ms,
        })
        .collect()
}

/// The lenders of `view` that serve `need` (`protocol::capability`).
fn capable(need: &Need, view: &crate::roles::peerbook::RoutingView) -> routing_rules::Capable {
    routing_rules::candidates_for(need, &offers(view))
}

fn run_failure(why: &str) -> lendmesh_protocol::borrow::Finish {
    lendmesh_protocol::borrow::Finish {
        result: Err(BorrowFailure::Failed {
            tried: 0,
            last: why.into(),
        }),
        return_token: true,
    }
}

fn delivery_failure(f: DeliveryFailure) -> AttemptResult {
    match f {
        // The relay refused to forward: the lender never saw the request.
        DeliveryFailure::RelayBusy => AttemptResult::RelayFailed {
            why: "the relay is busy".into(),
        },
        DeliveryFailure::BadLender => AttemptResult::RelayFailed {
            why: "the relay does not know the lender as an active member".into(),
        },
        // The relay could not reach the lender, or the lender refused before opening it.
        DeliveryFailure::LenderUnreachable => AttemptResult::Refused {
            retry_after_ms: None,
            why: "the relay cannot reach it".into(),
            delivered: false,
        },
        DeliveryFailure::StaleKeyConfig => AttemptResult::Refused {
            retry_after_ms: None,
            why: "it could not open the request (its key changed)".into(),
            delivered: false,
        },
        DeliveryFailure::LenderBusy => AttemptResult::Refused {
            retry_after_ms: None,
            why: "it is busy".into(),
            delivered: false,
        },
        // The request may have reached the lender; the relay itself answered.
        DeliveryFailure::LenderTimeout => AttemptResult::Ambiguous {
            why: "the lender did not answer the relay".into(),
            relay_silent: false,
        },
    }
}

/// The ledger line of a token that an attempt's result leaves spent or gone (`store::ledger`).
fn settled_as(result: &AttemptResult) -> String {
    match result {
        AttemptResult::Served => "served".into(),
        AttemptResult::Spent { .. } => "given_up:spent_elsewhere".into(),
        // The label is the lender's word: kept only when it is a plain name, so the ledger's keys stay bounded.
        AttemptResult::TokenRejected { label }
            if label.len() <= 32 && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            format!("given_up:rejected:{label}")
        }
        AttemptResult::TokenRejected { .. } => "given_up:rejected:other".into(),
        AttemptResult::Ambiguous { .. } | AttemptResult::RelayFailed { .. } => "given_up:ambiguous".into(),
        AttemptResult::Refused { .. } | AttemptResult::NoQuorum => "given_up:unsettled".into(),
    }
}
