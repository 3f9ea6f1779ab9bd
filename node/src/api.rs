//! The HTTP API (DESIGN §11): `/metrics` (OpenMetrics), `/v1/node`, `/v1/peers`, `/v1/lends`, `/health`.
//!
//! Loopback by default. Binding anywhere else requires a bearer token (`--api-token` or `LENDMESH_API_TOKEN`) and
//! the node refuses to start without one; with a token, every request must carry `Authorization: Bearer <token>`
//! (compared in constant time) or gets 401. No endpoint returns a secret: no keys, no tokens, no upstream key.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::member::MemberHandle;
use crate::metrics::{Counters, PeerLabel};
use crate::network::NetworkHandle;
use crate::peerbook::PeerBookHandle;
use crate::store::Store;
use crate::upstream::Upstream;

/// What the API reads from.
#[derive(Clone)]
pub struct ApiState {
    /// This node.
    pub peer_id: lendmesh_protocol::PeerId,
    /// Roles ("admin", "issuer", "member", "lender", "relay").
    pub roles: Vec<&'static str>,
    /// Start time (ms since the Unix epoch).
    pub started_ms: u64,
    /// Network.
    pub net: NetworkHandle,
    /// PeerBook.
    pub peerbook: PeerBookHandle,
    /// Member.
    pub member: MemberHandle,
    /// Lender.
    pub lender: crate::lender::LenderHandle,
    /// Metrics.
    pub counters: Arc<Counters>,
    /// Upstream kind.
    pub upstream: &'static str,
    /// Privacy mode.
    pub privacy: crate::borrow::PrivacyMode,
    /// This lender's OHTTP key config (public: it is in every attestation).
    pub ohttp_key_config: Vec<u8>,
    /// lendmesh and libp2p metrics.
    pub registry: Arc<Registry>,
    /// Bearer token, if required.
    pub token: Option<String>,
    /// The store (spent-set size).
    pub store: Store,
    /// The current epoch.
    pub epoch: u32,
    /// Units of own capacity never lent.
    pub reserve: u64,
    /// The upstream (own headroom bucket).
    pub upstream_handle: Arc<dyn Upstream>,
    /// Addresses other members reach this node at (from the config).
    pub external_addrs: Vec<String>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// Binds the API; refuses a non-loopback address without a token.
pub async fn bind(addr: SocketAddr, has_token: bool) -> anyhow::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() && !has_token {
        anyhow::bail!(
            "the API would listen on {addr}, beyond loopback, without a token; pass --api-token (or set \
             LENDMESH_API_TOKEN), or keep it on 127.0.0.1"
        );
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the API on {addr}: {e}"))
}

/// Serves until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, shutdown: CancellationToken) {
    let state = Arc::new(state);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/node", get(node))
        .route("/v1/peers", get(peers))
        .route("/v1/lends", get(lends))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

async fn auth(State(s): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "unauthorized", "message": "this API needs `Authorization: Bearer <token>`"})),
            )
                .into_response();
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

/// Sets the gauges that describe other actors' state, just before a scrape.
async fn refresh_gauges(s: &ApiState) {
    let c = &s.counters;
    c.wallet_balance.set(s.member.balance().await as i64);
    let snap = s.net.snapshot().await;
    c.peers_connected.set(snap.connected.len() as i64);
    let peers = s.peerbook.peers().await;
    c.fresh_attestations
        .set(peers.iter().filter(|p| p.attestation.is_some()).count() as i64);
    for p in &peers {
        let label = PeerLabel {
            peer: p.short_id.clone(),
        };
        if let Some(rtt) = p.rtt_ms {
            c.peer_rtt.get_or_create(&label).set(rtt / 1000.0);
        }
        if let Some(a) = &p.attestation {
            c.peer_attestation_age
                .get_or_create(&label)
                .set(a.age_ms as f64 / 1000.0);
        }
    }
    let (bucket, _) = crate::lender::lendable_bucket(&*s.upstream_handle, s.reserve, crate::now_ms());
    c.headroom_bucket.set(bucket as i64);
    if let Ok(n) = s.store.spent_len(s.epoch) {
        c.spent_set
            .get_or_create(&crate::metrics::EpochLabel { epoch: s.epoch })
            .set(n as i64);
    }
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    refresh_gauges(&s).await;
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}"),
        )
            .into_response();
    }
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn health(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let snap = s.net.snapshot().await;
    let known = s.peerbook.routing().await.known;
    if known > 0 && snap.connected.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "degraded", "reason": format!("no peer connected ({known} roster members known)")}),
            ),
        )
    } else {
        (
            StatusCode::OK,
            Json(json!({"status": "ok", "connected_peers": snap.connected.len(), "roster_peers": known})),
        )
    }
}

async fn node(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let snap = s.net.snapshot().await;
    let group = s.peerbook.group().await;
    let balance = s.member.balance().await;
    let (bucket, _) = crate::lender::lendable_bucket(&*s.upstream_handle, s.reserve, crate::now_ms());
    Json(json!({
        "peer_id": s.peer_id.to_string(),
        "short_id": s.peer_id.short(),
        "group": group.as_ref().map(|g| json!({"name": g.name, "id": g.group_id.to_string()})),
        "roles": s.roles,
        "epoch": group.as_ref().map(|g| g.epoch_number()),
        "roster_version": group.as_ref().map(|g| g.roster().version),
        "listen_addrs": snap.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "external_addrs": s.external_addrs,
        "connected_peers": snap.connected.len(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": crate::now_ms().saturating_sub(s.started_ms) / 1000,
        "wallet_balance": balance,
        "headroom_bucket": bucket.label(),
        "upstream": s.upstream,
        "privacy_mode": s.privacy,
        "ohttp_key_config": hex::encode(&s.ohttp_key_config),
        "tokens_received": Counters::get(&s.counters.tokens_received),
        "tokens_issued": Counters::get(&s.counters.tokens_issued),
        "counters": counters_json(&s.counters),
    }))
}

async fn lends(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    Json(json!({ "lends": s.lender.lends().await }))
}

async fn peers(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    Json(json!({ "peers": s.peerbook.peers().await }))
}

fn counters_json(c: &Counters) -> serde_json::Value {
    json!({
        "connections_refused": Counters::get(&c.connections_refused),
        "connection_errors": Counters::get(&c.connection_errors),
        "inbound_failures": Counters::get(&c.inbound_failures),
        "gossip_malformed": Counters::get(&c.gossip_malformed),
        "net_events_dropped": Counters::get(&c.net_events_dropped),
        "attestations_accepted": Counters::get(&c.attestations_accepted),
        "attestations_rejected": Counters::get(&c.attestations_rejected),
        "attestations_published": Counters::get(&c.attestations_published),
        "issue_refused": Counters::get(&c.issue_refused),
        "tokens_spent": Counters::get(&c.tokens_spent),
        "served_locally": Counters::get(&c.served_locally),
        "borrows_ok": Counters::get(&c.borrows_ok),
        "borrows_failed": Counters::get(&c.borrows_failed),
        "lends_served": Counters::get(&c.lends_served),
        "lends_refused": Counters::get(&c.lends_refused),
        "relays_ok": Counters::get(&c.relays_ok),
        "relays_failed": Counters::get(&c.relays_failed),
        "claims_answered": Counters::get(&c.claims_answered),
        "lends_in_flight": Counters::get(&c.lends_in_flight),
    })
}
