use super::*;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap as AxumHeaders, Method, Uri};
use axum::response::Response;
use lendmesh_protocol::attestation::HeadroomBucket;
use lendmesh_protocol::capability::{Api, Need};
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
    let (_, _, body) = resp.collect(1 << 20).await.expect("whole body");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["served_by"], "erin");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/v1/chat?x=1");
    assert_eq!(v["request_body_bytes"], 5);
    assert_eq!(v["window_remaining"], 3);
}

// ----- http: local estimate (no network) ---------------------------------------------------------------

fn config(base: &str) -> HttpUpstreamConfig {
    HttpUpstreamConfig {
        base_url: base.into(),
        api_key_env: Some("LENDMESH_TEST_UPSTREAM_KEY".into()),
        auth: AuthStyle::Bearer,
        extra_headers: vec![],
        budget_per_window: 5,
        window: MINUTE,
        first_byte_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
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

    // An unavailable or overloaded upstream has spent no quota (docs/design.md §5.1): its rate-limit headers still
    // say what is left, its Retry-After does not block.
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
            remaining: 3,
            capacity: 10,
            resets_at_ms: 230_000
        }
    );
    up.learn(529, &h(&[("retry-after", "30")]), 200_000);
    assert_eq!(
        up.headroom(200_000).remaining,
        3,
        "overloaded is not out of quota"
    );
    // A 429 with nothing to go on fails over without touching the headroom.
    up.learn(429, &[], 200_000);
    assert_eq!(up.headroom(200_000).remaining, 3);
    // A 429 whose headers say the window is spent blocks until its reset.
    up.learn(
        429,
        &h(&[("ratelimit", "limit=10, remaining=0, reset=40")]),
        200_000,
    );
    assert_eq!(up.headroom(200_000).remaining, 0);
    assert_eq!(up.headroom(200_000).resets_at_ms, 240_000);
    // Retry-After on a success still means "not before then".
    up.learn(200, &h(&[("retry-after", "2")]), 300_000);
    assert_eq!(up.headroom(300_000).remaining, 0);
    assert_eq!(up.headroom(302_000).remaining, 10);
}

/// A subscription's windows (Anthropic's unified headers) in the order a Claude subscription sends them.
fn unified(windows: &[(&str, &str, &str, u64)], summary: Option<(&str, &str)>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, status, utilization, reset_s) in windows {
        let p = format!("anthropic-ratelimit-unified-{name}");
        out.push((format!("{p}-status"), status.as_bytes().to_vec()));
        out.push((format!("{p}-utilization"), utilization.as_bytes().to_vec()));
        out.push((format!("{p}-reset"), reset_s.to_string().into_bytes()));
    }
    if let Some((status, claim)) = summary {
        out.push((
            "anthropic-ratelimit-unified-status".into(),
            status.as_bytes().to_vec(),
        ));
        out.push((
            "anthropic-ratelimit-unified-representative-claim".into(),
            claim.as_bytes().to_vec(),
        ));
    }
    out
}

