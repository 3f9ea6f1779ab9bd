//! One HTTP/1.1 server for the gateway and the API, with a limit on every surface (docs/design.md §11.3). Each
//! refusal has its status code and is counted in `lendmesh_http_refusals_total{server, reason}`:
//!
//! | limit | default | answer | reason |
//! |---|---|---|---|
//! | connections at once | gateway 256, API 32 | `503` and close ([`LimitedListener`]) | `too_many_connections` |
//! | request head size (start line and headers) | 64 KiB | `431` and close | `header_too_large` |
//! | header count | 100 | `431` and close | `header_too_large` |
//! | time to receive a request head once it has begun | 30 s | `408` and close | `header_timeout` |
//! | time a keep-alive connection may wait for its next request | 30 s | closed, no answer | (not a refusal) |
//! | request body size | gateway 1 MiB, API 64 KiB | `413` | `body_too_large` |
//! | time to receive a request body | 60 s | `408` | `body_timeout` |
//! | unparsable request head | – | `400` and close | `bad_request` |
//!
//! hyper parses the head and answers `431` and `400` itself; the head timeout ends hyper's connection, and this
//! module answers `408` on the socket it gets back when part of a request had arrived (an idle keep-alive connection
//! is just closed, as every HTTP server does). Bodies are read whole, within their limit and timeout, by
//! [`bounded_body`] before any handler runs. Responses are not limited in time: a generation may stream for as long
//! as it lasts. Only HTTP/1.1 (and 1.0) is spoken: what tools use towards a local gateway.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::debug;

use crate::http::limit::{LimitedListener, LimitedStream, PeerAddr};
use crate::metrics::NodeMetrics;

/// How long a refusal or the final shutdown may take to write before the connection is dropped.
const CLOSE_WRITE: Duration = Duration::from_secs(1);

pub use crate::config::HttpLimits;

/// The API's body limit (its only bodies are small JSON administration requests).
pub const API_BODY_LIMIT: usize = 64 * 1024;

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish (keep-alive is turned off for them)
/// and returns when every connection has closed.
pub async fn serve(
    mut listener: LimitedListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (io, addr) = tokio::select! {
            conn = axum::serve::Listener::accept(&mut listener) => conn,
            () = shutdown.cancelled() => break,
        };
        let (server, counters) = (listener.what(), listener.counters());
        tracker.spawn(connection(
            io,
            addr,
            app.clone(),
            limits,
            server,
            counters,
            shutdown.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection(
    io: LimitedStream,
    addr: std::net::SocketAddr,
    app: Router,
    limits: HttpLimits,
    server: &'static str,
    counters: Arc<NodeMetrics>,
    shutdown: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(PeerAddr(addr)));
        Box::pin(app.clone().oneshot(req))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes);
    let mut conn = builder.serve_connection(TokioIo::new(io), svc);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut draining = false;
    let result = poll_fn(|cx| {
        if !draining && cancelled.as_mut().poll(cx).is_ready() {
            draining = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
        conn.poll_without_shutdown(cx)
    })
    .await;
    let mut io = conn.into_parts().io.into_inner();
    if let Err(e) = result {
        let refusal = if e.is_timeout() && io.request_begun() {
            Some(("header_timeout", Some(timeout_response(limits.header_timeout))))
        } else if e.is_parse_too_large() {
            Some(("header_too_large", None))
        } else if e.is_parse() {
            Some(("bad_request", None))
        } else {
            None
        };
        if let Some((reason, answer)) = refusal {
            debug!(server, reason, %e, "request refused");
            counters.http_refusal(server, reason);
            if let Some(answer) = answer {
                let _ = tokio::time::timeout(CLOSE_WRITE, io.write_all(answer.as_bytes())).await;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_WRITE, io.shutdown()).await;
}

/// The `408` written when a request head did not arrive in time.
fn timeout_response(limit: Duration) -> String {
    let body = format!(
        "{{\"error\":\"header_timeout\",\"message\":\"the request head did not arrive within {} s\"}}",
        limit.as_secs()
    );
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A JSON error: `{"error": code, "message": sentence}`, with `Retry-After` when given.
pub fn error_response(status: u16, code: &str, message: &str, retry_after_s: Option<u64>) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(s) = retry_after_s
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert("retry-after", v);
    }
    resp
}

/// What [`bounded_body`] needs.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    /// The server's name in metrics (`gateway`, `api`).
    pub server: &'static str,
    /// Largest body.
    pub limit: usize,
    /// Time to receive it.
    pub timeout: Duration,
    /// Where refusals are counted.
    pub counters: Arc<NodeMetrics>,
}

/// Why [`read_body`] gave up.
enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads a body within `limit` bytes, copying each piece as it arrives into one buffer. Not `axum::body::to_bytes`:
/// that keeps every piece as a slice of hyper's read buffer until the body ends, so a client trickling a byte at a
/// time pins a fresh 8 KiB buffer per byte — hundreds of MiB from a few connections within the limit and the timeout
/// (found by `contrib/load.py`; `tests/tests/http_surface.rs` keeps it fixed).
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, BodyError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(BodyError::Read)?;
        if buf.len() + piece.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf.into())
}

/// Middleware: reads the request body whole, within its size limit (`413 body_too_large`) and time
/// (`408 body_timeout`), before the handler sees it; a body announced larger than the limit is refused unread.
pub async fn bounded_body(State(b): State<Arc<BodyLimits>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let too_large = || {
        b.counters.http_refusal(b.server, "body_too_large");
        error_response(
            413,
            "body_too_large",
            &format!(
                "the request body exceeds this {}'s {}-byte limit",
                b.server, b.limit
            ),
            None,
        )
    };
    let announced = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > b.limit as u64) {
        return too_large();
    }
    let bytes = match tokio::time::timeout(b.timeout, read_body(body, b.limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::TooLarge)) => return too_large(),
        Ok(Err(BodyError::Read(e))) => {
            // The client went away mid-body (or sent a broken chunk): nobody reads an answer, and it is no refusal.
            debug!(server = b.server, %e, "request body not read");
            return error_response(400, "bad_request", "the request body ended early", None);
        }
        Err(_) => {
            b.counters.http_refusal(b.server, "body_timeout");
            return error_response(
                408,
                "body_timeout",
                &format!("the request body did not arrive within {} s", b.timeout.as_secs()),
                None,
            );
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
