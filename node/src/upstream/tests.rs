use super::*;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap as AxumHeaders, Method, Uri};
use axum::response::Response;
use serde_json::Value;

/// Upper bound on every network wait in these tests.
const WAIT: Duration = Duration::from_secs(10);
const KEY: &str = "sk-test-SECRET-4f9a2c";
const MINUTE: Duration = Duration::from_secs(60);

fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn req(method: &str, path: &str) -> UpstreamRequest {
    UpstreamRequest {
        method: method.into(),
        path_and_query: path.into(),
        ..Default::default()
    }
}

// ----- mock --------------------------------------------------------------------------------------------

#[test]
fn mock_capacity_per_window_and_reserve() {
    let m = MockUpstream::new("alice".into(), 3, MINUTE, Duration::ZERO);
    let now = 60_000 * 10 + 5;
    assert_eq!(
        m.headroom(now),
        Headroom {
            remaining: 3,
            capacity: 3,
            resets_at_ms: 60_000 * 11
        }
    );
    assert!(m.try_acquire(now, 2).is_some(), "3 remaining > reserve 2");
    assert!(m.try_acquire(now, 2).is_none(), "2 remaining is not > reserve 2");
    let _a = m.try_acquire(now, 0).expect("second unit");
    let _b = m.try_acquire(now + 1, 0).expect("third unit");
    assert!(m.try_acquire(now + 2, 0).is_none(), "window exhausted");
    assert_eq!(m.headroom(now).remaining, 0);
}

#[test]
fn mock_zero_capacity_never_has_headroom() {
    let m = MockUpstream::new("bob".into(), 0, MINUTE, Duration::ZERO);
    for now in [0, 1, 59_999, 60_000, 10_000_000] {
        assert!(m.try_acquire(now, 0).is_none());
        assert_eq!(m.headroom(now).remaining, 0);
    }
}

#[test]
fn mock_release_gives_back_only_in_same_window() {
    let m = MockUpstream::new("carol".into(), 1, MINUTE, Duration::ZERO);
    let p = m.try_acquire(1_000, 0).expect("unit");
    assert!(m.try_acquire(1_000, 0).is_none());
    m.release(p);
    assert_eq!(m.headroom(1_000).remaining, 1);
    let old = m.try_acquire(1_000, 0).expect("unit again");
    let _new = m.try_acquire(61_000, 0).expect("next window is full");
    m.release(old); // from the previous window: must not inflate the new one
    assert_eq!(m.headroom(61_000).remaining, 0);
}

#[test]
fn mock_window_rollover_is_epoch_aligned() {
    let m = MockUpstream::new("dave".into(), 2, Duration::from_secs(10), Duration::ZERO);
    let _a = m.try_acquire(19_999, 0).expect("unit");
    let _b = m.try_acquire(19_999, 0).expect("unit");
    assert!(m.try_acquire(19_999, 0).is_none());
    assert_eq!(m.headroom(19_999).resets_at_ms, 20_000);
    // 20_000 starts a new window even though only 1 ms passed since the units were taken.
    assert_eq!(
        m.headroom(20_000),
        Headroom {
            remaining: 2,
            capacity: 2,
            resets_at_ms: 30_000
        }
    );
    // Time going backwards (a caller's stale `now_ms`) does not bring the old window back.
    let _c = m.try_acquire(20_000, 0).expect("unit in the new window");
    assert_eq!(
        m.headroom(19_999),
        Headroom {
            remaining: 1,
            capacity: 2,
            resets_at_ms: 30_000
        }
    );
}

#[test]
fn permits_are_bound_to_their_issuer() {
    let a = MockUpstream::new("a".into(), 1, MINUTE, Duration::ZERO);
    let b = MockUpstream::new("b".into(), 1, MINUTE, Duration::ZERO);
    let _held = b.try_acquire(0, 0).expect("b unit");
    let p = a.try_acquire(0, 0).expect("a unit");
    b.release(p);
    assert_eq!(b.headroom(0).remaining, 0, "a's permit must not refill b");
    let p = a.try_acquire(60_000, 0).expect("a unit");
    let res = futures::executor::block_on(b.call(p, req("GET", "/")));
    assert!(matches!(res, Err(UpstreamError::ForeignPermit)));
}

