//! The HTTP upstream against a local server: forwarding, keys, header families, refusals, limits, timeouts. The
//! server and its helpers serve `providers.rs` too.

use super::*;
use futures::StreamExt;

// ----- http: against a local server --------------------------------------------------------------------

/// What the test server answers next.
#[derive(Clone, Debug)]
pub(super) struct Script {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, &'static str)>,
    /// Answer this many bytes (with Content-Length) instead of the echo.
    pub(super) body_len: Option<usize>,
    /// Answer this many 1 KiB chunks without Content-Length instead of the echo.
    pub(super) stream_chunks: Option<usize>,
    /// Never answer.
    pub(super) hang: bool,
    /// Wait this long before the head.
    pub(super) head_delay: Duration,
    /// Answer these chunks, each after its pause, instead of the echo (no Content-Length).
    pub(super) paced: Vec<(Duration, &'static str)>,
    /// Answer 401 (with none of the scripted headers) unless each of these request headers came exactly once
    /// with this value, the way a provider refuses a request without its key or version header.
    pub(super) require: Vec<(&'static str, &'static str)>,
}

impl Script {
    pub(super) fn ok(headers: &[(&'static str, &'static str)]) -> Self {
        Script {
            status: 200,
            headers: headers.to_vec(),
            body_len: None,
            stream_chunks: None,
            hang: false,
            head_delay: Duration::ZERO,
            paced: vec![],
            require: vec![],
        }
    }
}

pub(super) type Shared = Arc<Mutex<Script>>;

/// Every request's headers as received, in order, repeated names included.
pub(super) type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// Echoes the request as JSON (method, uri, body, headers) with the scripted status and headers.
async fn echo(
    State((s, log)): State<(Shared, Seen)>,
    method: Method,
    uri: Uri,
    headers: AxumHeaders,
    body: Bytes,
) -> Response {
    let script = lock(&s).clone();
    lock(&log).push(
        headers
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_owned(), v)
            })
            .collect(),
    );
    if script.hang {
        futures::future::pending::<()>().await;
    }
    tokio::time::sleep(script.head_delay).await;
    let refused = script.require.iter().any(|(name, want)| {
        let got: Vec<_> = headers.get_all(*name).iter().collect();
        got.len() != 1 || got[0].as_bytes() != want.as_bytes()
    });
    if refused {
        let body =
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        return Response::builder()
            .status(401)
            .body(Body::from(body))
            .expect("valid response");
    }
    let mut seen = serde_json::Map::new();
    for (n, v) in &headers {
        seen.insert(
            n.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    let echo = serde_json::json!({
        "method": method.as_str(), "uri": uri.to_string(),
        "body": String::from_utf8_lossy(&body), "headers": seen,
    });
    let body = match (script.body_len, script.stream_chunks) {
        _ if !script.paced.is_empty() => {
            let chunks = futures::stream::iter(script.paced).then(|(pause, chunk)| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(Bytes::from_static(chunk.as_bytes()))
            });
            Body::from_stream(chunks)
        }
        (_, Some(n)) => Body::from_stream(futures::stream::iter(
            (0..n).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024]))),
        )),
        (Some(n), None) => Body::from(vec![b'y'; n]),
        (None, None) => Body::from(echo.to_string()),
    };
    let mut resp = Response::builder().status(script.status);
    for (n, v) in script.headers {
        resp = resp.header(n, v);
    }
    resp.body(body).expect("valid response")
}

pub(super) async fn serve(script: Script) -> (String, Shared) {
    let (base, shared, _seen) = serve_seen(script).await;
    (base, shared)
}

/// A server that also records the headers of every request.
pub(super) async fn serve_seen(script: Script) -> (String, Shared, Seen) {
    let shared = Arc::new(Mutex::new(script));
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .fallback(echo)
        .with_state((Arc::clone(&shared), Arc::clone(&seen)));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), shared, seen)
}

/// A whole answer, its body read to the end.
#[derive(Debug)]
pub(super) struct Whole {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) body: Vec<u8>,
}

