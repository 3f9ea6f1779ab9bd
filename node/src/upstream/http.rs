//! The HTTP upstream: forwards to a real rate-limited API, reading its rate-limit headers for headroom.

use super::*;
use lendmesh_protocol::subscription::Subscription;

/// Settings for [`HttpUpstream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUpstreamConfig {
    /// Base URL, e.g. `https://api.openai.com/` or `http://127.0.0.1:8080/v1`; request paths are joined below
    /// it.
    pub base_url: String,
    /// Environment variable holding the API key (sent as `auth` says); `None` sends no key.
    pub api_key_env: Option<String>,
    /// How the key is sent.
    pub auth: AuthStyle,
    /// Fixed headers added to every request (e.g. `anthropic-version: 2023-06-01`); a caller's header of the
    /// same name is replaced.
    pub extra_headers: Vec<(String, String)>,
    /// Requests per window assumed when the upstream sends no rate-limit headers.
    pub budget_per_window: u64,
    /// Window for that budget (aligned to multiples of it since the Unix epoch; at least 1 ms).
    pub window: Duration,
    /// How long to wait for the response head (connecting and sending included): a thinking model may take
    /// minutes before its first byte.
    pub first_byte_timeout: Duration,
    /// Longest pause between two body chunks; there is no limit on the whole body, so a generation may stream for
    /// as long as it keeps sending.
    pub idle_timeout: Duration,
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
    /// The looser dimension (requests or tokens, in requests) that binds once the tighter one resets:
    /// `(remaining, resets_at_ms)`, later than `resets_at_ms`.
    then: Option<(u64, u64)>,
    /// A subscription's windows (`anthropic-ratelimit-unified-*`, Codex's percentages), merged response by
    /// response: the headroom is also at most the binding window's fraction left of the capacity.
    subscription: Option<Subscription>,
}

/// An upstream reached over HTTP(S) with an optional key.
pub struct HttpUpstream {
    id: u64,
    client: reqwest::Client,
    /// Normalised base: no query or fragment, path ends in `/`.
    base: Url,
    auth_style: AuthStyle,
    /// The auth header's value (`Bearer <key>` or the key), marked sensitive.
    pub(super) auth: Option<HeaderValue>,
    /// Checked once; added to every request.
    extra_headers: HeaderMap,
    api_key_env: Option<String>,
    budget: u64,
    window_ms: u64,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_response_bytes: usize,
    state: Mutex<HttpState>,
    /// Rate-limit header values ignored as malformed or out of range.
    ignored: AtomicU64,
    in_flight: Arc<AtomicU64>,
}

