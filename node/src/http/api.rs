//! The HTTP API (docs/design.md §11): `/metrics` (OpenMetrics), `/v1/node`, `/v1/peers`, `/v1/lends`, `/health`, and the
//! local administration endpoints `GET /v1/group`, `POST /v1/group/invite`, `POST /v1/group/remove` that
//! `lendmesh group …` uses while the node runs. Those answer only connections from loopback that carry the node's
//! local admin token (`X-Lendmesh-Admin-Token`, the 0600 file `admin.token` in the home, fresh at every start).
//!
//! Loopback by default. Binding anywhere else requires a bearer token (`--api-token` or `LENDMESH_API_TOKEN`) and
//! the node refuses to start without one; with a token, every request must carry `Authorization: Bearer <token>`
//! (compared in constant time) or gets 401. No endpoint returns a secret: no keys, no tokens, no upstream key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::group::admin::{AdminError, epoch_summaries};
use crate::group::state::GroupView;
use crate::http::limit::PeerAddr;
use crate::metrics::{NodeMetrics, PeerLabel};
use crate::net::NetworkHandle;
use crate::roles::member::MemberHandle;
use crate::roles::peerbook::{AdminOp, AdminReply, PeerBookHandle};
use crate::store::{LendCursor, Store};

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
    pub lender: crate::roles::lender::LenderHandle,
    /// Metrics.
    pub counters: Arc<NodeMetrics>,
    /// Upstream kind.
    pub upstream: &'static str,
    /// Privacy mode.
    pub privacy: lendmesh_protocol::borrow::PrivacyMode,
    /// What this member's behaviour may expose of its exhaustion (`[exposure]`).
    pub exposure: lendmesh_protocol::exposure::Exposure,
    /// This lender's OHTTP key config (public: it is in every attestation).
    pub ohttp_key_config: Vec<u8>,
    /// lendmesh and libp2p metrics.
    pub registry: Arc<Registry>,
    /// Bearer token, if required.
    pub token: Option<String>,
    /// The store (spent-set size).
    pub store: Store,
    /// The group view (epochs, alarms).
    pub view: watch::Receiver<Arc<GroupView>>,
    /// The local admin token (from `admin.token`).
    pub admin_token: String,
    /// The upstreams this member shares (headroom buckets, `/v1/node`'s `upstreams`).
    pub upstreams: Arc<crate::upstream::UpstreamSet>,
    /// Addresses other members reach this node at (from the config).
    pub external_addrs: Vec<String>,
    /// The per-member limits (what they did to each peer, for `/v1/peers`).
    pub limiter: crate::net::SharedLimiter,
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

/// Serves until shutdown (on `http::serve`: the token first, then a body of at most 64 KiB).
pub async fn serve(
    listener: crate::http::limit::LimitedListener,
    state: ApiState,
    limits: crate::http::serve::HttpLimits,
    shutdown: CancellationToken,
) {
    let body = Arc::new(crate::http::serve::BodyLimits {
        server: "api",
        limit: crate::http::serve::API_BODY_LIMIT,
        timeout: limits.body_timeout,
        counters: state.counters.clone(),
    });
    let state = Arc::new(state);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/node", get(node))
        .route("/v1/peers", get(peers))
        .route("/v1/lends", get(lends))
        .route("/v1/group", get(group_show))
        .route("/v1/group/invite", post(group_invite))
        .route("/v1/group/remove", post(group_remove))
        .layer(middleware::from_fn_with_state(
            body,
            crate::http::serve::bounded_body,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    crate::http::serve::serve(listener, app, limits, shutdown).await;
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
            s.counters.http_refusal("api", "unauthorized");
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
    let (bucket, _) =
        crate::upstream::UpstreamSet::summary(&s.upstreams.capabilities(crate::clock::now_ms()));
    c.headroom_bucket.set(bucket as i64);
    for u in s.upstreams.iter() {
        let label = crate::metrics::UpstreamLabel {
            upstream: u.name.clone(),
        };
        let ignored = i64::try_from(u.upstream.ignored_rate_limit_values()).unwrap_or(i64::MAX);
        c.upstream_ignored_values.get_or_create(&label).set(ignored);
    }
    // One series per epoch with a spent set: a retired epoch's series disappears when its rows are pruned.
    if let Ok(epochs) = s.store.spent_epochs() {
        c.spent_set.clear();
        for epoch in epochs {
            if let Ok(n) = s.store.spent_len(epoch) {
                c.spent_set
                    .get_or_create(&crate::metrics::EpochLabel { epoch })
                    .set(n as i64);
            }
        }
    }
    let view = s.view.borrow().clone();
    let now = crate::clock::now_ms();
    c.epoch_current
        .set(view.epochs.current(now).map_or(0, |i| i64::from(i.epoch())));
    c.key_alarms.set(view.refused_epochs.len() as i64);
}

/// `/metrics`: OpenMetrics when the `Accept` header asks for `application/openmetrics-text` (Prometheus's scraper
/// does), the Prometheus text format 0.0.4 otherwise (curl, `promtool check metrics`, older scrapers).
async fn metrics(State(s): State<Arc<ApiState>>, headers: axum::http::HeaderMap) -> Response {
    refresh_gauges(&s).await;
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}"),
        )
            .into_response();
    }
    let accept = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (body, content_type) = if crate::metrics::wants_openmetrics(accept) {
        (body, crate::metrics::OPENMETRICS_CONTENT_TYPE)
    } else {
        (
            crate::metrics::openmetrics_to_prometheus_text(&body),
            crate::metrics::PROMETHEUS_TEXT_CONTENT_TYPE,
        )
    };
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    headers.insert(axum::http::header::VARY, HeaderValue::from_static("accept"));
    resp
}

