//! The member's own upstream: the thing a lender spends its headroom on.
//!
//! A node shares rate-limited HTTP capacity (an API key, an inference server). The lender needs three things
//! from it: a **snapshot** of what is left in the current rate-limit window ([`Upstream::headroom`],
//! published in attestations), a way to **reserve** one unit before it claims a borrower's token
//! ([`Upstream::try_acquire`] returns a [`Permit`], [`Upstream::release`] gives it back when the upstream
//! refused before doing any work), and the **call** itself ([`Upstream::call`]).
//!
//! Time is an input: `headroom` and `try_acquire` take `now_ms` (milliseconds since the Unix epoch) from the
//! caller, so tests and the simulator drive windows by hand. Only `call` reads the wall clock, to turn
//! relative reset headers ("resets in 6m0s") into instants. State sits behind a `std::sync::Mutex` that is
//! never held across an `.await`.
//!
//! Two implementations:
//! - [`MockUpstream`]: a deterministic capacity per window. Windows are aligned to multiples of the window
//!   length since the Unix epoch (window index = `now_ms / window_ms`), so every node with the same settings
//!   agrees on when a window starts. `call` sleeps the configured latency and answers JSON naming the node
//!   that served (or streams it as server-sent events).
//! - [`HttpUpstream`]: forwards to a real base URL with the member's key. The key is read from an environment
//!   variable once and sent the way the provider wants it ([`AuthStyle`]): `Authorization: Bearer <key>`
//!   (OpenAI and compatible servers), `x-api-key: <key>` (Anthropic) or any named header (`api-key` for Azure),
//!   together with fixed extra headers (`anthropic-version: 2023-06-01`). A caller's header of the same name as
//!   the auth header or an extra header is dropped (case-insensitively), never forwarded alongside, and so are
//!   the caller's own credentials (`Authorization`, `Proxy-Authorization`, `x-api-key`, `api-key`) whatever the
//!   style. The key is never logged, printed by `Debug`, or put in an error.
//!
//! **Headroom of an HTTP upstream.** It starts from the configured budget per aligned window, decrements
//! locally on every `try_acquire`, and **replaces** that estimate with whatever the upstream's rate-limit
//! headers say ([`parse_rate_limit`]: OpenAI, Anthropic, the IETF httpapi drafts, `Retry-After`). Providers of
//! LLMs limit tokens as well as requests, so the headroom is **the tighter of the two**, in request units: a
//! token quota with a fraction `f` left counts as `capacity × f` requests (`capacity` = the learned request limit,
//! else the budget), the smaller of that and the requests left is `remaining`, and the reset is that dimension's
//! (tokens at 10 % and requests at 80 % report 10 % of capacity; [`LearnedLimit::in_requests`] and the
//! `ratelimit` module doc give the rule). The attestation bucket, computed from [`Headroom`], follows the tighter
//! dimension with no change elsewhere. When the binding dimension resets, the looser one takes over until its own
//! reset; when that passes, a new window starts with the learned limit (or the budget if none was ever learned).
//! A 429 or 503 means "nothing left until the reset / retry-after instant", and so does a `Retry-After` on any
//! other response.
//!
//! Learned `remaining` counts are reduced by the number of *other* permits still in flight: the upstream
//! counted the request it just answered but not the ones this node has reserved and not yet sent, so
//! subtracting them keeps the estimate conservative (it may under-lend briefly, it does not over-lend).
//!
//! `call` returns every HTTP answer, 429 and 5xx included, as `Ok`: the lender decides what a refusal means
//! for the borrower's token. Failures where nothing reached the upstream (connection refused or not made within
//! [`DEFAULT_CONNECT_TIMEOUT`], a request that cannot be expressed as HTTP) give the unit back by themselves; a
//! timeout does not, since the upstream may have done the work.
//!
//! **Timeouts fit long streamed generations.** There is no limit on a whole call: a generation may stream for ten
//! minutes. The response head must come within the **first-byte** limit (default 5 min, [`UpstreamError::Timeout`]:
//! a thinking model may say nothing for minutes), and once it has, every pause between two body chunks must be
//! shorter than the **idle** limit (default 60 s); a longer pause ends the body stream with
//! [`UpstreamError::Idle`], never a clean end. Connecting may take [`DEFAULT_CONNECT_TIMEOUT`].
//!
//! Everything else is bounded too: response bodies are read chunk by chunk up to `max_response_bytes`, and
//! redirects are never followed (a redirect is answered to the caller as-is, so the key never leaves for another
//! host).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::{debug, warn};