impl fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("base_url", &self.base.as_str())
            .field("api_key_env", &self.api_key_env)
            .field("auth", &self.auth_style.to_string())
            .field(
                "api_key",
                &if self.auth.is_some() {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field(
                "extra_headers",
                &self
                    .extra_headers
                    .keys()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>(),
            )
            .field("budget_per_window", &self.budget)
            .field("window_ms", &self.window_ms)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
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
    /// is then used only to name the key's origin in errors. The auth style and extra headers are checked here
    /// too (`InvalidHeader`), though the config checks them first.
    pub fn with_api_key(config: HttpUpstreamConfig, api_key: Option<String>) -> Result<Self, UpstreamError> {
        let base = normalize_base_url(&config.base_url)?;
        let extra_headers = check_extra_headers(
            &config.auth,
            config.extra_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        )
        .map_err(UpstreamError::InvalidHeader)?;
        let auth = match api_key {
            Some(key) => {
                let origin = config
                    .api_key_env
                    .clone()
                    .unwrap_or_else(|| "the configured API key".to_owned());
                Some(
                    config
                        .auth
                        .header_value(&key)
                        .ok_or(UpstreamError::InvalidApiKey { origin })?,
                )
            }
            None => None,
        };
        // No total timeout: a streamed generation may run for many minutes. The head and every pause in the body
        // are bounded by `forward` and `body_stream` instead.
        let client = reqwest::Client::builder()
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT.min(config.first_byte_timeout))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(UpstreamError::Client)?;
        Ok(HttpUpstream {
            id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
            client,
            base,
            auth_style: config.auth,
            auth,
            extra_headers,
            api_key_env: config.api_key_env,
            budget: config.budget_per_window,
            window_ms: duration_ms(config.window).max(1),
            first_byte_timeout: config.first_byte_timeout,
            idle_timeout: config.idle_timeout,
            max_response_bytes: config.max_response_bytes,
            state: Mutex::new(HttpState {
                limit: None,
                remaining: 0,
                resets_at_ms: 0,
                epoch: 0,
                then: None,
                subscription: None,
            }),
            in_flight: Arc::new(AtomicU64::new(0)),
            ignored: AtomicU64::new(0),
        })
    }

    fn capacity(&self, st: &HttpState) -> u64 {
        st.limit.unwrap_or(self.budget)
    }

    /// The headroom for a request for `model`: the request estimate, and at most the subscription's fraction left
    /// (of the binding window that applies to `model`) of the capacity, resetting with that window.
    fn view(&self, st: &HttpState, now_ms: u64, model: Option<&str>) -> Headroom {
        let capacity = self.capacity(st).max(st.remaining);
        let mut h = Headroom {
            remaining: st.remaining,
            capacity,
            resets_at_ms: st.resets_at_ms,
        };
        if let Some(sub) = &st.subscription {
            let left = lendmesh_protocol::subscription::units(sub.left(model, now_ms), capacity);
            if left < h.remaining {
                h.remaining = left;
                if let Some(reset) = sub.resets_at_ms(model, now_ms) {
                    h.resets_at_ms = reset;
                }
            }
        }
        h
    }

    /// The estimate rolled forward to `now_ms`: once the reset instant has passed, the looser dimension takes
    /// over if it has not reset yet, else a new aligned window starts full.
    fn state(&self, now_ms: u64) -> MutexGuard<'_, HttpState> {
        let mut st = lock(&self.state);
        if now_ms >= st.resets_at_ms {
            match st.then.take().filter(|&(_, until)| until > now_ms) {
                Some((remaining, until)) => {
                    st.remaining = remaining;
                    st.resets_at_ms = until;
                }
                None => {
                    st.remaining = self.capacity(&st);
                    st.resets_at_ms = aligned_window_end(now_ms, self.window_ms);
                }
            }
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
            if let Some((left, _)) = &mut st.then {
                *left = left.saturating_add(1).min(ceiling);
            }
        }
    }

    /// Folds what a response taught us into the estimate (`now_ms` from the wall clock): the tighter of
    /// requests and tokens, in requests ([`LearnedLimit::in_requests`]).
    pub(super) fn learn(&self, status: u16, headers: &[(String, Vec<u8>)], now_ms: u64) {
        let learned = parse_rate_limit(headers, now_ms);
        // This call's own permit is still alive, so it is among the in-flight ones; the upstream already
        // counted it.
        let others = self.in_flight.load(Ordering::Acquire).saturating_sub(1);
        let mut st = self.state(now_ms);
        let mut reset_learned = None;
        if let Some(l) = learned {
            if let Some(limit) = l.limit {
                st.limit = Some(limit);
            }
            let scaled = l.in_requests(self.capacity(&st));
            if let Some(remaining) = scaled.remaining {
                st.remaining = remaining.saturating_sub(others);
            }
            reset_learned = scaled.resets_at_ms;
            if let Some(reset) = scaled.resets_at_ms.filter(|&r| r > now_ms) {
                st.resets_at_ms = reset;
            }
            st.then = scaled
                .then
                .filter(|&(_, until)| until > st.resets_at_ms)
                .map(|(left, until)| (left.saturating_sub(others), until));
            debug!(
                source = ?l.source,
                limit = ?l.limit,
                remaining = ?l.remaining,
                quota = ?l.quota,
                bound_by = ?scaled.bound_by,
                estimate = st.remaining,
                "upstream rate limit learned"
            );
        }
        let subscription = Subscription::parse(headers);
        let windows_said = subscription.is_some();
        let told = learned.is_some() || windows_said;
        if let Some(newer) = subscription {
            if newer.ignored > 0 {
                self.ignored
                    .fetch_add(u64::from(newer.ignored), Ordering::Relaxed);
                debug!(
                    ignored = newer.ignored,
                    "subscription rate-limit values ignored (malformed or out of range)"
                );
            }
            match &mut st.subscription {
                Some(sub) => sub.update(newer),
                None => st.subscription = Some(newer),
            }
        }
        let retry_after = learned.and_then(|l| l.retry_after_ms);
        // What a refusal means (docs/design.md §5.1): a 429 that says nothing about the limits fails over without
        // touching the headroom; one with a subscription's windows set it from them above, window by window (its
        // `Retry-After`, hours for a weekly window, would block every model for one model family's window); one
        // with other rate-limit headers set it from them, and its `Retry-After` or reset blocks until then. An
        // unavailable or overloaded upstream (503, 529) has not spent any quota.
        let block_until = match status {
            503 | 529 => None,
            429 if !told || windows_said => None,
            429 => Some(
                retry_after
                    .max(reset_learned)
                    .unwrap_or_else(|| st.resets_at_ms.max(now_ms.saturating_add(MIN_REFUSAL_BACKOFF_MS))),
            ),
            _ => retry_after,
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
        // A connect timeout is a failed connect: nothing reached the upstream.
        if err.is_connect() {
            UpstreamError::Connect {
                base_url: self.base.to_string(),
                source: err,
            }
        } else if err.is_timeout() {
            UpstreamError::Timeout {
                timeout: self.first_byte_timeout,
            }
        } else if err.is_builder() {
            UpstreamError::InvalidRequest(err.to_string())
        } else {
            UpstreamError::Http(err)
        }
    }

    /// The caller's headers without the ones the client sets, without any credential, and without the auth and
    /// extra headers' names (compared case-insensitively), then the extra headers and the key.
    fn outgoing_headers(&self, headers: &[(String, Vec<u8>)]) -> Result<HeaderMap, UpstreamError> {
        const REPLACED: [&str; 3] = ["host", "content-length", "transfer-encoding"];
        let auth_name = self.auth_style.header_name();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if REPLACED
                .iter()
                .chain(CALLER_CREDENTIALS)
                .any(|r| name.eq_ignore_ascii_case(r))
            {
                continue;
            }
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                UpstreamError::InvalidRequest(format!("header name {name:?} is not valid HTTP"))
            })?;
            if n == auth_name || self.extra_headers.contains_key(&n) {
                continue;
            }
            let v = HeaderValue::from_bytes(value).map_err(|_| {
                UpstreamError::InvalidRequest(format!("value of header {name:?} is not valid HTTP"))
            })?;
            map.append(n, v);
        }
        for (n, v) in &self.extra_headers {
            map.insert(n.clone(), v.clone());
        }
        if let Some(auth) = &self.auth {
            map.insert(auth_name, auth.clone());
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
        let head = tokio::time::timeout(self.first_byte_timeout, builder.send()).await;
        let resp = match head {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let err = self.classify(e);
                let refundable = matches!(
                    err,
                    UpstreamError::Connect { .. } | UpstreamError::InvalidRequest(_)
                );
                return Err((err, refundable));
            }
            // The request may have reached the upstream: the unit stays spent.
            Err(_elapsed) => {
                let timeout = self.first_byte_timeout;
                return Err((UpstreamError::Timeout { timeout }, false));
            }
        };
        let status = resp.status().as_u16();
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        self.learn(status, &headers, wall_clock_ms());
        let limit = self.max_response_bytes;
        if resp
            .content_length()
            .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
        {
            return Err((UpstreamError::BodyTooLarge { limit }, false));
        }
        Ok(UpstreamResponse {
            status,
            headers,
            body: body_stream(resp, limit, self.idle_timeout),
        })
    }
}