pub(super) async fn call(up: &HttpUpstream, r: UpstreamRequest) -> Result<Whole, UpstreamError> {
    let permit = up
        .try_acquire(wall_clock_ms(), 0)
        .expect("headroom for the test call");
    let whole = async {
        let (status, headers, body) = up.call(permit, r).await?.collect(usize::MAX).await?;
        Ok(Whole {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(WAIT, whole)
        .await
        .expect("call finished in time")
}

/// An upstream sending [`KEY`] the `auth` way, with `extra` headers.
pub(super) fn styled(base: &str, auth: AuthStyle, extra: &[(&str, &str)]) -> HttpUpstream {
    let cfg = HttpUpstreamConfig {
        auth,
        extra_headers: extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        ..config(base)
    };
    HttpUpstream::with_api_key(cfg, Some(KEY.into())).expect("upstream")
}

#[tokio::test]
async fn http_forwards_method_path_body_headers_and_bearer_key() {
    let (base, _script) = serve(Script::ok(&[("x-echo", "yes")])).await;
    let up = http(&format!("{base}/api"));
    let mut r = req("PUT", "/v1/chat?x=1&y=two");
    r.body = b"hello upstream".to_vec();
    r.headers = h(&[
        ("x-custom", "abc"),
        ("X-Multi", "1"),
        ("x-multi", "2"),
        ("authorization", "Bearer borrower-token"),
        ("Host", "evil.example"),
        ("content-length", "999"),
    ]);
    let resp = call(&up, r).await.expect("answered");
    assert_eq!(resp.status, 200);
    let v: Value = serde_json::from_slice(&resp.body).expect("echo json");
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["uri"], "/api/v1/chat?x=1&y=two");
    assert_eq!(v["body"], "hello upstream");
    let seen = &v["headers"];
    assert_eq!(seen["authorization"], format!("Bearer {KEY}"));
    assert_eq!(seen["host"], base.trim_start_matches("http://"));
    assert_eq!(seen["content-length"], "14");
    assert_eq!(seen["x-custom"], "abc");
    assert!(
        seen["x-multi"] == "1" || seen["x-multi"] == "2",
        "repeated header forwarded"
    );
    assert!(
        resp.headers.contains(&("x-echo".to_owned(), b"yes".to_vec())),
        "{:?}",
        resp.headers
    );
}

#[tokio::test]
async fn http_without_key_sends_no_authorization() {
    let (base, _script) = serve(Script::ok(&[])).await;
    let up = HttpUpstream::with_api_key(
        HttpUpstreamConfig {
            api_key_env: None,
            ..config(&base)
        },
        None,
    )
    .expect("upstream");
    let mut r = req("GET", "/");
    r.headers = h(&[("authorization", "Bearer borrower-token")]);
    let v: Value = serde_json::from_slice(&call(&up, r).await.expect("answered").body).expect("json");
    assert_eq!(v["method"], "GET");
    assert!(
        v["headers"].get("authorization").is_none(),
        "the borrower's credentials must not leak upstream"
    );
}

#[tokio::test]
async fn http_key_absent_from_debug_and_errors() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    for style in [
        AuthStyle::Bearer,
        AuthStyle::XApiKey,
        AuthStyle::Header("api-key".into()),
    ] {
        let up = styled(
            &format!("http://{addr}/"),
            style,
            &[("anthropic-version", "2023-06-01")],
        );
        let dbg = format!("{up:?}");
        assert!(!dbg.contains(KEY) && dbg.contains("<redacted>"), "{dbg}");
        let now = wall_clock_ms();
        let before = up.headroom(now).remaining;
        let err = call(&up, req("GET", "/v1/models"))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
        let shown = format!("{err} / {err:?} / {:?}", std::error::Error::source(&err));
        assert!(!shown.contains(KEY), "{shown}");
        assert_eq!(
            up.headroom(now).remaining,
            before,
            "a failed connect gives its unit back"
        );
    }
}

#[tokio::test]
async fn http_learns_each_header_family() {
    let (base, script) = serve(Script::ok(&[])).await;
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        u64,
        u64,
        Option<u64>,
    );
    // (family, headers, expected capacity, expected remaining, expected reset delay in ms if relative)
    let cases: Vec<Case> = vec![
        (
            "openai",
            vec![
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-remaining-requests", "499"),
                ("x-ratelimit-reset-requests", "6m0s"),
            ],
            500,
            499,
            Some(360_000),
        ),
        (
            "anthropic",
            vec![
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "42"),
                ("anthropic-ratelimit-requests-reset", "2099-01-01T00:00:00Z"),
            ],
            50,
            42,
            None,
        ),
        (
            "ietf structured",
            vec![
                ("ratelimit", "\"default\";r=50;t=30"),
                ("ratelimit-policy", "\"default\";q=100;w=60"),
            ],
            100,
            50,
            Some(30_000),
        ),
        (
            "ietf combined",
            vec![("ratelimit", "limit=100, remaining=7, reset=30")],
            100,
            7,
            Some(30_000),
        ),
        (
            "ietf separate",
            vec![
                ("ratelimit-limit", "80"),
                ("ratelimit-remaining", "8"),
                ("ratelimit-reset", "45"),
            ],
            80,
            8,
            Some(45_000),
        ),
        ("none (budget)", vec![], 5, 4, None),
    ];
    for (family, headers, capacity, remaining, delay) in cases {
        lock(&script).headers = headers;
        let up = http(&base);
        let before = wall_clock_ms();
        let resp = call(&up, req("GET", "/")).await.expect("answered");
        let after = wall_clock_ms();
        assert_eq!(resp.status, 200, "{family}");
        let got = up.headroom(after);
        assert_eq!((got.capacity, got.remaining), (capacity, remaining), "{family}");
        match (family, delay) {
            ("anthropic", _) => assert_eq!(got.resets_at_ms, 4_070_908_800_000),
            (_, Some(d)) => assert!(
                (before + d..=after + d).contains(&got.resets_at_ms),
                "{family}: {got:?}"
            ),
            (_, None) => assert_eq!(got.resets_at_ms, aligned_window_end(after, 60_000), "{family}"),
        }
    }
}

