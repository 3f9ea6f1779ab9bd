//! The borrower: what a member's node does when its own capacity is gone (docs/design.md §6 steps 2–6).
//!
//! The rules — which lender and relay, what a refusal, a rejected token or a missing answer mean for the token, when
//! to cool a lender down and when to give up — are `protocol`'s [`BorrowRun`] state machine, which the simulator
//! drives too. This driver only moves data: it reads the routing view from the PeerBook, takes and returns tokens
//! through the member actor, binds the token to the chosen lender, seals the request to the lender's OHTTP key
//! (RFC 9458), sends it through the relay, and reports each attempt's [`AttemptResult`] back to the machine.

use std::sync::Arc;

use lendmesh_protocol::PeerId;
pub use lendmesh_protocol::borrow::PrivacyMode;
use lendmesh_protocol::borrow::{
    AttemptResult, BorrowConfig, BorrowFailure, BorrowRun, Decision, Effect, RouteView,
};
use lendmesh_protocol::routing::{Candidate, Policy, RoutingParams};
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wire::{
    self, BorrowRefusal, BorrowRequest, BorrowResponse, DeliveryFailure, HttpRequest, HttpResponse,
    InnerBorrowRequest, InnerBorrowResponse, RelayRequest, RelayResponse,
};
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::metrics::NodeMetrics;
use crate::net::{NetError, NetworkHandle};
use crate::roles::member::{MemberHandle, NoToken};
use crate::roles::peerbook::{AttemptOutcome, PeerBookHandle};

/// Why a borrow failed; each maps to an HTTP status and a sentence for the tool.
#[derive(Debug, thiserror::Error)]
pub enum BorrowError {
    /// No peer has headroom.
    #[error(
        "no peer has headroom; {known} peers known, {fresh} fresh attestations; retry after ~{retry_s} s"
    )]
    NoLender {
        /// Roster members besides this node.
        known: usize,
        /// Fresh attestations with headroom or not.
        fresh: usize,
        /// Suggested wait.
        retry_s: u64,
    },
    /// No relay is connected and privacy mode is strict.
    #[error(
        "no relay available: {connected} members connected, and a relay must differ from this node and the lender; strict privacy mode refuses to go direct"
    )]
    NoRelay {
        /// Connected members.
        connected: usize,
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
            BorrowFailure::NoRelay { connected } => BorrowError::NoRelay { connected },
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
            BorrowError::NoLender { .. } | BorrowError::NoRelay { .. } | BorrowError::WalletEmpty { .. } => 503,
            BorrowError::QuotaExhausted { .. } => 429,
            BorrowError::Timeout { .. } => 504,
            BorrowError::Failed { .. } => 502,
        }
    }

    /// Seconds the tool may wait before retrying.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            BorrowError::NoLender { retry_s, .. } => Some(*retry_s),
            // A refill takes an issuer round trip after it is due: at least a second.
            BorrowError::WalletEmpty { refill_at_ms } => Some(
                refill_at_ms.map_or(5, |at| at.saturating_sub(now_ms()).div_ceil(1000).max(1)),
            ),
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
}

