//! The gateway tools call (docs/design.md §11): any method and path on `127.0.0.1:8640` by default.
//!
//! While one of this member's own upstreams serves the request (its API and model, docs/design.md §5.1) and has
//! headroom, the request is served from it, with no token; otherwise it is borrowed (see [`crate::roles::borrower`]). The response keeps its status and headers (hop-by-hop ones removed).
//!
//! Before a request leaves the node these request headers are stripped:
//! - hop-by-hop: `Connection`, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`,
//!   `Trailer`, `Transfer-Encoding`, `Upgrade`, `Content-Length` (recomputed) and any header `Connection` names;
//! - the tool's credentials, on every path (`protocol::scrub::CREDENTIAL_HEADERS`: `Authorization`, `X-Api-Key`,
//!   `Api-Key`, `Cookie`, `OpenAI-Organization`, … — the upstream's key is this node's own, or the lender's);
//! - identifying: `Host`, `Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `Via`, `Referer`, `Origin`, `User-Agent`,
//!   `From`;
//! - for this node only: `Lendmesh-Conversation`, which names a conversation whose turns go to the same lender while
//!   it has headroom (1 to 128 visible ASCII characters, else `400 bad_conversation`; see
//!   [`crate::roles::sticky`]).
//!
//! That is all for this member's own upstream. A **borrowed** request is rebuilt further by the borrower
//! (`protocol::scrub`, docs/design.md §9.1): only the headers its API needs, identifying body fields replaced or
//! removed, the environment a coding tool wrote into the prompt withheld.
//!
//! Beyond loopback every request must present a gateway key (`http::keys`): `401 unauthorized` without one. Request
//! heads, bodies, connections and the time they take are limited (`http::serve`: 431, 413, 408, 503).
//! Bodies are limited (default 1 MiB each way; a clear 413, or 502 when the upstream announces a larger body).
//! Responses stream: each chunk goes to the tool as it arrives, with no `Content-Length`; a server-sent event stream
//! (`text/event-stream`) also gets `Cache-Control: no-cache` and `X-Accel-Buffering: no`, so proxies in front do not
//! hold it back. A body cut short (the upstream failed, or went over the limit) ends the HTTP response with an error —
//! the tool sees a broken response, never a clean end. Every failure before the head is JSON:
//! `{"error": code, "message": sentence}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};
use axum::middleware::{self, Next};
use lendmesh_protocol::wire::HttpRequest;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::clock::now_ms;
use crate::http::keys::{GatewayKeys, presented};
pub use crate::http::serve::error_response;
use crate::http::serve::{BodyLimits, HttpLimits, bounded_body};
use crate::metrics::NodeMetrics;
use crate::roles::borrower::Borrower;
use crate::roles::sticky::{CONVERSATION_HEADER, conversation_from_headers};
use crate::upstream::{UpstreamRequest, UpstreamResponse, UpstreamSet};
use lendmesh_protocol::capability::Need;

pub use crate::config::DEFAULT_BODY_LIMIT;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];
const IDENTIFYING: &[&str] = &[
    "host",
    "forwarded",
    "x-real-ip",
    "via",
    "referer",
    "origin",
    "user-agent",
    "from",
];
/// Headers for this node alone: read by the gateway, never passed on.
const NODE_ONLY: &[&str] = &[CONVERSATION_HEADER];