async fn health(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let snap = s.net.snapshot().await;
    let known = s.peerbook.routing().await.known;
    let alarms: Vec<u32> = s.view.borrow().refused_epochs.iter().copied().collect();
    if !alarms.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "alarm",
                "reason": format!(
                    "key consistency alarm for epoch(s) {alarms:?}: a peer or the admin named another issuer key; tokens of those epochs are neither spent nor accepted"
                ),
            })),
        )
    } else if known > 0 && snap.connected.is_empty() {
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
    let now = crate::clock::now_ms();
    let caps = s.upstreams.capabilities(now);
    let (bucket, _) = crate::upstream::UpstreamSet::summary(&caps);
    let upstreams: Vec<serde_json::Value> = s
        .upstreams
        .iter()
        .map(|u| {
            let h = u.upstream.headroom(now);
            json!({
                "name": u.name,
                "kind": u.upstream.kind(),
                "api": u.api.name(),
                "models": u.models,
                "remaining": h.remaining,
                "capacity": h.capacity,
                "kept": u.kept(&h),
                "lendable_bucket": u.capability(now).headroom.label(),
                "advertised": h.capacity > 0,
                "resets_at_ms": h.resets_at_ms,
                "may_lend": u.upstream.may_lend(),
                "ignored_rate_limit_values": u.upstream.ignored_rate_limit_values(),
            })
        })
        .collect();
    Json(json!({
        "peer_id": s.peer_id.to_string(),
        "short_id": s.peer_id.short(),
        "group": group.as_ref().map(|g| json!({"name": g.name, "id": g.group_id.to_string()})),
        "roles": s.roles,
        "epoch": group.as_ref().map(|g| g.epoch_number(now)),
        "epochs": group.as_ref().map(|g| epoch_summaries(&g.epochs, now)),
        "key_alarms": s.view.borrow().refused_epochs.iter().copied().collect::<Vec<_>>(),
        "roster_version": group.as_ref().map(|g| g.roster().version),
        "listen_addrs": snap.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "external_addrs": s.external_addrs,
        "connected_peers": snap.connected.len(),
        "nat": snap.nat,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": crate::clock::now_ms().saturating_sub(s.started_ms) / 1000,
        "wallet_balance": balance,
        "headroom_bucket": bucket.label(),
        "upstream": s.upstream,
        "upstreams": upstreams,
        "privacy_mode": s.privacy,
        "exposure": s.exposure,
        "ohttp_key_config": hex::encode(&s.ohttp_key_config),
        // What became of the tokens this member received, per epoch, from the store (`store::ledger`).
        "token_ledger": s.store.ledger().ok().map(|l| {
            l.into_iter()
                .map(|(epoch, lines)| (epoch.to_string(), json!(lines)))
                .collect::<serde_json::Map<_, _>>()
        }),
        "tokens_in_flight": s.store.in_flight().ok().map(|m| m.values().sum::<u64>()),
        "tokens_received": NodeMetrics::get(&s.counters.tokens_received),
        "tokens_issued": NodeMetrics::get(&s.counters.tokens_issued),
        "counters": counters_json(&s.counters),
        "claims": outcomes_json(&s.counters.claims, &crate::metrics::CLAIM_VERDICTS),
        "claim_refusals": outcomes_json(&s.counters.claim_refusals, &crate::metrics::CLAIM_REFUSALS),
        "refill_requests": outcomes_json(&s.counters.refill_requests, &crate::metrics::REFILL_OUTCOMES),
    }))
}