impl Borrower {
    /// Borrows one request, driving `protocol`'s [`BorrowRun`].
    pub async fn borrow(&self, http: HttpRequest) -> Result<HttpResponse, BorrowError> {
        let started = std::time::Instant::now();
        let http_bytes = wire::encode(&http).map_err(|e| BorrowError::Failed {
            tried: 0,
            last: e.to_string(),
        })?;
        let digest = wire::request_digest(&http_bytes);
        let mut run = BorrowRun::new(BorrowConfig {
            policy: self.policy,
            params: self.params,
            privacy: self.privacy,
            ..BorrowConfig::default()
        });
        let mut rng = rand::rngs::OsRng;
        let mut token: Option<WalletToken> = None;
        let mut sent: Option<(InnerBorrowRequest, Vec<u8>)> = None;
        let mut served: Option<HttpResponse> = None;
        let finish = loop {
            let view = self.peerbook.routing().await;
            let candidates: Vec<Candidate> = view.lenders.iter().map(|l| l.candidate.clone()).collect();
            let route = RouteView {
                me: &self.me,
                candidates: &candidates,
                connected: &view.connected,
                known: view.known,
                now_ms: now_ms(),
            };
            match run.decide(&route, &mut rng) {
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
                    let (result, response) = self.attempt(lender, relay, &key_config, &inner).await;
                    sent = Some((inner, key_config));
                    self.report(lender, relay, &result);
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
                            Effect::DropToken => token = None,
                        }
                    }
                }
                Decision::Finish(finish) => break finish,
            }
        };
        if let Some(t) = token.take()
            && finish.return_token
        {
            self.member.put_back(t).await;
        }
        let result = match (finish.result, served) {
            (Ok(()), Some(resp)) => Ok(resp),
            (Ok(()), None) => Err(BorrowError::Failed {
                tried: run.tried().len(),
                last: "served without a response".into(),
            }),
            (Err(f), _) => Err(BorrowError::from(f)),
        };
        match &result {
            Ok(_) => {
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
            AttemptResult::Ambiguous { why } => {
                warn!(lender = %lender.short(), %why, "no answer settles whether the lender claimed the token");
                (AttemptOutcome::Failed, false)
            }
        };
        self.peerbook.record_outcome(lender, relay, outcome, delivered);
    }

    /// One attempt: seal, send through the relay (or direct), open the answer.
    async fn attempt(
        &self,
        lender: PeerId,
        relay: Option<PeerId>,
        key_config: &[u8],
        inner: &InnerBorrowRequest,
    ) -> (AttemptResult, Option<HttpResponse>) {
        let sealed = match wire::encode(inner).map_err(|e| e.to_string()).and_then(|bytes| {
            let client = ohttp::ClientRequest::from_encoded_config(key_config).map_err(|e| e.to_string())?;
            client.encapsulate(&bytes).map_err(|e| e.to_string())
        }) {
            Ok(s) => s,
            Err(e) => {
                return (
                    AttemptResult::Refused {
                        retry_after_ms: None,
                        why: format!("cannot seal to the lender: {e}"),
                        delivered: false,
                    },
                    None,
                );
            }
        };
        let (enc, client_response) = sealed;
        let delivered = match relay {
            Some(relay) => match self.net.relay(relay, RelayRequest { lender, sealed: enc }).await {
                Ok(RelayResponse::Delivered { sealed }) => Ok(sealed),
                Ok(RelayResponse::Failed(f)) => Err(delivery_failure(f)),
                // The relay itself could not be reached: the request never left this node.
                Err(e @ NetError::Unreachable { .. }) => {
                    Err(AttemptResult::RelayFailed { why: e.to_string() })
                }
                Err(e) => Err(net_failure(e)),
            },
            None => match self.net.borrow(lender, BorrowRequest { sealed: enc }).await {
                Ok(BorrowResponse::Sealed { sealed }) => Ok(sealed),
                Ok(BorrowResponse::Failed(f)) => Err(delivery_failure(f)),
                Err(e) => Err(net_failure(e)),
            },
        };
        let sealed = match delivered {
            Ok(s) => s,
            Err(a) => return (a, None),
        };
        let inner_resp = match client_response
            .decapsulate(&sealed)
            .map_err(|e| e.to_string())
            .and_then(|plain| wire::decode::<InnerBorrowResponse>(&plain).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                return (
                    AttemptResult::Ambiguous {
                        why: format!("unreadable response: {e}"),
                    },
                    None,
                );
            }
        };
        match inner_resp {
            InnerBorrowResponse::Served { http_response } => {
                match wire::decode::<HttpResponse>(&http_response) {
                    Ok(r) => (AttemptResult::Served, Some(r)),
                    Err(e) => (
                        AttemptResult::Spent {
                            why: format!("malformed response from the lender: {e}"),
                        },
                        None,
                    ),
                }
            }
            InnerBorrowResponse::Refused {
                reason,
                retry_after_ms,
            } => (refusal(reason, retry_after_ms), None),
        }
    }
}

/// What a lender's refusal means to the borrow machine.
fn refusal(reason: BorrowRefusal, retry_after_ms: Option<u64>) -> AttemptResult {
    match reason {
        BorrowRefusal::NoHeadroom => AttemptResult::Refused {
            retry_after_ms,
            why: "lender has no headroom".into(),
            delivered: true,
        },
        BorrowRefusal::UpstreamRefused { status } => AttemptResult::Refused {
            retry_after_ms,
            why: format!("lender's upstream refused ({status})"),
            delivered: true,
        },
        BorrowRefusal::TokenRejected(label) => AttemptResult::TokenRejected { label },
        BorrowRefusal::UpstreamFailed(e) => AttemptResult::Spent {
            why: format!("lender's upstream failed: {e}"),
        },
        BorrowRefusal::BadRequest(e) => AttemptResult::Spent {
            why: format!("lender could not read the request: {e}"),
        },
    }
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
        // The relay could not reach the lender, or the lender refused before opening it.
        DeliveryFailure::LenderUnreachable
        | DeliveryFailure::StaleKeyConfig
        | DeliveryFailure::LenderBusy
        | DeliveryFailure::BadLender => AttemptResult::Refused {
            retry_after_ms: None,
            why: format!("{f:?}"),
            delivered: false,
        },
        // The request may have reached the lender.
        DeliveryFailure::LenderTimeout => AttemptResult::Ambiguous {
            why: "the lender did not answer the relay".into(),
        },
    }
}

fn net_failure(e: NetError) -> AttemptResult {
    match e {
        NetError::Unreachable { .. } => AttemptResult::Refused {
            retry_after_ms: None,
            why: e.to_string(),
            delivered: false,
        },
        other => AttemptResult::Ambiguous {
            why: other.to_string(),
        },
    }
}
