//! The borrower: what a member's node does when its own capacity is gone (DESIGN §6 steps 2–6).
//!
//! For each attempt: pick a lender from fresh attestations (the routing policy, never self, never a peer already
//! tried or cooling down) and a relay (uniformly among connected members, never self or the lender); take a token
//! (durably removed from the wallet); bind it to that lender and to the request's digest; seal the request and the
//! spend to the lender's OHTTP key; send it through the relay. Outcomes:
//! - served → done (the token is spent);
//! - refused before any claim (no headroom, upstream 429/503, stale key, lender unreachable) → cool the lender
//!   down (honouring `Retry-After`, with jitter) and try the next one **with the same token**, re-bound;
//! - token rejected → the token is burnt; a fresh one is taken;
//! - no answer after the request may have reached the lender → retry the same request id and spend at the same
//!   lender once (it answers idempotently), then give the token up as spent and go elsewhere with a fresh one —
//!   never spending a possibly-claimed token twice.
//!
//! A token left unspent at the end goes back to the wallet. In `strict` privacy mode (default) there is no borrow
//! without a relay; `best-effort` goes direct (and counts it).

use std::sync::Arc;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::routing::{self, Candidate, LenderQuery, Policy, RoutingParams};
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wire::{
    self, BorrowRefusal, BorrowRequest, BorrowResponse, DeliveryFailure, HttpRequest, HttpResponse,
    InnerBorrowRequest, InnerBorrowResponse, RelayRequest, RelayResponse,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::member::{MemberHandle, NoToken};
use crate::metrics::Counters;
use crate::network::{NetError, NetworkHandle};
use crate::now_ms;
use crate::peerbook::{AttemptOutcome, PeerBookHandle};

/// Lenders tried per request at most.
const MAX_ATTEMPTS: usize = 6;
/// Cooldown after a refusal that named no retry time.
const DEFAULT_COOLDOWN_MS: u64 = 15_000;

/// Whether a borrow may skip the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PrivacyMode {
    /// Never borrow without a relay (default).
    #[default]
    Strict,
    /// Go direct to the lender when no relay is available (the lender then sees this node's identity).
    BestEffort,
}

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
    /// The wallet is empty.
    #[error("the wallet has no tokens left; it refills from the issuer (is the admin node reachable?)")]
    WalletEmpty,
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

impl BorrowError {
    /// A machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            BorrowError::NoLender { .. } => "no_lender_available",
            BorrowError::NoRelay { .. } => "no_relay_available",
            BorrowError::WalletEmpty => "wallet_empty",
            BorrowError::QuotaExhausted { .. } => "quota_exhausted",
            BorrowError::Timeout { .. } => "lender_timeout",
            BorrowError::Failed { .. } => "borrow_failed",
        }
    }

    /// The HTTP status for the tool.
    pub fn status(&self) -> u16 {
        match self {
            BorrowError::NoLender { .. } | BorrowError::NoRelay { .. } | BorrowError::WalletEmpty => 503,
            BorrowError::QuotaExhausted { .. } => 429,
            BorrowError::Timeout { .. } => 504,
            BorrowError::Failed { .. } => 502,
        }
    }

    /// Seconds the tool may wait before retrying.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            BorrowError::NoLender { retry_s, .. } => Some(*retry_s),
            BorrowError::WalletEmpty => Some(5),
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
    /// Counters.
    pub counters: Arc<Counters>,
}

/// What one attempt at one lender came to.
enum Attempt {
    Served(HttpResponse),
    /// Refused before any claim: the token is still good. `delivered`: the lender's own answer came back.
    Unspent {
        retry_after_ms: Option<u64>,
        why: String,
        delivered: bool,
    },
    /// The token was refused (burnt).
    TokenBurnt(String),
    /// Unclear whether the lender claimed the token.
    Ambiguous(String),
    /// The upstream failed after the claim (token spent).
    Spent(String),
}

