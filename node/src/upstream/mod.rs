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
//!   that served.
//! - [`HttpUpstream`]: forwards to a real base URL with `Authorization: Bearer <key>` (the key is read from
//!   an environment variable once, and never logged, printed by `Debug`, or put in an error). It starts from
//!   the configured budget per aligned window, decrements locally on every `try_acquire`, and **replaces**
//!   that estimate with whatever the upstream's rate-limit headers say ([`parse_rate_limit`]: OpenAI,
//!   Anthropic, the IETF httpapi drafts, `Retry-After`). A 429 or 503 means "nothing left until the reset /
//!   retry-after instant", and so does a `Retry-After` on any other response. When the reset instant passes,
//!   a new window starts with the learned limit (or the budget if none was ever learned).
//!
//! Learned `remaining` counts are reduced by the number of *other* permits still in flight: the upstream
//! counted the request it just answered but not the ones this node has reserved and not yet sent, so
//! subtracting them keeps the estimate conservative (it may under-lend briefly, it does not over-lend).
//!
//! `call` returns every HTTP answer, 429 and 5xx included, as `Ok`: the lender decides what a refusal means
//! for the borrower's token. Failures where nothing reached the upstream (connection refused, a request that
//! cannot be expressed as HTTP) give the unit back by themselves; a timeout does not, since the upstream may
//! have done the work.
//!
//! Everything is bounded: response bodies are read chunk by chunk up to `max_response_bytes`, requests have a
//! total timeout, redirects are never followed (a redirect is answered to the caller as-is, so the bearer key
//! never leaves for another host).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::{debug, warn};

/// Default total timeout for one upstream call. Inference calls can legitimately take minutes; anything
/// longer than this is treated as a dead upstream.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// Request headers; `Host`, `Authorization` and `Content-Length` are replaced by the upstream.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Request body.
    pub body: Vec<u8>,
}

/// The upstream's answer.
#[derive(Clone, Debug, Default)]
pub struct UpstreamResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, in the order received (names lower-case), hop-by-hop ones (`Transfer-Encoding`,
    /// `Connection`) and `Content-Length` included: strip them before serving the body again.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body (at most the configured maximum).
    pub body: Vec<u8>,
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
    /// The forwarded request cannot be expressed as HTTP (bad method or header).
    #[error("request cannot be forwarded upstream: {0}")]
    InvalidRequest(String),
    /// The upstream did not answer (headers and body) within the configured timeout.
    #[error("upstream did not answer within {timeout:?}")]
    Timeout {
        /// The configured timeout.
        timeout: Duration,
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
    /// Calls the upstream, spending `permit`.
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

// -----------------------------------------------------------------------------------------------------------
// Mock
// -----------------------------------------------------------------------------------------------------------

/// A deterministic upstream: `capacity` units per window aligned to multiples of `window` since the Unix
/// epoch. Its answers report `window_remaining`: what is left in the latest window it has seen.
#[derive(Debug)]
pub struct MockUpstream {
    id: u64,
    node_name: String,
    capacity: u64,
    window_ms: u64,
    latency: Duration,
    /// (window index, units used in it).
    used: Mutex<(u64, u64)>,
    calls: AtomicU64,
}

impl MockUpstream {
    /// A mock serving as `node_name` with `capacity` units per `window` (at least 1 ms) and `latency` per
    /// call. Capacity 0 never has headroom.
    pub fn new(node_name: String, capacity: u64, window: Duration, latency: Duration) -> Self {
        MockUpstream {
            id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
            node_name,
            capacity,
            window_ms: duration_ms(window).max(1),
            latency,
            used: Mutex::new((0, 0)),
            calls: AtomicU64::new(0),
        }
    }

    /// How many calls this mock has answered.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The state rolled forward to the window containing `now_ms` (time going backwards does not roll back).
    fn state(&self, now_ms: u64) -> MutexGuard<'_, (u64, u64)> {
        let mut g = lock(&self.used);
        let w = now_ms / self.window_ms;
        if w > g.0 {
            *g = (w, 0);
        }
        g
    }
}

impl Upstream for MockUpstream {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn headroom(&self, now_ms: u64) -> Headroom {
        let g = self.state(now_ms);
        Headroom {
            remaining: self.capacity.saturating_sub(g.1),
            capacity: self.capacity,
            resets_at_ms: g.0.saturating_add(1).saturating_mul(self.window_ms),
        }
    }

    fn try_acquire(&self, now_ms: u64, reserve: u64) -> Option<Permit> {
        let mut g = self.state(now_ms);
        (self.capacity.saturating_sub(g.1) > reserve).then(|| {
            g.1 += 1;
            Permit {
                owner: self.id,
                window: g.0,
                _flight: None,
            }
        })
    }

    fn release(&self, permit: Permit) {
        if permit.owner != self.id {
            warn!("permit released to a mock upstream that did not issue it; ignored");
            return;
        }
        let mut g = lock(&self.used);
        if g.0 == permit.window {
            g.1 = g.1.saturating_sub(1);
        }
    }

    fn call(
        &self,
        permit: Permit,
        req: UpstreamRequest,
    ) -> BoxFuture<'_, Result<UpstreamResponse, UpstreamError>> {
        Box::pin(async move {
            if permit.owner != self.id {
                return Err(UpstreamError::ForeignPermit);
            }
            tokio::time::sleep(self.latency).await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let window_remaining = {
                let g = lock(&self.used);
                self.capacity.saturating_sub(g.1)
            };
            let body = serde_json::json!({
                "served_by": self.node_name,
                "method": req.method,
                "path": req.path_and_query,
                "request_body_bytes": req.body.len(),
                "window_remaining": window_remaining,
            });
            Ok(UpstreamResponse {
                status: 200,
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                body: body.to_string().into_bytes(),
            })
        })
    }
}