/// The gateway's state.
#[derive(Clone)]
pub struct GatewayState {
    /// This member's upstreams.
    pub upstreams: Arc<UpstreamSet>,
    /// The borrower.
    pub borrower: Borrower,
    /// NodeMetrics.
    pub counters: Arc<NodeMetrics>,
    /// Body limit, each way.
    pub body_limit: usize,
    /// Cancelled when the node shuts down (a borrow cut short then says so).
    pub shutdown: CancellationToken,
    /// The keys tools present (required beyond loopback).
    pub keys: Arc<GatewayKeys>,
    /// Cover borrows and the borrow threshold (`protocol::exposure`).
    pub exposure: lendmesh_protocol::exposure::Exposure,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

/// Serves the gateway until shutdown: the key first (when one is required), then the body within its limits
/// (`http::serve::bounded_body`), then [`handle`].
pub async fn serve(
    listener: crate::http::limit::LimitedListener,
    state: GatewayState,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let body = Arc::new(BodyLimits {
        server: "gateway",
        limit: state.body_limit,
        timeout: limits.body_timeout,
        counters: state.counters.clone(),
    });
    let state = Arc::new(state);
    let app = Router::new()
        .fallback(handle)
        .layer(middleware::from_fn_with_state(body, bounded_body))
        .layer(middleware::from_fn_with_state(state.clone(), require_key))
        .with_state(state);
    crate::http::serve::serve(listener, app, limits, shutdown).await;
}

/// `401` for a request without a gateway key this node accepts, when one is required (docs/design.md §11.2).
async fn require_key(State(s): State<Arc<GatewayState>>, req: Request, next: Next) -> Response<Body> {
    if s.keys.required() {
        let name = presented(req.headers()).and_then(|k| s.keys.check(k));
        let Some(name) = name else {
            s.counters.http_refusal("gateway", "unauthorized");
            let mut resp = error_response(
                401,
                "unauthorized",
                "this gateway needs a key: send it as the tool's API key (`Authorization: Bearer <key>` or \
                 `x-api-key: <key>`); `lendmesh gateway key add <device>` makes one",
                None,
            );
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return resp;
        };
        debug!(key = %name, "gateway key accepted");
    }
    next.run(req).await
}

/// Headers that may leave the node.
pub fn outbound_headers(headers: &axum::http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let named_by_connection: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !HOP_BY_HOP.contains(&k)
                && !IDENTIFYING.contains(&k)
                && !lendmesh_protocol::scrub::is_credential(k)
                && !NODE_ONLY.contains(&k)
                && !k.starts_with("x-forwarded-")
                && !named_by_connection.iter().any(|n| n == k)
        })
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

async fn handle(State(s): State<Arc<GatewayState>>, req: Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // Already read whole, within the limit and its time (`bounded_body`).
    let body = match axum::body::to_bytes(body, s.body_limit).await {
        Ok(b) => b.to_vec(),
        Err(e) => return error_response(400, "bad_request", &format!("the request body: {e}"), None),
    };
    let named = parts.headers.get_all(CONVERSATION_HEADER);
    let conversation = match conversation_from_headers(named.iter().map(|v| v.as_bytes())) {
        Ok(c) => c,
        Err(e) => return error_response(400, "bad_conversation", &e.to_string(), None),
    };
    let http = HttpRequest {
        method: parts.method.as_str().to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
        headers: outbound_headers(&parts.headers),
        body,
    };
    let need = Need::of(
        &http.path_and_query,
        &http.headers,
        &lendmesh_protocol::scrub::Body::parse(&http.body),
    );
    // Own capacity first (no token needed), unless `protocol::exposure` sends a request the member could serve out
    // as a cover borrow or below its threshold; such a borrow that fails is served here after all.
    let route = s
        .exposure
        .route(s.upstreams.own_left(&need, now_ms()), &mut rand::thread_rng());
    let http = if route.by_choice() {
        match s.borrower.borrow(http.clone(), conversation).await {
            Ok(resp) => {
                s.counters.chosen_borrow(route);
                let event_stream = is_event_stream(&resp.headers);
                return stream_body(resp.status, resp.headers, resp.body, event_stream, s.body_limit);
            }
            Err(e) => {
                debug!(code = e.code(), %e, "a borrow by choice failed; serving it here");
                s.counters.chosen_borrow_failed(route);
                http
            }
        }
    } else {
        http
    };
    if let Some((own, permit)) = s.upstreams.acquire_own(&need, now_ms()) {
        let req = UpstreamRequest {
            method: http.method,
            path_and_query: http.path_and_query,
            headers: http.headers,
            body: http.body,
        };
        let result = own.upstream.call(permit, req).await;
        s.counters.upstream_call(result.as_ref().ok().map(|r| r.status));
        return match result {
            Ok(r) => {
                s.counters.inc(&s.counters.served_locally);
                stream_response(r, s.body_limit)
            }
            Err(e) => error_response(
                502,
                "upstream_error",
                &format!("this member's upstream failed: {e}"),
                None,
            ),
        };
    }
    match s.borrower.borrow(http, conversation).await {
        Ok(resp) => {
            let event_stream = is_event_stream(&resp.headers);
            stream_body(resp.status, resp.headers, resp.body, event_stream, s.body_limit)
        }
        Err(e) => {
            debug!(code = e.code(), %e, "borrow failed");
            if s.shutdown.is_cancelled() {
                return error_response(
                    503,
                    "shutting_down",
                    "this node is shutting down and could not finish the request; retry once it is back",
                    Some(5),
                );
            }
            let mut resp = error_response(e.status(), e.code(), &e.to_string(), e.retry_after_s());
            if let crate::roles::borrower::BorrowError::QuotaExhausted {
                next_epoch_starts_at_ms: Some(at),
            } = e
            {
                // Machine-readable too: when the fresh quota arrives.
                let body = json!({
                    "error": e.code(),
                    "message": e.to_string(),
                    "next_epoch_starts_at_ms": at,
                });
                *resp.body_mut() = Body::from(body.to_string());
            }
            resp
        }
    }
}