/// The body chunk by chunk as it arrives, ending with `BodyTooLarge` as soon as it would exceed `limit` and with
/// `Idle` when no chunk comes for `idle` (the first one counted from the head).
fn body_stream(resp: reqwest::Response, limit: usize, idle: Duration) -> BodyStream {
    let state = (resp, 0usize, false);
    let chunks = futures::stream::unfold(state, move |(mut resp, seen, done)| async move {
        if done {
            return None;
        }
        let Ok(next) = tokio::time::timeout(idle, resp.chunk()).await else {
            return Some((Err(UpstreamError::Idle { idle }), (resp, seen, true)));
        };
        match next {
            Ok(None) => None,
            Ok(Some(chunk)) if chunk.len() > limit.saturating_sub(seen) => {
                Some((Err(UpstreamError::BodyTooLarge { limit }), (resp, seen, true)))
            }
            Ok(Some(chunk)) => {
                let seen = seen + chunk.len();
                Some((Ok(chunk.to_vec()), (resp, seen, false)))
            }
            Err(e) if e.is_timeout() => Some((Err(UpstreamError::Idle { idle }), (resp, seen, true))),
            Err(e) => Some((Err(UpstreamError::Http(e)), (resp, seen, true))),
        }
    });
    Box::pin(futures::TryStreamExt::try_filter(chunks, |c| {
        futures::future::ready(!c.is_empty())
    }))
}

impl Upstream for HttpUpstream {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn headroom(&self, now_ms: u64) -> Headroom {
        self.view(&self.state(now_ms), now_ms, None)
    }

    fn headroom_for(&self, now_ms: u64, model: Option<&str>) -> Headroom {
        self.view(&self.state(now_ms), now_ms, model)
    }

    fn may_lend(&self) -> bool {
        lock(&self.state)
            .subscription
            .as_ref()
            .is_none_or(Subscription::may_lend)
    }

    fn try_acquire(&self, now_ms: u64, reserve: u64) -> Option<Permit> {
        self.try_acquire_for(now_ms, reserve, None)
    }

    fn ignored_rate_limit_values(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    fn try_acquire_for(&self, now_ms: u64, reserve: u64, model: Option<&str>) -> Option<Permit> {
        let mut st = self.state(now_ms);
        (self.view(&st, now_ms, model).remaining > reserve).then(|| {
            st.remaining -= 1;
            if let Some((left, _)) = &mut st.then {
                *left = left.saturating_sub(1);
            }
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
pub(super) fn normalize_base_url(raw: &str) -> Result<Url, UpstreamError> {
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
pub(super) fn join_url(base: &Url, path_and_query: &str) -> Result<Url, UpstreamError> {
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
