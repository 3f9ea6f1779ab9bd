//! Auth styles and extra headers, and token headroom against servers that behave like OpenAI's and Anthropic's.

use super::server::{Script, call, serve, serve_seen, styled};
use super::*;

// ----- auth styles and extra headers -------------------------------------------------------------------

/// The values a request carried under `name` (case-insensitive), in order.
fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn http_auth_styles_send_the_key_once_and_replace_the_callers_headers() {
    let (base, _script, seen) = serve_seen(Script::ok(&[])).await;
    let bearer = format!("Bearer {KEY}");
    let styles: [(AuthStyle, &str, &str); 3] = [
        (AuthStyle::Bearer, "authorization", &bearer),
        (AuthStyle::XApiKey, "x-api-key", KEY),
        ("header:Api-Key".parse().expect("style"), "api-key", KEY),
    ];
    let extra = [("anthropic-version", "2023-06-01"), ("X-Team", "blue")];
    for (style, header, value) in styles {
        let up = styled(&base, style.clone(), &extra);
        let mut r = req("POST", "/v1/messages");
        r.headers = h(&[
            ("x-api-key", "borrower-key-1"),
            ("X-API-KEY", "borrower-key-2"),
            ("Api-Key", "borrower-key-3"),
            ("authorization", "Bearer borrower-key-4"),
            ("Proxy-Authorization", "Basic borrower-key-5"),
            ("Anthropic-Version", "1999-01-01"),
            ("x-team", "red"),
            ("x-custom", "abc"),
        ]);
        assert_eq!(call(&up, r).await.expect("answered").status, 200, "{style}");
        let got = lock(&seen).pop().expect("request recorded");
        assert_eq!(values(&got, header), [value], "{style}: {got:?}");
        for credential in ["authorization", "x-api-key", "api-key"]
            .into_iter()
            .filter(|c| *c != header)
        {
            assert!(
                values(&got, credential).is_empty(),
                "{style}: {credential} in {got:?}"
            );
        }
        assert!(values(&got, "proxy-authorization").is_empty(), "{got:?}");
        assert!(
            got.iter().all(|(_, v)| !v.contains("borrower-key")),
            "{style}: a caller's credential was forwarded: {got:?}"
        );
        assert_eq!(values(&got, "anthropic-version"), ["2023-06-01"], "{style}");
        assert_eq!(values(&got, "x-team"), ["blue"], "{style}");
        assert_eq!(values(&got, "x-custom"), ["abc"], "{style}");
        let dbg = format!("{up:?}");
        assert!(!dbg.contains(KEY) && dbg.contains("<redacted>"), "{dbg}");
        assert!(dbg.contains(&style.to_string()), "{dbg}");
    }
}