#[tokio::test(start_paused = true)]
async fn mock_call_names_node_and_honours_latency() {
    let latency = Duration::from_millis(250);
    let m = MockUpstream::new("erin".into(), 5, MINUTE, latency);
    let now = wall_clock_ms();
    let p = m.try_acquire(now, 0).expect("unit");
    let too_early =
        tokio::time::timeout(latency - Duration::from_millis(1), m.call(p, req("GET", "/x"))).await;
    assert!(too_early.is_err(), "answered before its latency elapsed");
    assert_eq!(m.calls(), 0);

    let p = m.try_acquire(now, 0).expect("unit");
    let start = tokio::time::Instant::now();
    let mut r = req("POST", "/v1/chat?x=1");
    r.body = b"hello".to_vec();
    let resp = m.call(p, r).await.expect("mock answers");
    assert!(start.elapsed() >= latency);
    assert_eq!(m.calls(), 1);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers,
        vec![("content-type".to_owned(), b"application/json".to_vec())]
    );
    let v: Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(v["served_by"], "erin");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/v1/chat?x=1");
    assert_eq!(v["request_body_bytes"], 5);
    assert_eq!(v["window_remaining"], 3);
}

// ----- pure header parsing -----------------------------------------------------------------------------

const NOW: u64 = 1_700_000_000_000;

#[test]
fn go_durations() {
    let ok = [
        ("1s", 1_000),
        ("6m0s", 360_000),
        ("20ms", 20),
        ("1h2m3.5s", 3_723_500),
        ("0", 0),
        ("0s", 0),
        ("1.5s", 1_500),
        (".5s", 500),
        ("100us", 1),
        ("250µs", 1),
        ("1500000ns", 2),
        ("2h", 7_200_000),
        (" 7s ", 7_000),
    ];
    for (s, ms) in ok {
        assert_eq!(parse_go_duration_ms(s), Some(ms), "{s:?}");
    }
    for bad in [
        "",
        "s",
        "1",
        "1x",
        "-1s",
        "+1s",
        "1s2",
        "1e3s",
        ".s",
        "1 s",
        "99999999999999999999999h",
        "1ss",
    ] {
        assert_eq!(parse_go_duration_ms(bad), None, "{bad:?}");
    }
}

#[test]
fn rfc3339_timestamps() {
    let ok = [
        ("2024-01-01T00:00:00Z", 1_704_067_200_000),
        ("2000-02-29T12:00:00Z", 951_825_600_000),
        ("2024-06-30T23:59:59.25-02:30", 1_719_800_999_250),
        ("2024-01-01t00:00:00.123456789z", 1_704_067_200_123),
        ("2024-01-01T01:00:00+01:00", 1_704_067_200_000),
        ("2099-01-01T00:00:00Z", 4_070_908_800_000),
    ];
    for (s, ms) in ok {
        assert_eq!(parse_rfc3339_ms(s), Some(ms), "{s:?}");
    }
    let bad = [
        "",
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-00-01T00:00:00Z",
        "2024-04-31T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:60:00Z",
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00+0100",
        "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00Zx",
        "1969-12-31T23:59:59Z",
        "２０２４-01-01T00:00:00Z",
        "2024-01-01",
    ];
    for s in bad {
        assert_eq!(parse_rfc3339_ms(s), None, "{s:?}");
    }
}