// -----------------------------------------------------------------------------------------------------------
// HTTP
// -----------------------------------------------------------------------------------------------------------

/// Settings for [`HttpUpstream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUpstreamConfig {
    /// Base URL, e.g. `https://api.openai.com/` or `http://127.0.0.1:8080/v1`; request paths are joined below
    /// it.
    pub base_url: String,
    /// Environment variable holding the API key (sent as `Authorization: Bearer <key>`); `None` sends no key.
    pub api_key_env: Option<String>,
    /// Requests per window assumed when the upstream sends no rate-limit headers.
    pub budget_per_window: u64,
    /// Window for that budget (aligned to multiples of it since the Unix epoch; at least 1 ms).
    pub window: Duration,
    /// Total timeout per call (connect, headers and body).
    pub timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
}

/// The local estimate of the upstream's window.
#[derive(Debug)]
struct HttpState {
    /// Limit learned from headers, if any; replaces the configured budget.
    limit: Option<u64>,
    remaining: u64,
    resets_at_ms: u64,
    /// Bumped whenever `remaining` is reset wholesale (new window, refusal), so that releasing an older
    /// permit does not add a unit the reset already accounted for.
    epoch: u64,
}

/// An upstream reached over HTTP(S) with an optional bearer key.
pub struct HttpUpstream {
    id: u64,
    client: reqwest::Client,
    /// Normalised base: no query or fragment, path ends in `/`.
    base: Url,
    /// `Authorization` value, marked sensitive.
    auth: Option<HeaderValue>,
    api_key_env: Option<String>,
    budget: u64,
    window_ms: u64,
    timeout: Duration,
    max_response_bytes: usize,
    state: Mutex<HttpState>,
    in_flight: Arc<AtomicU64>,
}

impl fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("base_url", &self.base.as_str())
            .field("api_key_env", &self.api_key_env)
            .field(
                "api_key",
                &if self.auth.is_some() {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field("budget_per_window", &self.budget)
            .field("window_ms", &self.window_ms)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("state", &*lock(&self.state))
            .finish()
    }
}

