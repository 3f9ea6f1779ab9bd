//! The HTTP API (DESIGN §11), on loopback by default: `/health`, `/v1/node`, `/v1/peers`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::member::MemberHandle;
use crate::metrics::Counters;
use crate::network::NetworkHandle;
use crate::peerbook::PeerBookHandle;

/// What the API reads from.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// This node.
    pub peer_id: lendmesh_protocol::PeerId,
    /// Roles ("admin", "issuer", "member", "lender").
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
    /// Privacy mode.
    pub privacy: crate::borrow::PrivacyMode,
    /// This lender's OHTTP key config (public: it is in every attestation).
    pub ohttp_key_config: Vec<u8>,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Upstream kind.
    pub upstream: &'static str,
}

/// Binds the API; refuses a non-loopback address (a bearer token is required there, and comes with the
/// inspection endpoints).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "the API must listen on loopback (127.0.0.1 or ::1); {addr} would expose it to the network"
        );
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the API on {addr}: {e}"))
}

/// Serves until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/node", get(node))
        .route("/v1/peers", get(peers))
        .route("/v1/lends", get(lends))
        .with_state(Arc::new(state));
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

async fn health(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let snap = s.net.snapshot().await;
    if snap.connected.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "reason": "no peer connected"})),
        )
    } else {
        (
            StatusCode::OK,
            Json(json!({"status": "ok", "connected_peers": snap.connected.len()})),
        )
    }
}

async fn node(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let snap = s.net.snapshot().await;
    let group = s.peerbook.group().await;
    let balance = s.member.balance().await;
    Json(json!({
        "peer_id": s.peer_id.to_string(),
        "group": group.as_ref().map(|g| json!({"name": g.name, "id": g.group_id.to_string()})),
        "roles": s.roles,
        "epoch": group.as_ref().map(|g| g.epoch_number()),
        "roster_version": group.as_ref().map(|g| g.roster().version),
        "listen_addrs": snap.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "connected_peers": snap.connected.len(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": crate::now_ms().saturating_sub(s.started_ms) / 1000,
        "wallet_balance": balance,
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