impl Borrower {
    /// Borrows one request; see the module doc.
    pub async fn borrow(&self, http: HttpRequest) -> Result<HttpResponse, BorrowError> {
        let started = std::time::Instant::now();
        let http_bytes = wire::encode(&http).map_err(|e| BorrowError::Failed {
            tried: 0,
            last: e.to_string(),
        })?;
        let digest = wire::request_digest(&http_bytes);
        let mut tried: Vec<PeerId> = Vec::new();
        let mut token: Option<WalletToken> = None;
        let mut last = String::from("no attempt");
        let mut timeouts = 0;
        let mut rng = rand::rngs::OsRng;
        let result = loop {
            if tried.len() >= MAX_ATTEMPTS {
                break Err(if timeouts > 0 && timeouts == tried.len() {
                    BorrowError::Timeout { tried: tried.len() }
                } else {
                    BorrowError::Failed {
                        tried: tried.len(),
                        last,
                    }
                });
            }
            let view = self.peerbook.routing().await;
            let now = now_ms();
            let candidates: Vec<Candidate> = view.lenders.iter().map(|l| l.candidate.clone()).collect();
            let q = LenderQuery {
                me: &self.me,
                candidates: &candidates,
                tried: &tried,
                now_ms: now,
                sticky: None,
            };
            let Some(lender) = routing::choose_lender(self.policy, &q, &self.params, &mut rng) else {
                if !tried.is_empty() {
                    break Err(BorrowError::Failed {
                        tried: tried.len(),
                        last,
                    });
                }
                let retry_s = view
                    .lenders
                    .iter()
                    .filter_map(|l| l.candidate.cooling_until_ms)
                    .map(|t| t.saturating_sub(now) / 1000 + 1)
                    .min()
                    .unwrap_or(20);
                break Err(BorrowError::NoLender {
                    known: view.known,
                    fresh: view.lenders.len(),
                    retry_s,
                });
            };
            let key_config = view
                .lenders
                .iter()
                .find(|l| l.candidate.peer == lender)
                .map(|l| l.key_config.clone());
            let Some(key_config) = key_config else { continue };
            let relay = routing::choose_relay(&self.me, &lender, &view.connected, &mut rng);
            if relay.is_none() && self.privacy == PrivacyMode::Strict {
                break Err(BorrowError::NoRelay {
                    connected: view.connected.len(),
                });
            }
            if token.is_none() {
                match self.member.take().await {
                    Ok(t) => token = Some(t),
                    Err(NoToken::Empty) => break Err(BorrowError::WalletEmpty),
                    Err(NoToken::QuotaExhausted {
                        next_epoch_starts_at_ms,
                    }) => {
                        break Err(BorrowError::QuotaExhausted {
                            next_epoch_starts_at_ms,
                        });
                    }
                }
            }
            let Some(t) = token.as_ref() else {
                break Err(BorrowError::WalletEmpty);
            };
            let mut request_id = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rng, &mut request_id);
            let inner = InnerBorrowRequest {
                request_id,
                spend: t.spend(lender, digest, now_ms()),
                http_request: http_bytes.clone(),
            };
            let mut attempt = self.attempt(lender, relay, &key_config, &inner).await;
            if let Attempt::Ambiguous(first) = &attempt {
                // Same request id and spend, same lender, another relay if there is one: answered idempotently.
                let first = first.clone();
                let other = routing::choose_relay(&self.me, &lender, &view.connected, &mut rng);
                attempt = match self.attempt(lender, other.or(relay), &key_config, &inner).await {
                    // Only the lender's own answer settles it; a delivery failure leaves it ambiguous.
                    Attempt::Unspent {
                        why,
                        delivered: false,
                        ..
                    } => Attempt::Ambiguous(format!("{first}; retry: {why}")),
                    settled => settled,
                };
            }
            tried.push(lender);
            let (outcome, delivered) = match &attempt {
                Attempt::Served(_) => (AttemptOutcome::Served, true),
                Attempt::Unspent { delivered, .. } => (AttemptOutcome::Refused, *delivered),
                Attempt::TokenBurnt(_) | Attempt::Spent(_) => (AttemptOutcome::Failed, true),
                Attempt::Ambiguous(_) => (AttemptOutcome::Failed, false),
            };
            self.peerbook.record_outcome(lender, relay, outcome, delivered);
            match attempt {
                Attempt::Served(resp) => {
                    token = None;
                    break Ok(resp);
                }
                Attempt::Unspent {
                    retry_after_ms, why, ..
                } => {
                    let until =
                        routing::cooldown_until(now_ms(), retry_after_ms, DEFAULT_COOLDOWN_MS, &mut rng);
                    self.peerbook.cool_down(lender, until).await;
                    debug!(lender = %lender.short(), %why, "lender refused before claiming; trying another");
                    last = why;
                }
                Attempt::TokenBurnt(why) => {
                    warn!(lender = %lender.short(), %why, "token refused; using a fresh one");
                    token = None;
                    last = why;
                }
                Attempt::Ambiguous(why) => {
                    // It may have been claimed: never spend it again.
                    warn!(lender = %lender.short(), %why, "no answer from the lender; giving the token up as spent");
                    token = None;
                    timeouts += 1;
                    last = why;
                }
                Attempt::Spent(why) => {
                    token = None;
                    break Err(BorrowError::Failed {
                        tried: tried.len(),
                        last: why,
                    });
                }
            }
        };
        if let Some(t) = token {
            self.member.put_back(t).await;
        }
        match &result {
            Ok(_) => {
                self.counters.inc(&self.counters.borrows_ok);
                Counters::outcome(&self.counters.borrows, "ok");
                self.counters
                    .borrow_latency
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                self.counters.inc(&self.counters.borrows_failed);
                Counters::outcome(&self.counters.borrows, e.code());
            }
        }
        result
    }

    async fn attempt(
        &self,
        lender: PeerId,
        relay: Option<PeerId>,
        key_config: &[u8],
        inner: &InnerBorrowRequest,
    ) -> Attempt {
        let sealed = match wire::encode(inner).map_err(|e| e.to_string()).and_then(|bytes| {
            let client = ohttp::ClientRequest::from_encoded_config(key_config).map_err(|e| e.to_string())?;
            client.encapsulate(&bytes).map_err(|e| e.to_string())
        }) {
            Ok(s) => s,
            Err(e) => {
                return Attempt::Unspent {
                    retry_after_ms: None,
                    why: format!("cannot seal to the lender: {e}"),
                    delivered: false,
                };
            }
        };
        let (enc, client_response) = sealed;
        let delivered = match relay {
            Some(relay) => match self.net.relay(relay, RelayRequest { lender, sealed: enc }).await {
                Ok(RelayResponse::Delivered { sealed }) => Ok(sealed),
                Ok(RelayResponse::Failed(f)) => Err(delivery_failure(f)),
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
            Err(a) => return a,
        };
        let inner_resp = match client_response
            .decapsulate(&sealed)
            .map_err(|e| e.to_string())
            .and_then(|plain| wire::decode::<InnerBorrowResponse>(&plain).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => return Attempt::Ambiguous(format!("unreadable response: {e}")),
        };
        match inner_resp {
            InnerBorrowResponse::Served { http_response } => {
                match wire::decode::<HttpResponse>(&http_response) {
                    Ok(r) => Attempt::Served(r),
                    Err(e) => Attempt::Spent(format!("malformed response from the lender: {e}")),
                }
            }
            InnerBorrowResponse::Refused {
                reason,
                retry_after_ms,
            } => match reason {
                BorrowRefusal::NoHeadroom => Attempt::Unspent {
                    retry_after_ms,
                    why: "lender has no headroom".into(),
                    delivered: true,
                },
                BorrowRefusal::UpstreamRefused { status } => Attempt::Unspent {
                    retry_after_ms,
                    why: format!("lender's upstream refused ({status})"),
                    delivered: true,
                },
                BorrowRefusal::TokenRejected(label) => {
                    Attempt::TokenBurnt(format!("token rejected: {label}"))
                }
                BorrowRefusal::UpstreamFailed(e) => Attempt::Spent(format!("lender's upstream failed: {e}")),
                BorrowRefusal::BadRequest(e) => {
                    Attempt::Spent(format!("lender could not read the request: {e}"))
                }
            },
        }
    }
}

fn delivery_failure(f: DeliveryFailure) -> Attempt {
    match f {
        // The relay never reached the lender, or the lender refused before opening it.
        DeliveryFailure::LenderUnreachable
        | DeliveryFailure::RelayBusy
        | DeliveryFailure::StaleKeyConfig
        | DeliveryFailure::LenderBusy
        | DeliveryFailure::BadLender => Attempt::Unspent {
            retry_after_ms: None,
            why: format!("{f:?}"),
            delivered: false,
        },
        // The request may have reached the lender.
        DeliveryFailure::LenderTimeout => Attempt::Ambiguous("the lender did not answer the relay".into()),
    }
}

fn net_failure(e: NetError) -> Attempt {
    match e {
        NetError::Unreachable { .. } => Attempt::Unspent {
            retry_after_ms: None,
            why: e.to_string(),
            delivered: false,
        },
        other => Attempt::Ambiguous(other.to_string()),
    }
}
