//! Rate-limit header parsing (pure).

use super::*;

// ----- pure header parsing -----------------------------------------------------------------------------

const NOW: u64 = 1_700_000_000_000;
/// 2025-01-01T00:00:00Z.
const NEW_YEAR_2025: u64 = 1_735_689_600_000;

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
    assert_eq!(l.quota, None, "remaining tokens without their limit say nothing");
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
    const NAMES: [&str; 20] = [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-output-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
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
        if let Some(l) = parse_rate_limit(&headers, now) {
            for capacity in [0, 1, 60, u64::MAX] {
                let scaled = l.in_requests(capacity);
                if let (Binding::Quota(_), Some(r)) = (scaled.bound_by, scaled.remaining) {
                    assert!(r <= capacity, "{l:?} {scaled:?}");
                }
            }
        }
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

// ----- tokens as well as requests ----------------------------------------------------------------------

#[test]
fn openai_tokens_and_requests_the_tighter_wins() {
    // A real response's set (gpt-4o, tier 2): both nearly full; tokens round down one request below.
    let l = parse_rate_limit(
        &h(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "8.64s"),
            ("x-ratelimit-reset-tokens", "6ms"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.source, RateLimitSource::OpenAi);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(10_000), Some(9_999), Some(NOW + 8_640))
    );
    assert_eq!(
        l.quota,
        Some(Quota {
            unit: QuotaUnit::Tokens,
            limit: 150_000,
            remaining: 149_984,
            resets_at_ms: Some(NOW + 6)
        })
    );
    assert_eq!(
        l.in_requests(10_000),
        Scaled {
            remaining: Some(9_998),
            resets_at_ms: Some(NOW + 6),
            bound_by: Binding::Quota(QuotaUnit::Tokens),
            then: Some((9_999, NOW + 8_640)),
        }
    );

    // Tokens at 10 %, requests at 80 %: 10 % of the capacity, until the tokens reset.
    let l = parse_rate_limit(
        &h(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "8000"),
            ("x-ratelimit-remaining-tokens", "15000"),
            ("x-ratelimit-reset-requests", "1m12s"),
            ("x-ratelimit-reset-tokens", "54s"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(
        l.in_requests(10_000),
        Scaled {
            remaining: Some(1_000),
            resets_at_ms: Some(NOW + 54_000),
            bound_by: Binding::Quota(QuotaUnit::Tokens),
            then: Some((8_000, NOW + 72_000)),
        }
    );

    // Requests at 1 %, tokens full: requests bind; the tokens reset sooner, so nothing follows.
    let l = parse_rate_limit(
        &h(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "100"),
            ("x-ratelimit-remaining-tokens", "150000"),
            ("x-ratelimit-reset-requests", "14m24s"),
            ("x-ratelimit-reset-tokens", "0s"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(
        l.in_requests(10_000),
        Scaled {
            remaining: Some(100),
            resets_at_ms: Some(NOW + 864_000),
            bound_by: Binding::Requests,
            then: None,
        }
    );
}

#[test]
fn anthropic_tightest_of_tokens_input_and_output() {
    let reset = |s: u64| NEW_YEAR_2025 + s * 1_000;
    let l = parse_rate_limit(
        &h(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2025-01-01T00:00:01Z"),
            ("anthropic-ratelimit-tokens-limit", "48000"),
            ("anthropic-ratelimit-tokens-remaining", "44000"),
            ("anthropic-ratelimit-tokens-reset", "2025-01-01T00:00:30Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "4000"),
            ("anthropic-ratelimit-input-tokens-reset", "2025-01-01T00:00:54Z"),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7600"),
            ("anthropic-ratelimit-output-tokens-reset", "2025-01-01T00:00:03Z"),
            ("retry-after", "1"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.source, RateLimitSource::Anthropic);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(50), Some(49), Some(reset(1)))
    );
    assert_eq!(
        l.quota,
        Some(Quota {
            unit: QuotaUnit::InputTokens,
            limit: 40_000,
            remaining: 4_000,
            resets_at_ms: Some(reset(54))
        }),
        "input tokens at 10 % are the tightest"
    );
    let scaled = l.in_requests(50);
    assert_eq!(
        (scaled.remaining, scaled.resets_at_ms, scaled.bound_by),
        (Some(5), Some(reset(54)), Binding::Quota(QuotaUnit::InputTokens))
    );
    assert_eq!(scaled.then, None, "the requests reset before the input tokens");

    // Only token headers (no request counts): scaled against the capacity the caller knows.
    let l = parse_rate_limit(
        &h(&[
            ("anthropic-ratelimit-tokens-limit", "80000"),
            ("anthropic-ratelimit-tokens-remaining", "20000"),
            ("anthropic-ratelimit-tokens-reset", "2025-01-01T00:00:30Z"),
        ]),
        NOW,
    )
    .expect("tokens alone");
    assert_eq!((l.limit, l.remaining), (None, None));
    assert_eq!(
        (l.in_requests(60).remaining, l.in_requests(60).resets_at_ms),
        (Some(15), Some(reset(30)))
    );
}

#[test]
fn ietf_structured_quota_units() {
    let l = parse_rate_limit(
        &h(&[
            (
                "RateLimit-Policy",
                r#""burst";q=100;w=60, "tokens";q=10000;w=60;qu="tokens", "bytes";q=1000000;w=3600;qu="content-bytes""#,
            ),
            ("RateLimit", r#""burst";r=80;t=40, "tokens";r=500;t=20, "bytes";r=900000;t=1800"#),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.source, RateLimitSource::IetfStructured);
    assert_eq!(
        (l.limit, l.remaining, l.resets_at_ms),
        (Some(100), Some(80), Some(NOW + 40_000)),
        "a request policy is the request window, not the token one with fewer left"
    );
    assert_eq!(
        l.quota,
        Some(Quota {
            unit: QuotaUnit::Tokens,
            limit: 10_000,
            remaining: 500,
            resets_at_ms: Some(NOW + 20_000)
        })
    );
    assert_eq!(
        l.in_requests(100),
        Scaled {
            remaining: Some(5),
            resets_at_ms: Some(NOW + 20_000),
            bound_by: Binding::Quota(QuotaUnit::Tokens),
            then: Some((80, NOW + 40_000)),
        }
    );

    // Another unit binds when it is the tightest; a quota without `q` cannot be scaled and is ignored.
    let l = parse_rate_limit(
        &h(&[
            (
                "RateLimit-Policy",
                r#""bytes";q=1000;qu="content-bytes", "tok";qu="tokens""#,
            ),
            ("RateLimit", r#""bytes";r=10;t=5, "tok";r=0;t=5"#),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!((l.limit, l.remaining), (None, None));
    assert_eq!(
        l.quota.map(|q| (q.unit, q.remaining)),
        Some((QuotaUnit::Other, 10))
    );
    assert_eq!(l.in_requests(60).remaining, Some(0), "1 % of 60, rounded down");
}

#[test]
fn scaling_edge_cases() {
    let learned = |requests: Option<u64>, quota: Option<(u64, u64)>| LearnedLimit {
        source: RateLimitSource::OpenAi,
        limit: requests.map(|_| 100),
        remaining: requests,
        resets_at_ms: Some(NOW + 1_000),
        quota: quota.map(|(limit, remaining)| Quota {
            unit: QuotaUnit::Tokens,
            limit,
            remaining,
            resets_at_ms: Some(NOW + 2_000),
        }),
        retry_after_ms: None,
    };
    // A tie goes to requests.
    let tie = learned(Some(50), Some((1_000, 500))).in_requests(100);
    assert_eq!((tie.remaining, tie.bound_by), (Some(50), Binding::Requests));
    assert_eq!(tie.then, Some((50, NOW + 2_000)));
    // Tokens exhausted: nothing left, until the tokens reset.
    let out = learned(Some(90), Some((1_000, 0))).in_requests(100);
    assert_eq!(
        (out.remaining, out.resets_at_ms, out.then),
        (Some(0), Some(NOW + 2_000), None),
        "the requests reset first"
    );
    // No capacity, no headroom; huge numbers do not overflow.
    assert_eq!(learned(None, Some((10, 10))).in_requests(0).remaining, Some(0));
    let big = learned(None, Some((u64::MAX, u64::MAX - 1))).in_requests(u64::MAX);
    assert_eq!(big.remaining, Some(u64::MAX - 1));
    // Neither dimension counted: nothing to say about what is left.
    assert_eq!(learned(None, None).in_requests(100).remaining, None);

    // A remaining count above its limit is clamped; a limit of 0 cannot be scaled and is ignored.
    let l = parse_rate_limit(
        &h(&[
            ("x-ratelimit-limit-tokens", "100"),
            ("x-ratelimit-remaining-tokens", "250"),
        ]),
        NOW,
    )
    .expect("learned");
    assert_eq!(l.in_requests(60).remaining, Some(60));
    let zero = h(&[
        ("x-ratelimit-limit-tokens", "0"),
        ("x-ratelimit-remaining-tokens", "0"),
    ]);
    assert_eq!(parse_rate_limit(&zero, NOW), None);
}

#[test]
fn http_estimate_follows_tokens_then_requests() {
    let up = http("http://127.0.0.1:9/");
    let now = 1_000;
    let answered = up.try_acquire(now, 0).expect("unit");
    up.learn(
        200,
        &h(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "8000"),
            ("x-ratelimit-remaining-tokens", "15000"),
            ("x-ratelimit-reset-requests", "1m12s"),
            ("x-ratelimit-reset-tokens", "54s"),
        ]),
        now,
    );
    assert_eq!(
        up.headroom(now),
        Headroom {
            remaining: 1_000,
            capacity: 10_000,
            resets_at_ms: now + 54_000
        }
    );
    let more = up.try_acquire(now, 0).expect("unit");
    // The tokens are full again: the requests' 80 % (less the unit just taken) holds until their reset.
    assert_eq!(
        up.headroom(now + 54_000),
        Headroom {
            remaining: 7_999,
            capacity: 10_000,
            resets_at_ms: now + 72_000
        }
    );
    assert_eq!(up.headroom(now + 72_000).remaining, 10_000);
    drop((answered, more));

    // A 429 for tokens blocks until the tokens reset, not the later request reset.
    let now = 200_000;
    up.learn(
        429,
        &h(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "9000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "20s"),
        ]),
        now,
    );
    assert_eq!(
        up.headroom(now),
        Headroom {
            remaining: 0,
            capacity: 10_000,
            resets_at_ms: now + 20_000
        }
    );
    assert_eq!(up.headroom(now + 20_000).remaining, 9_000);
    assert_eq!(up.headroom(now + 20_000).resets_at_ms, now + 360_000);
}