#[tokio::test]
async fn http_bad_header_settings_are_refused_without_the_key() {
    let cases: [(AuthStyle, &[(&str, &str)]); 4] = [
        (AuthStyle::Bearer, &[("bad name", "x")]),
        (AuthStyle::Bearer, &[("x-a", "one\ntwo")]),
        (AuthStyle::XApiKey, &[("X-Api-Key", "sk-in-config")]),
        (AuthStyle::Bearer, &[("x-a", "1"), ("X-A", "2")]),
    ];
    for (auth, extra) in cases {
        let cfg = HttpUpstreamConfig {
            auth,
            extra_headers: extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            ..config("http://h/")
        };
        let err = HttpUpstream::with_api_key(cfg, Some(KEY.into())).expect_err("refused");
        assert!(matches!(err, UpstreamError::InvalidHeader(_)), "{err:?}");
        let shown = format!("{err} / {err:?}");
        assert!(!shown.contains(KEY) && !shown.contains("sk-in-config"), "{shown}");
    }
    for bad in ["x y", "content-length", ""] {
        let cfg = HttpUpstreamConfig {
            auth: AuthStyle::Header(bad.into()),
            ..config("http://h/")
        };
        let err = HttpUpstream::with_api_key(cfg, Some(KEY.into())).expect_err("bad auth header");
        assert!(matches!(err, UpstreamError::InvalidHeader(_)), "{bad:?}: {err:?}");
    }
    for style in [AuthStyle::XApiKey, AuthStyle::Header("api-key".into())] {
        let err = HttpUpstream::with_api_key(
            HttpUpstreamConfig {
                auth: style,
                ..config("http://h/")
            },
            Some("sk-\u{7}secret".into()),
        )
        .expect_err("bad key");
        assert!(matches!(&err, UpstreamError::InvalidApiKey { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("secret"), "{err}");
    }
}

// ----- token headroom against provider-like servers ----------------------------------------------------

#[tokio::test]
async fn http_openai_style_headroom_follows_the_tighter_of_requests_and_tokens() {
    const BEARER: &str = "Bearer sk-test-SECRET-4f9a2c";
    assert_eq!(BEARER, format!("Bearer {KEY}"));
    let tokens_tight = [
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-requests", "8000"),
        ("x-ratelimit-remaining-tokens", "15000"),
        ("x-ratelimit-reset-requests", "8.64s"),
        ("x-ratelimit-reset-tokens", "1m30s"),
        ("x-request-id", "req_6a1c2e3f"),
    ];
    let (base, script) = serve(Script {
        require: vec![("authorization", BEARER)],
        ..Script::ok(&tokens_tight)
    })
    .await;

    let wrong = styled(&base, AuthStyle::XApiKey, &[]);
    assert_eq!(
        call(&wrong, req("POST", "/v1/chat/completions"))
            .await
            .expect("answered")
            .status,
        401
    );

    let up = styled(&base, AuthStyle::Bearer, &[]);
    let before = wall_clock_ms();
    let resp = call(&up, req("POST", "/v1/chat/completions"))
        .await
        .expect("answered");
    let after = wall_clock_ms();
    assert_eq!(resp.status, 200);
    let got = up.headroom(after);
    // Tokens at 10 %, requests at 80 %: 10 % of 10 000 requests, until the tokens reset.
    assert_eq!((got.capacity, got.remaining), (10_000, 1_000), "{got:?}");
    assert!(
        (before + 90_000..=after + 90_000).contains(&got.resets_at_ms),
        "{got:?}"
    );
    assert_eq!(
        lendmesh_protocol::attestation::HeadroomBucket::from_remaining(got.remaining, got.capacity),
        lendmesh_protocol::attestation::HeadroomBucket::Low
    );

    // Requests now the tighter: 20 % left, tokens nearly full (6 ms to full).
    lock(&script).headers = vec![
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-requests", "2000"),
        ("x-ratelimit-remaining-tokens", "149984"),
        ("x-ratelimit-reset-requests", "2m24s"),
        ("x-ratelimit-reset-tokens", "6ms"),
    ];
    let before = wall_clock_ms();
    call(&up, req("POST", "/v1/chat/completions"))
        .await
        .expect("answered");
    let after = wall_clock_ms();
    let got = up.headroom(after);
    assert_eq!((got.capacity, got.remaining), (10_000, 2_000), "{got:?}");
    assert!(
        (before + 144_000..=after + 144_000).contains(&got.resets_at_ms),
        "{got:?}"
    );
}

#[tokio::test]
async fn http_anthropic_style_headroom_follows_the_tightest_token_limit() {
    let (base, _script) = serve(Script {
        require: vec![("x-api-key", KEY), ("anthropic-version", "2023-06-01")],
        ..Script::ok(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "45"),
            ("anthropic-ratelimit-requests-reset", "2099-01-01T00:01:00Z"),
            ("anthropic-ratelimit-tokens-limit", "80000"),
            ("anthropic-ratelimit-tokens-remaining", "8000"),
            ("anthropic-ratelimit-tokens-reset", "2099-01-01T00:00:30Z"),
            ("anthropic-ratelimit-input-tokens-limit", "64000"),
            ("anthropic-ratelimit-input-tokens-remaining", "60000"),
            ("anthropic-ratelimit-input-tokens-reset", "2099-01-01T00:00:20Z"),
            ("anthropic-ratelimit-output-tokens-limit", "16000"),
            ("anthropic-ratelimit-output-tokens-remaining", "800"),
            ("anthropic-ratelimit-output-tokens-reset", "2099-01-01T00:00:10Z"),
            ("request-id", "req_018EeWyXxfu5pfWkrYcMdjWG"),
        ])
    })
    .await;

    let no_version = styled(&base, AuthStyle::XApiKey, &[]);
    let now = wall_clock_ms();
    let resp = call(&no_version, req("POST", "/v1/messages"))
        .await
        .expect("answered");
    assert_eq!(resp.status, 401, "anthropic-version is required");
    assert_eq!(
        no_version.headroom(now).capacity,
        5,
        "a 401 teaches nothing: still the budget"
    );

    let up = styled(&base, AuthStyle::XApiKey, &[("anthropic-version", "2023-06-01")]);
    let resp = call(&up, req("POST", "/v1/messages")).await.expect("answered");
    assert_eq!(resp.status, 200);
    let now = wall_clock_ms();
    // Output tokens at 5 % bind (requests 90 %, tokens 10 %, input tokens 94 %): 5 % of 50 requests, rounded down.
    let at_10s = 4_070_908_810_000;
    assert_eq!(
        up.headroom(now),
        Headroom {
            remaining: 2,
            capacity: 50,
            resets_at_ms: at_10s
        }
    );
    // When the output tokens are full again, the requests' own count holds until their reset.
    assert_eq!(
        up.headroom(at_10s),
        Headroom {
            remaining: 45,
            capacity: 50,
            resets_at_ms: 4_070_908_860_000
        }
    );
    assert_eq!(up.headroom(4_070_908_860_000).remaining, 50);
}