#[test]
fn a_subscriptions_windows_set_the_headroom_per_model() {
    let up = http("http://127.0.0.1:9/");
    let now = 1_000_000;
    let later_s = 4_000;
    // Healthy: 42 % of the 5 h window used binds (the budget is 5 a window in these tests).
    up.learn(
        200,
        &unified(
            &[
                ("5h", "allowed", "0.42", later_s),
                ("7d", "allowed", "0.10", later_s * 10),
            ],
            Some(("allowed", "five_hour")),
        ),
        now,
    );
    assert_eq!(
        up.headroom_for(now, Some("claude-sonnet-4-5")).remaining,
        2,
        "58 % of 5"
    );
    assert!(up.may_lend());
    // The trap: a 429 whose summary says rejected while only the opus-scoped weekly window is: Sonnet is not
    // blocked, Opus is, until that window resets.
    up.learn(
        429,
        &unified(
            &[("7d_oi", "rejected", "1.02", later_s)],
            Some(("rejected", "seven_day_opus")),
        ),
        now,
    );
    assert_eq!(up.headroom_for(now, Some("claude-opus-4-1")).remaining, 0);
    assert_eq!(
        up.headroom_for(now, Some("claude-opus-4-1")).resets_at_ms,
        later_s * 1000
    );
    assert_eq!(up.headroom_for(now, Some("claude-sonnet-4-5")).remaining, 2);
    assert!(up.try_acquire_for(now, 0, Some("claude-opus-4-1")).is_none());
    assert!(up.try_acquire_for(now, 0, Some("claude-sonnet-4-5")).is_some());
    // A 429 carrying only the spent 5 h window: nothing for any model until it resets; the week survives.
    up.learn(429, &unified(&[("5h", "rejected", "1.0", later_s)], None), now);
    assert_eq!(up.headroom_for(now, Some("claude-sonnet-4-5")).remaining, 0);
    assert_eq!(
        up.headroom_for(later_s * 1000, Some("claude-sonnet-4-5"))
            .remaining,
        4,
        "90 % of 5, the week"
    );
    // Billing beyond the plan: never lent.
    up.learn(200, &unified(&[], Some(("allowed", "overage"))), now);
    assert!(!up.may_lend());
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

mod headers;
mod providers;
mod server;

#[tokio::test(start_paused = true)]
async fn mock_streams_server_sent_events_apart() {
    let m = MockUpstream::new("sse".into(), 5, Duration::from_secs(60), Duration::ZERO)
        .streaming(3, Duration::from_millis(200));
    let p = m.try_acquire(0, 0).expect("unit");
    let resp = m
        .call(p, req("POST", "/v1/chat/completions"))
        .await
        .expect("answers");
    assert!(resp.is_event_stream());
    let mut body = resp.body;
    use futures::StreamExt;
    let start = tokio::time::Instant::now();
    let mut events = Vec::new();
    while let Some(chunk) = body.next().await {
        events.push((
            start.elapsed(),
            String::from_utf8(chunk.expect("chunk")).expect("utf-8"),
        ));
    }
    assert_eq!(events.len(), 4, "three events and [DONE]");
    assert!(events[0].1.starts_with("data: {") && events[0].1.ends_with("\n\n"));
    assert_eq!(events[3].1, "data: [DONE]\n\n");
    assert_eq!(events[0].0, Duration::ZERO, "the first event comes at once");
    assert_eq!(events[3].0, Duration::from_millis(600), "then one every 200 ms");
}

fn shared(name: &str, api: Api, models: &[&str], capacity: u64, keep_share: f64) -> Shared {
    Shared {
        name: name.into(),
        api,
        models: models.iter().map(|m| m.to_string()).collect(),
        reserve: 0,
        keep_share,
        upstream: Arc::new(MockUpstream::new(
            name.into(),
            capacity,
            Duration::from_secs(60),
            Duration::ZERO,
        )),
    }
}

fn need(path: &str, model: Option<&str>) -> Need {
    let body = model.map_or_else(String::new, |m| format!(r#"{{"model":"{m}"}}"#));
    Need::of(path, &[], &lendmesh_protocol::scrub::Body::parse(body.as_bytes()))
}

#[test]
fn a_lend_goes_to_an_upstream_that_serves_it_and_stops_at_the_kept_share() {
    let set = UpstreamSet::new(vec![
        shared("openai", Api::OpenAiChat, &["gpt-4o"], 10, 0.3),
        shared("claude", Api::AnthropicMessages, &[], 10, 0.3),
    ]);
    let now = 0;
    let anthropic = need("/v1/messages", Some("claude-sonnet-4-5"));
    // Seven lends, then the kept 30 % is the member's alone.
    for _ in 0..7 {
        let (s, p) = set.acquire_lend(&anthropic, now).expect("room to lend");
        assert_eq!(s.name, "claude");
        s.upstream.release(p);
        let (_, p) = set.acquire_own(&anthropic, now).expect("own");
        drop(p);
    }
    assert_eq!(
        set.acquire_lend(&anthropic, now).map(|(s, _)| s.name.clone()),
        Err(NoUpstream::NoHeadroom { resets_at_ms: 60_000 })
    );
    for _ in 0..3 {
        let (s, p) = set.acquire_own(&anthropic, now).expect("the member's own share");
        assert_eq!(s.name, "claude");
        drop(p);
    }
    assert!(set.acquire_own(&anthropic, now).is_none(), "the window is spent");
    // Nobody here serves this model, or this API.
    assert_eq!(
        set.acquire_lend(&need("/v1/chat/completions", Some("o3")), now)
            .map(|(s, _)| s.name.clone()),
        Err(NoUpstream::NotServed)
    );
    assert_eq!(
        set.acquire_lend(&need("/api/generate", None), now)
            .map(|(s, _)| s.name.clone()),
        Err(NoUpstream::NotServed)
    );
    // The attestation: one capability per upstream, with its lendable bucket.
    let caps = set.capabilities(now);
    assert_eq!(caps.len(), 2);
    assert_eq!(
        (caps[0].api, caps[0].headroom),
        (Api::OpenAiChat, HeadroomBucket::High)
    );
    assert_eq!(
        (caps[1].api, caps[1].headroom),
        (Api::AnthropicMessages, HeadroomBucket::None)
    );
    assert_eq!(UpstreamSet::summary(&caps).0, HeadroomBucket::High);
}