/// Default wait for the response head. A thinking model may think for minutes before its first byte; an upstream
/// that sends nothing for longer is taken as dead.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);

/// Default longest pause between two body chunks. Streamed generations send a chunk every few tokens, and
/// providers send keep-alive events while they think; a minute of silence mid-answer is a stuck connection.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long opening the TCP/TLS connection may take (never more than the first-byte limit): an upstream that
/// cannot be reached in this time will not be reached at all, and nothing was sent, so the unit goes back.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default cap on an upstream response body. Large enough for long completions, small enough that a
/// misbehaving upstream cannot make the node buffer without bound.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How long a 429/503 without any reset or retry-after information blocks the upstream at least.
const MIN_REFUSAL_BACKOFF_MS: u64 = 1_000;

/// Gives every upstream instance an id so a permit cannot be spent on (or released to) another instance.
static NEXT_UPSTREAM_ID: AtomicU64 = AtomicU64::new(1);

/// An HTTP request as the node forwards it upstream (hop-by-hop headers already stripped by the caller).
#[derive(Clone, Debug, Default)]
pub struct UpstreamRequest {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions?stream=false`; joined to the upstream's base URL.
    pub path_and_query: String,
    /// Request headers; `Host`, `Content-Length`, credentials and the auth and extra headers' names are replaced
    /// by the upstream.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Request body.
    pub body: Vec<u8>,
}

/// A response body as it arrives: non-empty chunks in order, then the end of the stream. An `Err` item ends it
/// early — the response was cut short, and whoever passes it on must show an error, never a clean end. Dropping it
/// before the end cancels the upstream call.
pub type BodyStream = futures::stream::BoxStream<'static, Result<Vec<u8>, UpstreamError>>;

/// The upstream's answer: its head as soon as it arrives, its body as a stream.
pub struct UpstreamResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, in the order received (names lower-case), hop-by-hop ones (`Transfer-Encoding`,
    /// `Connection`) and `Content-Length` included: strip them before serving the body again.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, at most the configured maximum in all.
    pub body: BodyStream,
}

impl fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamResponse {
    /// A response whose whole body is known.
    pub fn whole(status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>) -> Self {
        let chunks = if body.is_empty() { vec![] } else { vec![Ok(body)] };
        UpstreamResponse {
            status,
            headers,
            body: Box::pin(futures::stream::iter(chunks)),
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn collect(
        self,
        limit: usize,
    ) -> Result<(u16, Vec<(String, Vec<u8>)>, Vec<u8>), UpstreamError> {
        use futures::StreamExt;
        let mut body = Vec::new();
        let mut stream = self.body;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if chunk.len() > limit.saturating_sub(body.len()) {
                return Err(UpstreamError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((self.status, self.headers, body))
    }

    /// Whether the body is a stream of events (`text/event-stream`): its chunks must reach the client as they come.
    pub fn is_event_stream(&self) -> bool {
        self.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type")
                && v.get(..17)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"text/event-stream"))
        })
    }
}

/// What is left in the current rate-limit window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    /// Units left in this window.
    pub remaining: u64,
    /// Units per window.
    pub capacity: u64,
    /// When the window resets (ms since the Unix epoch).
    pub resets_at_ms: u64,
}

/// One unit of capacity taken by [`Upstream::try_acquire`]; pass it to [`Upstream::call`], or hand it back
/// with [`Upstream::release`] if the upstream refused before doing any work. Dropping it unused does not give
/// the unit back.
#[derive(Debug)]
#[must_use = "a permit holds one unit of capacity: pass it to `call` or give it back with `release`"]
pub struct Permit {
    /// Id of the upstream instance that issued it.
    owner: u64,
    /// The window (mock: window index; http: estimate epoch) the unit was taken from.
    window: u64,
    /// Counts this permit as in flight until it is dropped (http only).
    _flight: Option<InFlight>,
}

/// Decrements a shared in-flight counter when dropped, however the permit ends (called, released, dropped,
/// or its call future cancelled).
#[derive(Debug)]
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(counter: &Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why an upstream could not be built or called.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The environment variable that should hold the API key is unset or empty.
    #[error(
        "environment variable {var} is not set or is empty; set it to the upstream API key \
         (export {var}=...) or remove the key variable from the upstream config if the upstream needs no key"
    )]
    MissingApiKey {
        /// The variable to set.
        var: String,
    },
    /// The API key cannot be sent in an HTTP header (control characters, newline, non-ASCII).
    #[error(
        "the API key from {origin} contains characters that cannot be sent in an HTTP header; check its value"
    )]
    InvalidApiKey {
        /// Where the key came from (the environment variable name, or "the configured API key").
        origin: String,
    },
    /// The base URL, or the URL built from it, is unusable.
    #[error("upstream url {url:?} is not usable: {reason}")]
    BadUrl {
        /// The offending URL (never contains the key).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An auth style or extra header cannot be used (bad name or value, set twice, the auth header itself).
    #[error("upstream header setting is not usable: {0}")]
    InvalidHeader(String),
    /// The forwarded request cannot be expressed as HTTP (bad method or header).
    #[error("request cannot be forwarded upstream: {0}")]
    InvalidRequest(String),
    /// The upstream sent no response head within the first-byte limit.
    #[error(
        "upstream sent no response head within {timeout:?}; raise [upstream] first_byte_timeout if it is \
         really this slow"
    )]
    Timeout {
        /// The first-byte limit.
        timeout: Duration,
    },
    /// The upstream's body stopped: no next chunk within the idle limit.
    #[error(
        "upstream sent nothing for {idle:?} in the middle of its answer; raise [upstream] idle_timeout if its \
         pauses are this long"
    )]
    Idle {
        /// The idle limit.
        idle: Duration,
    },
    /// The TCP/TLS connection to the upstream failed; no work was done and the unit was given back.
    #[error("could not connect to the upstream at {base_url}: {source}")]
    Connect {
        /// The upstream's base URL.
        base_url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The response body exceeded the configured maximum; it was not buffered past the limit.
    #[error(
        "upstream response body exceeds the limit of {limit} bytes; \
         raise max_response_bytes if this is expected"
    )]
    BodyTooLarge {
        /// The configured maximum.
        limit: usize,
    },
    /// Any other HTTP-level failure while talking to the upstream.
    #[error("HTTP error talking to the upstream: {0}")]
    Http(#[source] reqwest::Error),
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("could not build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The permit was issued by another upstream instance.
    #[error("the permit was issued by a different upstream instance")]
    ForeignPermit,
}

/// A member's shareable capacity.
pub trait Upstream: Send + Sync + 'static {
    /// `"mock"` or `"http"`.
    fn kind(&self) -> &'static str;
    /// A snapshot of the current window at `now_ms`.
    fn headroom(&self, now_ms: u64) -> Headroom;
    /// Takes one unit only if more than `reserve` units remain at `now_ms`.
    fn try_acquire(&self, now_ms: u64, reserve: u64) -> Option<Permit>;
    /// Gives the unit back (the upstream refused before doing work). A permit from an earlier window is only
    /// retired: the new window already started full.
    fn release(&self, permit: Permit);
    /// What is left for a request for `model` (an upstream whose provider reports per-model windows, such as a
    /// subscription's `7d_sonnet`, narrows it); by default the same for every model.
    fn headroom_for(&self, now_ms: u64, _model: Option<&str>) -> Headroom {
        self.headroom(now_ms)
    }
    /// [`Upstream::try_acquire`] for a request for `model`.
    fn try_acquire_for(&self, now_ms: u64, reserve: u64, _model: Option<&str>) -> Option<Permit> {
        self.try_acquire(now_ms, reserve)
    }
    /// Whether this upstream may be lent at all now: a subscription that bills beyond its plan may not.
    fn may_lend(&self) -> bool {
        true
    }
    /// Rate-limit header values it sent that were ignored as malformed or out of range, so far.
    fn ignored_rate_limit_values(&self) -> u64 {
        0
    }
    /// Calls the upstream, spending `permit`. Resolves when the response head arrives; the body follows as a
    /// stream ([`UpstreamResponse::body`]), and dropping it (or this future) cancels the call.
    fn call(
        &self,
        permit: Permit,
        req: UpstreamRequest,
    ) -> BoxFuture<'_, Result<UpstreamResponse, UpstreamError>>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn system_time_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

fn wall_clock_ms() -> u64 {
    system_time_ms(SystemTime::now())
}

/// End of the aligned window containing `now_ms`.
fn aligned_window_end(now_ms: u64, window_ms: u64) -> u64 {
    (now_ms / window_ms).saturating_add(1).saturating_mul(window_ms)
}

mod auth;
mod http;
mod mock;
mod ratelimit;
mod set;
pub use auth::*;
pub use http::*;
pub use mock::*;
pub use ratelimit::*;
pub use set::*;

#[cfg(test)]
mod tests;