/// Lend records per `/v1/lends` page unless `limit` says otherwise.
pub const DEFAULT_LENDS_PAGE: usize = 100;
/// Largest `limit` of a `/v1/lends` page: a few hundred KB of JSON, read in one short transaction.
pub const MAX_LENDS_PAGE: usize = 1000;

/// `GET /v1/lends?limit=N&before=CURSOR`: this lender's stored records, newest first, read from the store (not
/// through the lender actor). `next` is the cursor of the following (older) page, `null` on the last one.
async fn lends(State(s): State<Arc<ApiState>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad_request", "message": message})),
        )
            .into_response()
    };
    let limit = match query.get("limit").map(|v| v.parse::<usize>()) {
        None => DEFAULT_LENDS_PAGE,
        Some(Ok(n)) if (1..=MAX_LENDS_PAGE).contains(&n) => n,
        Some(_) => {
            return bad(format!(
                "`limit` must be a number from 1 to {MAX_LENDS_PAGE} (got '{}')",
                query["limit"]
            ));
        }
    };
    let before = match query.get("before").map(|v| v.parse::<LendCursor>()) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return bad(format!("`before`: {e}")),
    };
    match s.store.lends_page(before, limit) {
        Ok(page) => Json(page).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "store", "message": format!("cannot read the lend records: {e}")})),
        )
            .into_response(),
    }
}

/// The PeerBook's view of each peer, how it is reached (`path`), with what the per-member limits did to it (`limits`: requests throttled by
/// surface, disconnections for exceeding them, and the end of its ban if it is refused now).
async fn peers(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let now = crate::clock::now_ms();
    let paths = s.net.snapshot().await.paths;
    let peers: Vec<serde_json::Value> = s
        .peerbook
        .peers()
        .await
        .into_iter()
        .map(|p| {
            let id = p.peer_id.parse::<lendmesh_protocol::PeerId>().ok();
            let stats = id
                .and_then(|id| s.limiter.lock().ok().map(|l| l.stats(&id, now)))
                .unwrap_or_default();
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            // How it is reached: direct, hole_punched, or relayed (with the relay's short id); null when not connected.
            v["path"] = json!(id.and_then(|id| paths.get(&id)));
            v["limits"] = json!({
                "throttled": stats.throttled.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "disconnects": stats.disconnects,
                "banned_until_ms": stats.banned_until_ms,
            });
            v
        })
        .collect();
    Json(json!({ "peers": peers }))
}

/// Each outcome of `family` with its count (every label present, 0 included).
fn outcomes_json(
    family: &prometheus_client::metrics::family::Family<
        crate::metrics::OutcomeLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    outcomes: &[&str],
) -> serde_json::Value {
    outcomes
        .iter()
        .map(|o| {
            let label = crate::metrics::OutcomeLabel {
                outcome: o.to_string(),
            };
            (o.to_string(), json!(family.get_or_create(&label).get()))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn counters_json(c: &NodeMetrics) -> serde_json::Value {
    json!({
        "connections_refused": NodeMetrics::get(&c.connections_refused),
        "connection_errors": NodeMetrics::get(&c.connection_errors),
        "inbound_failures": NodeMetrics::get(&c.inbound_failures),
        "gossip_malformed": NodeMetrics::get(&c.gossip_malformed),
        "net_events_dropped": NodeMetrics::get(&c.net_events_dropped),
        "attestations_accepted": NodeMetrics::get(&c.attestations_accepted),
        "attestations_rejected": NodeMetrics::get(&c.attestations_rejected),
        "attestations_published": NodeMetrics::get(&c.attestations_published),
        "issue_refused": NodeMetrics::get(&c.issue_refused),
        "tokens_spent": NodeMetrics::get(&c.tokens_spent),
        "served_locally": NodeMetrics::get(&c.served_locally),
        "borrows_ok": NodeMetrics::get(&c.borrows_ok),
        "borrows_failed": NodeMetrics::get(&c.borrows_failed),
        "lends_served": NodeMetrics::get(&c.lends_served),
        "lends_refused": NodeMetrics::get(&c.lends_refused),
        "relays_ok": NodeMetrics::get(&c.relays_ok),
        "relays_failed": NodeMetrics::get(&c.relays_failed),
        "claims_answered": NodeMetrics::get(&c.claims_answered),
        "lends_in_flight": NodeMetrics::get(&c.lends_in_flight),
        "tokens_expired": NodeMetrics::get(&c.tokens_expired),
        "tokens_given_up": NodeMetrics::get(&c.tokens_given_up),
        "epochs_pruned": NodeMetrics::get(&c.epochs_pruned),
        "key_alarms_raised": NodeMetrics::get(&c.key_alarms_raised),
    })
}

/// Local administration: loopback connections with the node's admin token only.
fn admin_allowed(
    s: &ApiState,
    peer: &SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Result<(), Box<Response>> {
    let given = headers
        .get("x-lendmesh-admin-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !peer.ip().is_loopback() || !bool::from(given.as_bytes().ct_eq(s.admin_token.as_bytes())) {
        return Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "error": "forbidden",
                    "message": "group administration needs a loopback connection with this node's admin token (the `admin.token` file in its home); use `lendmesh group …` on the node's machine",
                })),
            )
                .into_response(),
        ));
    }
    Ok(())
}