#[tokio::test]
async fn http_429_with_retry_after_means_no_headroom_until_then() {
    let (base, _script) = serve(Script {
        status: 429,
        ..Script::ok(&[("retry-after", "120")])
    })
    .await;
    let up = http(&base);
    let before = wall_clock_ms();
    let resp = call(&up, req("POST", "/v1/chat"))
        .await
        .expect("a refusal is still an answer");
    let after = wall_clock_ms();
    assert_eq!(resp.status, 429);
    let got = up.headroom(after);
    assert_eq!(got.remaining, 0);
    assert!(
        (before + 120_000..=after + 120_000).contains(&got.resets_at_ms),
        "{got:?}"
    );
    assert!(up.try_acquire(after, 0).is_none());
    assert!(up.try_acquire(got.resets_at_ms - 1, 0).is_none());
    assert!(
        up.try_acquire(got.resets_at_ms, 0).is_some(),
        "budget restored once the refusal expires"
    );
}

#[tokio::test]
async fn http_oversized_response_is_refused() {
    let limit = config("http://h/").max_response_bytes;
    let (base, script) = serve(Script {
        body_len: Some(limit + 1),
        ..Script::ok(&[])
    })
    .await;
    let up = http(&base);
    let err = call(&up, req("GET", "/big"))
        .await
        .expect_err("announced too large");
    assert!(
        matches!(err, UpstreamError::BodyTooLarge { limit: l } if l == limit),
        "{err:?}"
    );

    lock(&script).body_len = Some(limit);
    assert_eq!(
        call(&up, req("GET", "/exact"))
            .await
            .expect("at the limit")
            .body
            .len(),
        limit
    );

    *lock(&script) = Script {
        stream_chunks: Some(limit / 1024 + 1),
        ..Script::ok(&[])
    };
    let err = call(&up, req("GET", "/stream"))
        .await
        .expect_err("streamed too large");
    assert!(matches!(err, UpstreamError::BodyTooLarge { .. }), "{err:?}");
}

/// An upstream with these limits (the key is [`KEY`], sent as a bearer token).
fn timed(base: &str, first_byte: Duration, idle: Duration) -> HttpUpstream {
    let cfg = HttpUpstreamConfig {
        first_byte_timeout: first_byte,
        idle_timeout: idle,
        ..config(base)
    };
    HttpUpstream::with_api_key(cfg, Some(KEY.into())).expect("upstream")
}