#[test]
fn openai_headers() {
    let l = parse_rate_limit(
        &h(&[
            ("X-RateLimit-Limit-Requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "1"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.source, RateLimitSource::OpenAi);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(500), Some(499), Some(NOW + 360_000))
    );
    assert_eq!(l.retry_after_ms, None);
    let l = parse_rate_limit(
        &h(&[
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "60"),
        ]),
        NOW,
    )
    .expect("bare seconds");
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (None, Some(3), Some(NOW + 60_000))
    );
}

#[test]
fn anthropic_headers_take_priority() {
    let l = parse_rate_limit(
        &h(&[
            ("x-ratelimit-remaining-requests", "1"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "42"),
            ("anthropic-ratelimit-requests-reset", "2024-01-01T00:00:30Z"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.source, RateLimitSource::Anthropic);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(50), Some(42), Some(1_704_067_230_000))
    );
}

#[test]
fn ietf_structured_picks_most_restrictive_policy() {
    let l = parse_rate_limit(
        &h(&[
            ("RateLimit", r#""daily";r=100;t=3600, "burst";r=5;t=1"#),
            ("RateLimit-Policy", r#""burst";q=10;w=1, "daily";q=1000;w=86400"#),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.source, RateLimitSource::IetfStructured);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(10), Some(5), Some(NOW + 1_000))
    );

    let l = parse_rate_limit(
        &h(&[
            ("ratelimit", r#""default";r=50;t=30"#),
            ("ratelimit-policy", r#""default";q=100;w=60"#),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(100), Some(50), Some(NOW + 30_000))
    );
}

#[test]
fn ietf_structured_quoting_tokens_and_missing_policy() {
    let l = parse_rate_limit(
        &h(&[
            ("RateLimit", r#""a,b;c";r=3;t=2"#),
            ("RateLimit-Policy", r#""a,b;c";q=9"#),
        ]),
        NOW,
    )
    .expect("quoted name with separators");
    assert_eq!((l.limit, l.remaining), (Some(9), Some(3)));
    let l = parse_rate_limit(&h(&[("RateLimit", "default;r=5;t=10")]), NOW).expect("token name, no policy");
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (None, Some(5), Some(NOW + 10_000))
    );
    assert_eq!(
        parse_rate_limit(&h(&[("RateLimit", r#""default";t=10"#)]), NOW),
        None,
        "no r parameter"
    );
}

#[test]
fn ietf_combined_older_draft() {
    let l =
        parse_rate_limit(&h(&[("RateLimit", "limit=100, remaining=50, reset=30")]), NOW).expect("learned");
    assert_eq!(l.source, RateLimitSource::IetfCombined);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(100), Some(50), Some(NOW + 30_000))
    );
    let l = parse_rate_limit(&h(&[("RateLimit", "Remaining=0")]), NOW).expect("learned");
    assert_eq!((l.limit, l.remaining, l.resets_at_ms), (None, Some(0), None));
}

#[test]
fn ietf_separate_older_draft() {
    let l = parse_rate_limit(
        &h(&[
            ("RateLimit-Limit", "100, 100;w=60"),
            ("RateLimit-Remaining", "7"),
            ("RateLimit-Reset", "45"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.source, RateLimitSource::IetfSeparate);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(100), Some(7), Some(NOW + 45_000))
    );
    let l = parse_rate_limit(
        &h(&[("RateLimit-Remaining", "1"), ("RateLimit-Reset", "1700000900")]),
        NOW,
    )
    .expect("learned");
    assert_eq!(
        l.resets_at_ms,
        Some(1_700_000_900_000),
        "large reset values are Unix timestamps"
    );
}

#[test]
fn retry_after_forms() {
    let l = parse_rate_limit(&h(&[("Retry-After", "120")]), NOW).expect("learned");
    assert_eq!(l.source, RateLimitSource::RetryAfter);
    assert_eq!(l.retry_after_ms, Some(NOW + 120_000));
    assert_eq!((l.limit, l.remaining, l.resets_at_ms), (None, None, None));
    let l = parse_rate_limit(&h(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]), NOW).expect("date");
    assert_eq!(l.retry_after_ms, Some(784_111_777_000));
    let l = parse_rate_limit(
        &h(&[("retry-after", "5"), ("x-ratelimit-remaining-requests", "0")]),
        NOW,
    )
    .expect("both");
    assert_eq!(
        (l.source, l.remaining, l.retry_after_ms),
        (RateLimitSource::OpenAi, Some(0), Some(NOW + 5_000))
    );
    assert_eq!(parse_rate_limit(&h(&[("retry-after", "soon")]), NOW), None);
}

#[test]
fn garbage_is_ignored() {
    assert_eq!(parse_rate_limit(&[], NOW), None);
    assert_eq!(parse_rate_limit(&h(&[("content-type", "text/plain")]), NOW), None);
    let garbage = [
        ("x-ratelimit-remaining-requests", "-1"),
        ("x-ratelimit-limit-requests", "1e3"),
        (
            "anthropic-ratelimit-requests-remaining",
            "99999999999999999999999",
        ),
        ("ratelimit-remaining", ""),
        ("ratelimit", "\"unterminated;r=5"),
        ("retry-after", "-5"),
    ];
    assert_eq!(parse_rate_limit(&h(&garbage), NOW), None);
    let not_utf8 = vec![("x-ratelimit-remaining-requests".to_owned(), vec![0xff, b'5'])];
    assert_eq!(parse_rate_limit(&not_utf8, NOW), None);
}

#[test]
fn random_header_values_never_panic() {
    const NAMES: [&str; 14] = [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "ratelimit",
        "ratelimit-policy",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
        "RateLimit",
        "Retry-After",
    ];
    let alphabet: Vec<char> = "0123456789.:;,=\"\\ -+TtZzsmhµnu\u{e9}qrwlimt\u{1F600}"
        .chars()
        .collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(seed >> 33).unwrap_or(0)
    };
    for _ in 0..4_000 {
        let mut headers = Vec::new();
        for _ in 0..(next() % 5) {
            let name = NAMES[next() % NAMES.len()].to_owned();
            let value: Vec<u8> = if next() % 8 == 0 {
                (0..next() % 40)
                    .map(|_| u8::try_from(next() % 256).unwrap_or(0))
                    .collect()
            } else {
                (0..next() % 40)
                    .map(|_| alphabet[next() % alphabet.len()])
                    .collect::<String>()
                    .into_bytes()
            };
            headers.push((name, value));
        }
        let now = if next() % 4 == 0 {
            u64::MAX - (next() as u64)
        } else {
            NOW
        };
        let _ = parse_rate_limit(&headers, now);
    }
    for s in [
        "",
        "\u{1F600}",
        "1\u{1F600}s",
        "2024-01-01T00:00:00\u{1F600}",
        "\"",
        "\\",
        ",,,;;;===",
    ] {
        let _ = parse_go_duration_ms(s);
        let _ = parse_rfc3339_ms(s);
        let _ = parse_rate_limit(&h(&[("ratelimit", s), ("ratelimit-policy", s)]), NOW);
    }
}

// ----- http: local estimate (no network) ---------------------------------------------------------------

fn config(base: &str) -> HttpUpstreamConfig {
    HttpUpstreamConfig {
        base_url: base.into(),
        api_key_env: Some("LENDMESH_TEST_UPSTREAM_KEY".into()),
        budget_per_window: 5,
        window: MINUTE,
        timeout: Duration::from_secs(5),
        max_response_bytes: 64 * 1024,
    }
}

fn http(base: &str) -> HttpUpstream {
    HttpUpstream::with_api_key(config(base), Some(KEY.into())).expect("valid upstream")
}

#[test]
fn http_budget_fallback_and_local_decrements() {
    let up = http("http://127.0.0.1:9/");
    assert_eq!(up.kind(), "http");
    assert_eq!(
        up.headroom(60_500),
        Headroom {
            remaining: 5,
            capacity: 5,
            resets_at_ms: 120_000
        }
    );
    let permits: Vec<Permit> = (0..5)
        .map(|_| up.try_acquire(60_500, 0).expect("budget"))
        .collect();
    assert!(up.try_acquire(60_500, 0).is_none());
    drop(permits); // dropping does not give units back
    assert_eq!(up.headroom(60_500).remaining, 0);
    assert_eq!(
        up.headroom(120_000).remaining,
        5,
        "new aligned window restores the budget"
    );
    let p = up.try_acquire(120_000, 3).expect("5 > 3");
    assert!(up.try_acquire(120_000, 3).is_some());
    assert!(up.try_acquire(120_000, 3).is_none(), "3 left is not > reserve 3");
    up.release(p);
    assert_eq!(up.headroom(120_000).remaining, 4);
}

#[test]
fn http_learned_values_replace_estimate_minus_other_in_flight() {
    let up = http("http://127.0.0.1:9/");
    let now = 1_000;
    let answered = up.try_acquire(now, 0).expect("unit");
    let other = up.try_acquire(now, 0).expect("unit");
    up.learn(
        200,
        &h(&[
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-remaining-requests", "10"),
            ("x-ratelimit-reset-requests", "20s"),
        ]),
        now,
    );
    // The upstream counted `answered`, not `other`, which this node has already promised.
    assert_eq!(
        up.headroom(now),
        Headroom {
            remaining: 9,
            capacity: 100,
            resets_at_ms: 21_000
        }
    );
    drop(answered);
    up.release(other);
    assert_eq!(up.headroom(now).remaining, 10);
    assert_eq!(
        up.headroom(21_000),
        Headroom {
            remaining: 100,
            capacity: 100,
            resets_at_ms: 60_000
        }
    );
}

#[test]
fn http_refusals_block_until_retry_after_or_reset() {
    let up = http("http://127.0.0.1:9/");
    let now = 1_000;
    let held = up.try_acquire(now, 0).expect("unit");
    up.learn(429, &h(&[("retry-after", "120")]), now);
    assert_eq!(up.headroom(now).remaining, 0);
    assert_eq!(up.headroom(now).resets_at_ms, 121_000);
    up.release(held);
    assert_eq!(
        up.headroom(now).remaining,
        0,
        "a release must not reopen a refused window"
    );
    assert!(up.try_acquire(120_999, 0).is_none());
    assert_eq!(up.headroom(121_000).remaining, 5);

    // 503 with a reset header later than Retry-After: the later instant wins.
    up.learn(
        503,
        &h(&[
            ("retry-after", "1"),
            ("ratelimit", "limit=10, remaining=3, reset=30"),
        ]),
        200_000,
    );
    assert_eq!(
        up.headroom(200_000),
        Headroom {
            remaining: 0,
            capacity: 10,
            resets_at_ms: 230_000
        }
    );
    // 429 with nothing to go on: blocked until the current window ends.
    up.learn(429, &[], 230_000);
    assert_eq!(up.headroom(230_000).remaining, 0);
    assert_eq!(up.headroom(230_000).resets_at_ms, 240_000);
    // Retry-After on a success still means "not before then".
    up.learn(200, &h(&[("retry-after", "2")]), 300_000);
    assert_eq!(up.headroom(300_000).remaining, 0);
    assert_eq!(up.headroom(302_000).remaining, 10);
}

#[test]
fn urls_join_without_double_slashes_and_stay_below_base() {
    let base = normalize_base_url("http://h:8080/api").expect("base");
    assert_eq!(base.as_str(), "http://h:8080/api/");
    let join = |p: &str| join_url(&base, p).map(|u| u.to_string());
    assert_eq!(join("/v1/x").ok().as_deref(), Some("http://h:8080/api/v1/x"));
    assert_eq!(
        join("v1/x?a=1&b=2").ok().as_deref(),
        Some("http://h:8080/api/v1/x?a=1&b=2")
    );
    assert_eq!(join("").ok().as_deref(), Some("http://h:8080/api/"));
    assert_eq!(
        join("//evil.example/x").ok().as_deref(),
        Some("http://h:8080/api/evil.example/x")
    );
    for escape in ["/../admin", "/v1/../../admin", "/%2e%2e/admin"] {
        assert!(
            matches!(join(escape), Err(UpstreamError::BadUrl { .. })),
            "{escape}"
        );
    }
    assert!(matches!(join("/a b"), Err(UpstreamError::InvalidRequest(_))));
    assert_eq!(
        normalize_base_url("https://api.example.com")
            .expect("root")
            .as_str(),
        "https://api.example.com/"
    );
    for bad in [
        "ftp://h/",
        "not a url",
        "http://h/?q=1",
        "http://h/#f",
        "unix:/tmp/sock",
    ] {
        assert!(
            matches!(normalize_base_url(bad), Err(UpstreamError::BadUrl { .. })),
            "{bad}"
        );
    }
    let err = normalize_base_url("https://user:hunter2@h/").expect_err("credentials");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn api_key_from_environment() {
    let var = "LENDMESH_TEST_SURELY_UNSET_7F3A";
    let cfg = HttpUpstreamConfig {
        api_key_env: Some(var.into()),
        ..config("http://h/")
    };
    let err = HttpUpstream::new(cfg).expect_err("unset variable");
    assert!(matches!(&err, UpstreamError::MissingApiKey { .. }));
    assert!(err.to_string().contains(var), "{err}");
    let err = read_api_key(var, |_| None).expect_err("unset");
    assert!(err.to_string().contains(var), "{err}");
    let err = read_api_key(var, |_| Some("  ".into())).expect_err("empty");
    assert!(err.to_string().contains(var), "{err}");
    assert_eq!(
        read_api_key(var, |_| Some(" sk-abc\n".into())).expect("set"),
        "sk-abc"
    );
    let none = HttpUpstream::new(HttpUpstreamConfig {
        api_key_env: None,
        ..config("http://h/")
    })
    .expect("no key");
    assert!(none.auth.is_none());
    let err =
        HttpUpstream::with_api_key(config("http://h/"), Some("sk-\u{7}secret".into())).expect_err("bad key");
    assert!(matches!(&err, UpstreamError::InvalidApiKey { .. }));
    assert!(err.to_string().contains("LENDMESH_TEST_UPSTREAM_KEY") && !err.to_string().contains("secret"));
}

// ----- http: against a local server --------------------------------------------------------------------

/// What the test server answers next.
#[derive(Clone, Debug)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    /// Answer this many bytes (with Content-Length) instead of the echo.
    body_len: Option<usize>,
    /// Answer this many 1 KiB chunks without Content-Length instead of the echo.
    stream_chunks: Option<usize>,
    /// Never answer.
    hang: bool,
}

impl Script {
    fn ok(headers: &[(&'static str, &'static str)]) -> Self {
        Script {
            status: 200,
            headers: headers.to_vec(),
            body_len: None,
            stream_chunks: None,
            hang: false,
        }
    }
}

type Shared = Arc<Mutex<Script>>;

/// Echoes the request as JSON (method, uri, body, headers) with the scripted status and headers.
async fn echo(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: AxumHeaders,
    body: Bytes,
) -> Response {
    let script = lock(&s).clone();
    if script.hang {
        futures::future::pending::<()>().await;
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

async fn serve(script: Script) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(script));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(echo).with_state(Arc::clone(&shared));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), shared)
}

async fn call(up: &HttpUpstream, r: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
    let permit = up
        .try_acquire(wall_clock_ms(), 0)
        .expect("headroom for the test call");
    tokio::time::timeout(WAIT, up.call(permit, r))
        .await
        .expect("call finished in time")
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
    let up = http(&format!("http://{addr}/"));
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

#[tokio::test]
async fn http_timeout_is_reported() {
    let (base, _script) = serve(Script {
        hang: true,
        ..Script::ok(&[])
    })
    .await;
    let timeout = Duration::from_millis(200);
    let up = HttpUpstream::with_api_key(
        HttpUpstreamConfig {
            timeout,
            ..config(&base)
        },
        Some(KEY.into()),
    )
    .expect("upstream");
    let err = call(&up, req("GET", "/slow")).await.expect_err("never answers");
    assert!(
        matches!(err, UpstreamError::Timeout { timeout: t } if t == timeout),
        "{err:?}"
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