fn admin_error(e: AdminError) -> Response {
    let status = match e {
        AdminError::NotAdmin(_) => StatusCode::FORBIDDEN,
        AdminError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({"error": "admin", "message": e.to_string()}))).into_response()
}

async fn group_show(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(r) = admin_allowed(&s, &peer, &headers) {
        return *r;
    }
    match s.peerbook.summary().await {
        Some(summary) => Json(summary).into_response(),
        None => admin_error(AdminError::Invalid("the node is shutting down".into())),
    }
}

/// `POST /v1/group/invite` body.
#[derive(Debug, serde::Deserialize)]
pub struct InviteBody {
    /// The member's peer id.
    pub peer_id: String,
    /// Tokens per epoch.
    pub quota: u32,
    /// Membership length in days.
    pub days: u64,
    /// Bootstrap addresses for the invite.
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

/// `POST /v1/group/remove` body.
#[derive(Debug, serde::Deserialize)]
pub struct RemoveBody {
    /// The member's peer id.
    pub peer_id: String,
    /// Start a new epoch at once.
    #[serde(default)]
    pub rotate: bool,
}

/// The member an admin request names, once the caller is allowed (loopback, admin token).
fn admin_member(
    s: &ApiState,
    peer: &SocketAddr,
    headers: &axum::http::HeaderMap,
    member: &str,
) -> Result<lendmesh_protocol::PeerId, Box<Response>> {
    admin_allowed(s, peer, headers)?;
    member.parse().map_err(|e| {
        Box::new(admin_error(AdminError::Invalid(format!(
            "'{member}' is not a lendmesh peer id: {e}"
        ))))
    })
}

async fn group_invite(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Json(body): Json<InviteBody>,
) -> Response {
    let member = match admin_member(&s, &peer, &headers, &body.peer_id) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let op = AdminOp::Invite {
        member,
        quota: body.quota,
        days: body.days,
        bootstrap: body.bootstrap,
    };
    match s.peerbook.admin(op).await {
        Ok(AdminReply::Invite(text)) => {
            let version = s.view.borrow().roster.version;
            Json(json!({"invite": text, "roster_version": version})).into_response()
        }
        Ok(_) => admin_error(AdminError::Invalid("unexpected reply".into())),
        Err(e) => admin_error(e),
    }
}

async fn group_remove(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
    Json(body): Json<RemoveBody>,
) -> Response {
    let member = match admin_member(&s, &peer, &headers, &body.peer_id) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let rotate = if body.rotate {
        let Some(group) = s.peerbook.group().await else {
            return admin_error(AdminError::Invalid("the node is shutting down".into()));
        };
        // RSA key generation takes seconds: off the async threads, before the PeerBook is involved.
        match tokio::task::spawn_blocking(move || crate::group::admin::generate_epoch_key(&group)).await {
            Ok(Ok(key)) => Some(Box::new(key)),
            Ok(Err(e)) => return admin_error(e),
            Err(e) => return admin_error(AdminError::Invalid(format!("key generation failed: {e}"))),
        }
    } else {
        None
    };
    match s.peerbook.admin(AdminOp::Remove { member, rotate }).await {
        Ok(AdminReply::Removed {
            roster_version,
            rotated_to,
        }) => Json(json!({"roster_version": roster_version, "rotated_to": rotated_to})).into_response(),
        Ok(_) => admin_error(AdminError::Invalid("unexpected reply".into())),
        Err(e) => admin_error(e),
    }
}