/// The response head at once, the body chunk by chunk as it arrives (see the module doc).
pub fn stream_response(r: UpstreamResponse, limit: usize) -> Response<Body> {
    let event_stream = r.is_event_stream();
    stream_body(r.status, r.headers, r.body, event_stream, limit)
}

/// Whether `headers` say `text/event-stream`.
fn is_event_stream(headers: &[(String, Vec<u8>)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("content-type")
            && v.get(..17)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"text/event-stream"))
    })
}

/// A response whose body streams: `502 response_too_large` at once when the head announces more than `limit`,
/// else the head and then each piece as it comes; a body that goes over `limit` or fails ends with an error.
fn stream_body<E: std::fmt::Display + Send + 'static>(
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: futures::stream::BoxStream<'static, Result<Vec<u8>, E>>,
    event_stream: bool,
    limit: usize,
) -> Response<Body> {
    use futures::StreamExt;
    let announced = headers.iter().find_map(|(k, v)| {
        k.eq_ignore_ascii_case("content-length")
            .then(|| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
            .flatten()
    });
    if announced.is_some_and(|n| n > limit as u64) {
        return error_response(
            502,
            "response_too_large",
            &format!("the upstream's response exceeds the gateway's {limit}-byte limit"),
            None,
        );
    }
    let mut seen = 0usize;
    let body = body.map(move |chunk| {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            return Err(std::io::Error::other(format!(
                "the response exceeds the gateway's {limit}-byte limit; cut short"
            )));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    copy_headers(&mut resp, headers);
    if event_stream {
        let h = resp.headers_mut();
        h.insert(
            axum::http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        h.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
    resp
}

fn copy_headers(resp: &mut Response<Body>, headers: Vec<(String, Vec<u8>)>) {
    for (k, v) in headers {
        let lower = k.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(&v)) {
            resp.headers_mut().append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifying_and_hop_by_hop_headers_are_stripped() {
        let mut h = axum::http::HeaderMap::new();
        for (k, v) in [
            ("host", "x"),
            ("authorization", "Bearer secret"),
            ("x-api-key", "sk-ant-tool-key"),
            ("openai-organization", "org-tool"),
            ("cookie", "session=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("user-agent", "tool/1.0"),
            ("content-type", "application/json"),
            ("x-request-kind", "chat"),
            ("lendmesh-conversation", "conversation-a"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = outbound_headers(&h);
        // The conversation's name never leaves the node, under any header.
        assert!(out.iter().all(|(_, v)| v != b"conversation-a"));
        let out: Vec<String> = out.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            out,
            vec!["content-type".to_string(), "x-request-kind".to_string()]
        );
        // However the tool spells the name.
        let mut h = axum::http::HeaderMap::new();
        h.append(
            HeaderName::from_bytes(b"Lendmesh-Conversation").unwrap(),
            HeaderValue::from_static("b"),
        );
        assert!(outbound_headers(&h).is_empty());
    }
}