#[tokio::test]
async fn http_no_head_within_the_first_byte_limit_is_a_timeout() {
    let (base, _script) = serve(Script {
        hang: true,
        ..Script::ok(&[])
    })
    .await;
    let first_byte = Duration::from_millis(200);
    let up = timed(&base, first_byte, Duration::from_secs(5));
    let now = wall_clock_ms();
    let before = up.headroom(now).remaining;
    let err = call(&up, req("GET", "/slow")).await.expect_err("never answers");
    assert!(
        matches!(err, UpstreamError::Timeout { timeout: t } if t == first_byte),
        "{err:?}"
    );
    assert!(err.to_string().contains("first_byte_timeout"), "{err}");
    assert_eq!(
        up.headroom(now).remaining,
        before - 1,
        "the request may have reached the upstream: its unit stays spent"
    );
}

#[tokio::test]
async fn http_stream_slower_than_the_limits_completes_while_chunks_keep_coming() {
    // Ten chunks 100 ms apart after a 100 ms head: a second in all, twice both limits, every pause a fifth of
    // the idle limit.
    let chunks: Vec<(Duration, &'static str)> = (0..10)
        .map(|_| (Duration::from_millis(100), "data: {\"delta\":\"tok\"}\n\n"))
        .collect();
    let (base, _script) = serve(Script {
        head_delay: Duration::from_millis(100),
        paced: chunks,
        ..Script::ok(&[("content-type", "text/event-stream")])
    })
    .await;
    let limit = Duration::from_millis(500);
    let up = timed(&base, limit, limit);
    let start = std::time::Instant::now();
    let resp = call(&up, req("POST", "/v1/chat/completions"))
        .await
        .expect("a slow but lively stream completes");
    assert!(
        start.elapsed() >= Duration::from_millis(1_000),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(resp.status, 200);
    let text = String::from_utf8(resp.body).expect("utf-8");
    assert_eq!(text.matches("data: ").count(), 10, "{text}");
}

#[tokio::test]
async fn http_pause_longer_than_the_idle_limit_ends_the_stream_with_idle() {
    let (base, _script) = serve(Script {
        paced: vec![
            (Duration::ZERO, "data: first\n\n"),
            (Duration::from_secs(5), "data: too late\n\n"),
        ],
        ..Script::ok(&[("content-type", "text/event-stream")])
    })
    .await;
    let idle = Duration::from_millis(300);
    let up = timed(&base, Duration::from_secs(5), idle);
    let permit = up.try_acquire(wall_clock_ms(), 0).expect("unit");
    let read = async {
        let resp = up.call(permit, req("POST", "/v1/messages")).await.expect("head");
        let start = std::time::Instant::now();
        let items: Vec<_> = resp.body.collect().await;
        (items, start.elapsed())
    };
    let (items, took) = tokio::time::timeout(WAIT, read).await.expect("ended in time");
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0].as_deref().ok(), Some(&b"data: first\n\n"[..]));
    assert!(
        matches!(&items[1], Err(UpstreamError::Idle { idle: i }) if *i == idle),
        "{:?}",
        items[1]
    );
    assert!(
        took < Duration::from_secs(4),
        "ended by the idle limit, not the late chunk: {took:?}"
    );
}

#[tokio::test]
async fn http_rejects_bad_requests_and_refunds() {
    let up = http("http://127.0.0.1:9/api/");
    let now = wall_clock_ms();
    let p = up.try_acquire(now, 0).expect("unit");
    let mut r = req("GET", "/");
    r.headers = h(&[("bad header", "x")]);
    assert!(matches!(
        up.call(p, r).await,
        Err(UpstreamError::InvalidRequest(_))
    ));
    let p = up.try_acquire(now, 0).expect("unit");
    assert!(matches!(
        up.call(p, req("GE T", "/")).await,
        Err(UpstreamError::InvalidRequest(_))
    ));
    let p = up.try_acquire(now, 0).expect("unit");
    assert!(matches!(
        up.call(p, req("GET", "/../x")).await,
        Err(UpstreamError::BadUrl { .. })
    ));
    assert_eq!(
        up.headroom(now).remaining,
        5,
        "nothing was sent, so every unit came back"
    );
}