/// Reads the API key from `var` through `lookup` (normally [`std::env::var_os`]); unset, empty or non-UTF-8
/// is an error naming the variable.
pub fn read_api_key(
    var: &str,
    lookup: impl FnOnce(&str) -> Option<std::ffi::OsString>,
) -> Result<String, UpstreamError> {
    match lookup(var).and_then(|v| v.into_string().ok()) {
        Some(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
        _ => Err(UpstreamError::MissingApiKey { var: var.to_owned() }),
    }
}

impl HttpUpstream {
    /// Builds the upstream, reading the API key from `config.api_key_env` (if named) now.
    pub fn new(config: HttpUpstreamConfig) -> Result<Self, UpstreamError> {
        let key = match &config.api_key_env {
            Some(var) => Some(read_api_key(var, |v| std::env::var_os(v))?),
            None => None,
        };
        Self::with_api_key(config, key)
    }

    /// Builds the upstream with an API key obtained elsewhere (a secrets file, tests); `config.api_key_env`
    /// is then used only to name the key's origin in errors.
    pub fn with_api_key(config: HttpUpstreamConfig, api_key: Option<String>) -> Result<Self, UpstreamError> {
        let base = normalize_base_url(&config.base_url)?;
        let auth = match api_key {
            Some(key) => {
                let origin = config
                    .api_key_env
                    .clone()
                    .unwrap_or_else(|| "the configured API key".to_owned());
                let mut value = HeaderValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| UpstreamError::InvalidApiKey { origin })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(UpstreamError::Client)?;
        Ok(HttpUpstream {
            id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
            client,
            base,
            auth,
            api_key_env: config.api_key_env,
            budget: config.budget_per_window,
            window_ms: duration_ms(config.window).max(1),
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
            state: Mutex::new(HttpState {
                limit: None,
                remaining: 0,
                resets_at_ms: 0,
                epoch: 0,
            }),
            in_flight: Arc::new(AtomicU64::new(0)),
        })
    }

    fn capacity(&self, st: &HttpState) -> u64 {
        st.limit.unwrap_or(self.budget)
    }

    /// The estimate rolled forward to `now_ms`: once the reset instant has passed, a new aligned window
    /// starts full.
    fn state(&self, now_ms: u64) -> MutexGuard<'_, HttpState> {
        let mut st = lock(&self.state);
        if now_ms >= st.resets_at_ms {
            st.remaining = self.capacity(&st);
            st.resets_at_ms = aligned_window_end(now_ms, self.window_ms);
            st.epoch += 1;
        }
        st
    }

    /// Gives one unit back if the estimate has not been reset since the permit was taken.
    fn give_back(&self, window: u64) {
        let mut st = lock(&self.state);
        if st.epoch == window {
            let ceiling = self.capacity(&st).max(st.remaining);
            st.remaining = st.remaining.saturating_add(1).min(ceiling);
        }
    }

    /// Folds what a response taught us into the estimate (`now_ms` from the wall clock).
    fn learn(&self, status: u16, headers: &[(String, Vec<u8>)], now_ms: u64) {
        let learned = parse_rate_limit(headers, now_ms);
        // This call's own permit is still alive, so it is among the in-flight ones; the upstream already
        // counted it.
        let others = self.in_flight.load(Ordering::Acquire).saturating_sub(1);
        let mut st = self.state(now_ms);
        if let Some(l) = learned {
            if let Some(limit) = l.limit {
                st.limit = Some(limit);
            }
            if let Some(remaining) = l.remaining {
                st.remaining = remaining.saturating_sub(others);
            }
            if let Some(reset) = l.resets_at_ms.filter(|&r| r > now_ms) {
                st.resets_at_ms = reset;
            }
            debug!(
                source = ?l.source,
                limit = ?l.limit,
                remaining = ?l.remaining,
                "upstream rate limit learned"
            );
        }
        let refused = status == 429 || status == 503;
        let retry_after = learned.and_then(|l| l.retry_after_ms);
        let block_until = if refused {
            let header_instant = retry_after.max(learned.and_then(|l| l.resets_at_ms));
            Some(
                header_instant
                    .unwrap_or_else(|| st.resets_at_ms.max(now_ms.saturating_add(MIN_REFUSAL_BACKOFF_MS))),
            )
        } else {
            retry_after
        };
        if let Some(until) = block_until.filter(|&u| u > now_ms) {
            st.remaining = 0;
            st.resets_at_ms = until;
            st.epoch += 1;
            drop(st);
            warn!(
                status,
                blocked_for_ms = until - now_ms,
                "upstream refused or asked to back off; no headroom until then"
            );
        }
    }

    fn classify(&self, err: reqwest::Error) -> UpstreamError {
        if err.is_timeout() {
            UpstreamError::Timeout {
                timeout: self.timeout,
            }
        } else if err.is_connect() {
            UpstreamError::Connect {
                base_url: self.base.to_string(),
                source: err,
            }
        } else if err.is_builder() {
            UpstreamError::InvalidRequest(err.to_string())
        } else {
            UpstreamError::Http(err)
        }
    }

    fn outgoing_headers(&self, headers: &[(String, Vec<u8>)]) -> Result<HeaderMap, UpstreamError> {
        const REPLACED: [&str; 4] = ["host", "authorization", "content-length", "transfer-encoding"];
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                continue;
            }
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                UpstreamError::InvalidRequest(format!("header name {name:?} is not valid HTTP"))
            })?;
            let v = HeaderValue::from_bytes(value).map_err(|_| {
                UpstreamError::InvalidRequest(format!("value of header {name:?} is not valid HTTP"))
            })?;
            map.append(n, v);
        }
        if let Some(auth) = &self.auth {
            map.insert(reqwest::header::AUTHORIZATION, auth.clone());
        }
        Ok(map)
    }

    /// Sends the request; errors before anything reached the upstream are flagged `true` (unit can be
    /// refunded).
    async fn forward(&self, req: UpstreamRequest) -> Result<UpstreamResponse, (UpstreamError, bool)> {
        let url = join_url(&self.base, &req.path_and_query).map_err(|e| (e, true))?;
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|_| {
            (
                UpstreamError::InvalidRequest(format!("{:?} is not a valid HTTP method", req.method)),
                true,
            )
        })?;
        let headers = self.outgoing_headers(&req.headers).map_err(|e| (e, true))?;
        let mut builder = self.client.request(method, url).headers(headers);
        if !req.body.is_empty() {
            builder = builder.body(req.body);
        }
        let resp = builder.send().await.map_err(|e| {
            let err = self.classify(e);
            let refundable = matches!(
                err,
                UpstreamError::Connect { .. } | UpstreamError::InvalidRequest(_)
            );
            (err, refundable)
        })?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        self.learn(status, &headers, wall_clock_ms());
        let body = self.read_limited(resp).await.map_err(|e| (e, false))?;
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }

    /// Reads the body chunk by chunk, refusing as soon as it would exceed `max_response_bytes`.
    async fn read_limited(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
        let limit = self.max_response_bytes;
        let announced = resp.content_length();
        if announced.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
            return Err(UpstreamError::BodyTooLarge { limit });
        }
        let mut body = Vec::with_capacity(
            announced
                .map_or(0, |n| usize::try_from(n).unwrap_or(limit))
                .min(limit),
        );
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(e))? {
            if chunk.len() > limit - body.len() {
                return Err(UpstreamError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

impl Upstream for HttpUpstream {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn headroom(&self, now_ms: u64) -> Headroom {
        let st = self.state(now_ms);
        Headroom {
            remaining: st.remaining,
            capacity: self.capacity(&st).max(st.remaining),
            resets_at_ms: st.resets_at_ms,
        }
    }

    fn try_acquire(&self, now_ms: u64, reserve: u64) -> Option<Permit> {
        let mut st = self.state(now_ms);
        (st.remaining > reserve).then(|| {
            st.remaining -= 1;
            Permit {
                owner: self.id,
                window: st.epoch,
                _flight: Some(InFlight::new(&self.in_flight)),
            }
        })
    }

    fn release(&self, permit: Permit) {
        if permit.owner != self.id {
            warn!("permit released to an http upstream that did not issue it; ignored");
            return;
        }
        self.give_back(permit.window);
    }

    fn call(
        &self,
        permit: Permit,
        req: UpstreamRequest,
    ) -> BoxFuture<'_, Result<UpstreamResponse, UpstreamError>> {
        Box::pin(async move {
            if permit.owner != self.id {
                return Err(UpstreamError::ForeignPermit);
            }
            // The permit stays alive (counted in flight) until the response has been learned from.
            match self.forward(req).await {
                Ok(resp) => Ok(resp),
                Err((err, refundable)) => {
                    if refundable {
                        self.give_back(permit.window);
                    }
                    debug!(%err, refundable, "upstream call failed");
                    Err(err)
                }
            }
        })
    }
}

/// Parses and normalises a base URL: http(s) only, a host, no credentials, query or fragment; path ends in
/// `/`.
fn normalize_base_url(raw: &str) -> Result<Url, UpstreamError> {
    let bad = |reason: &str| UpstreamError::BadUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url =
        Url::parse(raw.trim()).map_err(|e| bad(&format!("{e}; expected e.g. https://api.example.com/v1")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Never echo the credentials back in the error.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        return Err(UpstreamError::BadUrl {
            url: url.to_string(),
            reason: "it contains credentials; put the API key in the environment variable instead".into(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a base URL cannot have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Joins `path_and_query` below `base` (exactly one `/` between them) and checks the result stays below it:
/// same scheme, host and port, and no `..` segment escaping the base path.
fn join_url(base: &Url, path_and_query: &str) -> Result<Url, UpstreamError> {
    if path_and_query.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(UpstreamError::InvalidRequest(
            "path contains whitespace or control characters".into(),
        ));
    }
    let joined = format!("{}{}", base.as_str(), path_and_query.trim_start_matches('/'));
    let bad = |reason: &str| UpstreamError::BadUrl {
        url: joined.clone(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(&joined).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err(bad("the request path changes the upstream host"));
    }
    if !url.path().starts_with(base.path()) {
        return Err(bad("the request path escapes the base URL's path"));
    }
    Ok(url)
}

// -----------------------------------------------------------------------------------------------------------
// Rate-limit headers (pure)
// -----------------------------------------------------------------------------------------------------------

mod ratelimit;
pub use ratelimit::*;

/// Builds the HTTP upstream from the node's `[upstream]` settings.
pub fn http_from_config(
    u: &crate::config::UpstreamConfig,
) -> Result<std::sync::Arc<dyn Upstream>, UpstreamError> {
    Ok(std::sync::Arc::new(HttpUpstream::new(HttpUpstreamConfig {
        base_url: u.url.clone(),
        api_key_env: Some(u.key_env.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        budget_per_window: u.budget_per_window,
        window: u.window,
        timeout: DEFAULT_TIMEOUT,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
    })?))
}

#[cfg(test)]
mod tests;