/// `s` for the life of the test (the scripted server takes `'static` header values).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test]
async fn http_subscription_headroom_follows_its_windows_and_scoped_rejections_stay_scoped() {
    let reset_s = wall_clock_ms() / 1000 + 3600;
    let reset = leak(reset_s.to_string());
    let week = leak((reset_s + 86_400).to_string());
    // A Claude subscription, healthy: the 5 h window binds at 42 %.
    let (base, script) = serve(Script::ok(&[
        ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
        ("anthropic-ratelimit-unified-5h-reset", reset),
        ("anthropic-ratelimit-unified-7d-status", "allowed"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.1"),
        ("anthropic-ratelimit-unified-7d-reset", week),
        ("anthropic-ratelimit-unified-7d_sonnet-status", "allowed"),
        ("anthropic-ratelimit-unified-7d_sonnet-utilization", "0.3"),
        ("anthropic-ratelimit-unified-7d_sonnet-reset", week),
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("anthropic-ratelimit-unified-reset", reset),
        ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
        ("anthropic-ratelimit-unified-fallback", "available"),
    ]))
    .await;
    let up = styled(&base, AuthStyle::XApiKey, &[("anthropic-version", "2023-06-01")]);
    call(&up, req("POST", "/v1/messages")).await.expect("answered");
    let now = wall_clock_ms();
    let sonnet = up.headroom_for(now, Some("claude-sonnet-4-5"));
    // 58 % of the 5-request test budget, until the 5 h window resets.
    assert_eq!(
        (sonnet.remaining, sonnet.resets_at_ms),
        (2, reset_s * 1000),
        "{sonnet:?}"
    );
    assert!(up.may_lend());

    // A 429 whose summary says rejected while only the `7d_oi` window is: Opus waits for that window, Sonnet does
    // not, and the rest of the windows are kept.
    {
        let mut s = lock(&script);
        s.status = 429;
        s.headers = vec![
            ("anthropic-ratelimit-unified-7d_oi-status", "rejected"),
            ("anthropic-ratelimit-unified-7d_oi-utilization", "1.02"),
            ("anthropic-ratelimit-unified-7d_oi-reset", week),
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-representative-claim", "seven_day_oi"),
            ("retry-after", "90000"),
        ];
    }
    assert_eq!(
        call(&up, req("POST", "/v1/messages"))
            .await
            .expect("answered")
            .status,
        429
    );
    let now = wall_clock_ms();
    assert_eq!(up.headroom_for(now, Some("claude-opus-4-1")).remaining, 0);
    assert_eq!(
        up.headroom_for(now, Some("claude-sonnet-4-5")).remaining,
        2,
        "not blocked by an Opus window"
    );

    // A real 429 on a spent 5 h window with the per-window headers only: nothing for any model until it resets.
    lock(&script).headers = vec![
        ("anthropic-ratelimit-unified-5h-status", "rejected"),
        ("anthropic-ratelimit-unified-5h-utilization", "1.0"),
        ("anthropic-ratelimit-unified-5h-reset", reset),
    ];
    call(&up, req("POST", "/v1/messages")).await.expect("answered");
    let now = wall_clock_ms();
    let h = up.headroom_for(now, Some("claude-sonnet-4-5"));
    assert_eq!((h.remaining, h.resets_at_ms), (0, reset_s * 1000), "{h:?}");
    // Once it resets, the week binds (Sonnet: its own 30 %, the higher).
    let after = reset_s * 1000 + 1;
    assert_eq!(
        up.headroom_for(after, Some("claude-sonnet-4-5")).remaining,
        3,
        "70 % of 5"
    );

    // Billing beyond the plan: never lent.
    {
        let mut s = lock(&script);
        s.status = 200;
        s.headers = vec![
            ("anthropic-ratelimit-unified-representative-claim", "overage"),
            ("anthropic-ratelimit-unified-5h-utilization", "not-a-number"),
            ("anthropic-ratelimit-unified-5h-reset", "-3"),
        ];
    }
    let fresh = styled(&base, AuthStyle::XApiKey, &[]);
    call(&fresh, req("POST", "/v1/messages")).await.expect("answered");
    assert!(!fresh.may_lend());
    assert_eq!(
        fresh.ignored_rate_limit_values(),
        2,
        "bad values are ignored and counted"
    );
}

#[tokio::test]
async fn http_refusals_without_limits_or_from_overload_spend_no_headroom() {
    // A server that sends no rate-limit headers at all.
    let (base, script) = serve(Script::ok(&[])).await;
    let up = styled(&base, AuthStyle::Bearer, &[]);
    let mut left = up.headroom(wall_clock_ms()).remaining;
    for status in [429, 503, 529] {
        lock(&script).status = status;
        let got = call(&up, req("POST", "/v1/chat/completions"))
            .await
            .expect("answered");
        assert_eq!(got.status, status);
        // Only the call's own unit: a refusal that says nothing of the limits, an unavailable or an overloaded
        // upstream has not spent the window.
        left -= 1;
        assert_eq!(up.headroom(wall_clock_ms()).remaining, left, "{status}");
    }
    assert!(left > 0);
}
