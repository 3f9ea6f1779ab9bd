//! Subscription windows on header sets shaped like what Claude's and Codex's upstreams send.

use proptest::prelude::*;

use super::*;

/// 2026-01-01T00:00:00Z, in ms.
const NOW: u64 = 1_767_225_600_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

const SONNET: Option<&str> = Some("claude-sonnet-4-5");
const OPUS: Option<&str> = Some("claude-opus-4-1");

fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Epoch seconds of `ms`, as a header value.
fn secs(ms: u64) -> String {
    (ms / 1000).to_string()
}

fn parse(pairs: &[(&str, &str)]) -> Subscription {
    Subscription::parse(&h(pairs)).unwrap()
}

fn window<'s>(sub: &'s Subscription, name: &str) -> &'s Window {
    sub.windows.iter().find(|w| w.name == name).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A 200 from a Max plan mid-session: 5h at 42 %, the week barely touched.
fn healthy() -> Subscription {
    let (r5h, r7d) = (secs(NOW + 2 * HOUR), secs(NOW + 3 * DAY));
    parse(&[
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("anthropic-ratelimit-unified-reset", &r5h),
        ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
        ("anthropic-ratelimit-unified-fallback", "available"),
        ("anthropic-ratelimit-unified-fallback-percentage", "0.5"),
        ("anthropic-ratelimit-unified-overage-status", "rejected"),
        (
            "anthropic-ratelimit-unified-overage-disabled-reason",
            "org_level_disabled",
        ),
        ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.42"),
        ("anthropic-ratelimit-unified-5h-reset", &r5h),
        ("anthropic-ratelimit-unified-7d-status", "allowed"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.10"),
        ("anthropic-ratelimit-unified-7d-reset", &r7d),
        ("anthropic-ratelimit-unified-7d_sonnet-status", "allowed"),
        ("anthropic-ratelimit-unified-7d_sonnet-utilization", "0.3"),
        ("anthropic-ratelimit-unified-7d_sonnet-reset", &r7d),
    ])
}

#[test]
fn healthy_subscription_binds_on_the_five_hour_window() {
    let sub = healthy();
    assert_eq!(sub.ignored, 0);
    assert_eq!(sub.windows.len(), 3);
    assert_eq!(window(&sub, "5h").scope, None);
    assert_eq!(window(&sub, "7d_sonnet").scope.as_deref(), Some("sonnet"));
    assert_eq!(sub.summary.status, Some(WindowStatus::Allowed));
    assert_eq!(sub.summary.representative_claim.as_deref(), Some("five_hour"));
    assert_eq!(sub.summary.fallback.as_deref(), Some("available"));
    assert_eq!(sub.summary.overage_status, Some(WindowStatus::Rejected));
    assert!(sub.may_lend());

    assert!(close(sub.left(SONNET, NOW), 0.58));
    assert!(close(sub.left(OPUS, NOW), 0.58));
    assert!(close(sub.left(None, NOW), 0.58));
    let r5h = (NOW + 2 * HOUR) / 1000 * 1000;
    assert_eq!(sub.resets_at_ms(SONNET, NOW), Some(r5h));
    assert_eq!(sub.resets_at_ms(OPUS, NOW), Some(r5h));

    // After the 5h window resets, Sonnet is bound by its own weekly window, Opus by the plain week.
    let later = NOW + 3 * HOUR;
    assert!(close(sub.left(SONNET, later), 0.7));
    assert!(close(sub.left(OPUS, later), 0.9));
    assert_eq!(
        sub.resets_at_ms(SONNET, later),
        Some((NOW + 3 * DAY) / 1000 * 1000)
    );
}

#[test]
fn an_opus_rejection_does_not_block_sonnet() {
    // A 429 for an Opus request: the summary says `rejected`, but only the Opus weekly window is spent.
    let (r5h, r7d, roi) = (secs(NOW + 2 * HOUR), secs(NOW + 5 * DAY), secs(NOW + 4 * DAY));
    let sub = parse(&[
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", &roi),
        (
            "anthropic-ratelimit-unified-representative-claim",
            "seven_day_opus",
        ),
        ("anthropic-ratelimit-unified-fallback", "available"),
        ("anthropic-ratelimit-unified-overage-status", "rejected"),
        (
            "anthropic-ratelimit-unified-overage-disabled-reason",
            "out_of_credits",
        ),
        ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.2"),
        ("anthropic-ratelimit-unified-5h-reset", &r5h),
        ("anthropic-ratelimit-unified-7d-status", "allowed"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.3"),
        ("anthropic-ratelimit-unified-7d-reset", &r7d),
        ("anthropic-ratelimit-unified-7d_oi-status", "rejected"),
        ("anthropic-ratelimit-unified-7d_oi-utilization", "1.02"),
        ("anthropic-ratelimit-unified-7d_oi-reset", &roi),
        ("anthropic-ratelimit-unified-7d_oi-surpassed-threshold", "1.0"),
        ("retry-after", "345600"),
    ]);
    assert_eq!(sub.ignored, 0);
    assert_eq!(window(&sub, "7d_oi").surpassed_threshold, Some(1.0));
    assert_eq!(sub.left(OPUS, NOW), 0.0);
    assert_eq!(sub.resets_at_ms(OPUS, NOW), Some((NOW + 4 * DAY) / 1000 * 1000));
    assert!(close(sub.left(SONNET, NOW), 0.7));
    assert!(close(sub.left(None, NOW), 0.7));
    // Overage is off, so nothing would be billed beyond the plan: Sonnet may still be lent.
    assert!(sub.may_lend());
    // Once the Opus week resets, Opus is bound by the plain week again.
    assert!(close(sub.left(OPUS, NOW + 4 * DAY), 0.7));
}

#[test]
fn a_bare_five_hour_429_blocks_everything_until_its_reset_and_keeps_the_week() {
    let mut sub = healthy();
    let r5h = NOW + 90 * 60_000;
    let r5h_s = secs(r5h);
    let spent = parse(&[
        ("Anthropic-Ratelimit-Unified-5h-Status", "rejected"),
        ("Anthropic-Ratelimit-Unified-5h-Utilization", "1.0"),
        ("Anthropic-Ratelimit-Unified-5h-Reset", &r5h_s),
    ]);
    assert_eq!(spent.summary, Summary::default());
    assert_eq!(spent.windows.len(), 1);
    sub.update(spent);

    assert_eq!(sub.windows.len(), 3, "the weekly windows survive");
    assert_eq!(window(&sub, "7d").utilization, Some(0.10));
    assert_eq!(
        sub.summary.representative_claim.as_deref(),
        Some("five_hour"),
        "the summary stays"
    );
    for model in [SONNET, OPUS, None, Some("claude-haiku-4-5")] {
        assert_eq!(sub.left(model, NOW), 0.0, "{model:?}");
        assert_eq!(sub.resets_at_ms(model, NOW), Some(r5h / 1000 * 1000));
        assert_eq!(sub.left(model, r5h - 1000), 0.0, "{model:?}");
    }
    // Past the reset the week binds.
    let after = r5h + 1000;
    assert!(close(sub.left(OPUS, after), 0.9));
    assert!(close(sub.left(SONNET, after), 0.7));
    assert_eq!(sub.resets_at_ms(OPUS, after), Some((NOW + 3 * DAY) / 1000 * 1000));
}

#[test]
fn update_replaces_named_windows_and_present_summary_fields_only() {
    let mut sub = healthy();
    let r7d = secs(NOW + 3 * DAY);
    sub.update(parse(&[
        ("anthropic-ratelimit-unified-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-7d_oi-utilization", "0.5"),
        ("anthropic-ratelimit-unified-7d-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.8"),
        ("anthropic-ratelimit-unified-7d-reset", &r7d),
        ("anthropic-ratelimit-unified-7d-surpassed-threshold", "0.75"),
        ("anthropic-ratelimit-unified-5h-utilization", "bad"),
    ]));
    assert_eq!(sub.ignored, 1);
    let names: Vec<&str> = sub.windows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["5h", "7d", "7d_sonnet", "7d_oi"]);
    assert_eq!(window(&sub, "7d").status, WindowStatus::AllowedWarning);
    assert_eq!(
        window(&sub, "5h").utilization,
        Some(0.42),
        "a bad value replaces nothing"
    );
    assert_eq!(sub.summary.status, Some(WindowStatus::AllowedWarning));
    assert_eq!(sub.summary.fallback.as_deref(), Some("available"));
    assert!(close(sub.left(OPUS, NOW), 0.2));
    assert!(close(sub.left(SONNET, NOW), 0.2));
}

#[test]
fn over_full_windows_clamp_and_passed_rejections_no_longer_count() {
    let r5h = NOW + HOUR;
    let r5h_s = secs(r5h);
    let sub = parse(&[
        ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", "1.07"),
        ("anthropic-ratelimit-unified-5h-reset", &r5h_s),
    ]);
    assert_eq!(sub.left(None, NOW), 0.0);
    assert_eq!(
        sub.left(None, r5h),
        1.0,
        "a window whose reset passed counts as unused"
    );
    assert_eq!(sub.resets_at_ms(None, r5h), None);

    let rejected = parse(&[
        ("anthropic-ratelimit-unified-7d-status", "rejected"),
        ("anthropic-ratelimit-unified-7d-utilization", "0.98"),
        ("anthropic-ratelimit-unified-7d-reset", &r5h_s),
    ]);
    assert_eq!(
        rejected.left(OPUS, NOW),
        0.0,
        "rejected means nothing left, whatever the utilization"
    );
    assert_eq!(rejected.left(OPUS, r5h + 1), 1.0);

    // A rejection with no reset holds until a newer response says otherwise.
    let mut stuck = parse(&[("anthropic-ratelimit-unified-5h-status", "rejected")]);
    assert_eq!(stuck.left(SONNET, u64::MAX), 0.0);
    assert_eq!(stuck.resets_at_ms(SONNET, NOW), None);
    stuck.update(parse(&[
        ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.01"),
    ]));
    assert!(close(stuck.left(SONNET, NOW), 0.99));
}

#[test]
fn a_warning_window_without_utilization_counts_its_threshold() {
    let sub = parse(&[
        ("anthropic-ratelimit-unified-7d-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-7d-surpassed-threshold", "0.75"),
    ]);
    assert!(close(sub.left(None, NOW), 0.25));
}

#[test]
fn a_summary_alone_blocks_only_while_rejected() {
    let reset = NOW + HOUR;
    let reset_s = secs(reset);
    let sub = parse(&[
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", &reset_s),
    ]);
    assert!(sub.windows.is_empty());
    assert_eq!(sub.left(SONNET, NOW), 0.0);
    assert_eq!(sub.resets_at_ms(SONNET, NOW), Some(reset / 1000 * 1000));
    assert_eq!(sub.left(SONNET, reset), 1.0);
    let fine = parse(&[("anthropic-ratelimit-unified-status", "allowed")]);
    assert_eq!(fine.left(None, NOW), 1.0);
}

#[test]
fn overage_forbids_lending() {
    let claim = parse(&[
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("anthropic-ratelimit-unified-representative-claim", "overage"),
        ("anthropic-ratelimit-unified-overage-status", "allowed"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.2"),
    ]);
    assert!(!claim.may_lend());
    assert!(
        close(claim.left(None, NOW), 0.8),
        "left is the member's own business"
    );

    let billed = parse(&[
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
        ("anthropic-ratelimit-unified-overage-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-overage-reset", "1769904000"),
    ]);
    assert_eq!(billed.summary.overage_resets_at_ms, Some(1_769_904_000_000));
    assert!(!billed.may_lend());

    let no_overage = parse(&[
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-overage-status", "rejected"),
    ]);
    assert!(no_overage.may_lend());
}

#[test]
fn summary_fields_are_not_windows() {
    let sub = parse(&[
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("anthropic-ratelimit-unified-reset", "1767232800"),
        ("anthropic-ratelimit-unified-overage-status", "allowed"),
        ("anthropic-ratelimit-unified-overage-reset", "1769904000"),
        ("anthropic-ratelimit-unified-overage-utilization", "0.9"),
        ("anthropic-ratelimit-unified-fallback-percentage", "0.5"),
        ("anthropic-ratelimit-unified-5h-status", "allowed"),
    ]);
    let names: Vec<&str> = sub.windows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["5h"]);
    assert_eq!(sub.summary.status, Some(WindowStatus::Allowed));
    assert_eq!(sub.summary.resets_at_ms, Some(1_767_232_800_000));
    assert_eq!(sub.summary.overage_status, Some(WindowStatus::Allowed));
    assert_eq!(sub.ignored, 0);
}

#[test]
fn scopes_match_model_families() {
    let opus_week = Window::new("7d_oi");
    assert_eq!(opus_week.scope.as_deref(), Some("oi"));
    for model in [
        "claude-opus-4-1",
        "Claude-Opus-4-1-20250805",
        "us.anthropic.claude-opus-4-1-v1:0",
        "opus",
    ] {
        assert!(opus_week.applies_to(Some(model)), "{model}");
    }
    for model in ["claude-sonnet-4-5", "claude-voice-1", "claude-haiku-4-5"] {
        assert!(!opus_week.applies_to(Some(model)), "{model}");
    }
    assert!(!opus_week.applies_to(None));

    let sonnet_week = Window::new("7d_sonnet");
    assert!(sonnet_week.applies_to(Some("claude-3-5-sonnet-20241022")));
    assert!(sonnet_week.applies_to(Some("claude-sonnet4")));
    assert!(!sonnet_week.applies_to(Some("claude-opus-4-1")));

    let versioned = Window::new("7d_sonnet_4");
    assert!(versioned.applies_to(Some("claude-sonnet-4-5")));
    assert!(!versioned.applies_to(Some("claude-3-7-sonnet-latest")));

    let short = Window::new("7d_xy");
    assert!(short.applies_to(Some("model.xy")));
    assert!(!short.applies_to(Some("model-xyz")));

    assert_eq!(Window::new("5h").scope, None);
    assert_eq!(Window::new("7d_").scope, None);
    assert!(Window::new("5h").applies_to(None));
}

#[test]
fn headers_without_subscription_fields_parse_to_none() {
    assert_eq!(Subscription::parse(&[]), None);
    let plain = h(&[
        ("content-type", "application/json"),
        ("anthropic-ratelimit-requests-remaining", "49"),
        ("x-codex-credits-balance", "12"),
        ("x-codex-primary-reset-after-seconds", "600"),
    ]);
    assert_eq!(Subscription::parse(&plain), None);
    // A subscription header with a bad value is still a subscription response, and says what it dropped.
    let bad = Subscription::parse(&h(&[("anthropic-ratelimit-unified-5h-utilization", "x")])).unwrap();
    assert!(bad.windows.is_empty());
    assert_eq!(bad.ignored, 1);
}

#[test]
fn bad_values_are_ignored_and_counted() {
    let long = "9".repeat(MAX_VALUE_LEN + 1);
    let sub = Subscription::parse(&[
        (
            "anthropic-ratelimit-unified-5h-utilization".to_string(),
            b"abc".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-7d-utilization".to_string(),
            b"-0.5".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-a-utilization".to_string(),
            b"1e400".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-b-utilization".to_string(),
            b"NaN".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-c-utilization".to_string(),
            b"inf".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-d-utilization".to_string(),
            b"100.5".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-e-utilization".to_string(),
            long.into_bytes(),
        ),
        (
            "anthropic-ratelimit-unified-f-utilization".to_string(),
            vec![0xff, 0xfe],
        ),
        (
            "anthropic-ratelimit-unified-g-utilization".to_string(),
            b"  ".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-5h-reset".to_string(),
            b"99999999999999".to_vec(),
        ),
        ("anthropic-ratelimit-unified-7d-reset".to_string(), b"-1".to_vec()),
        (
            "anthropic-ratelimit-unified-h-reset".to_string(),
            b"1767225600.5".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-i-status".to_string(),
            b"throttled".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-7D_Sonnet-status".to_string(),
            b"allowed".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-two-part-status".to_string(),
            b"allowed".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-representative-claim".to_string(),
            b"five hour".to_vec(),
        ),
        (
            "anthropic-ratelimit-unified-status".to_string(),
            b"maybe".to_vec(),
        ),
        ("x-codex-primary-used-percent".to_string(), b"-3".to_vec()),
        ("x-codex-primary-window-minutes".to_string(), b"300.5".to_vec()),
        ("x-codex-secondary-used-percent".to_string(), b"10001".to_vec()),
        ("x-codex-secondary-reset-at".to_string(), b"soon".to_vec()),
    ])
    .unwrap();
    // Unknown statuses are kept as such (and counted): the window `i` and the summary.
    assert_eq!(sub.ignored, 20);
    let names: Vec<&str> = sub.windows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["i", "7d_sonnet"]);
    assert_eq!(window(&sub, "i").status, WindowStatus::Unknown);
    assert_eq!(sub.summary.status, Some(WindowStatus::Unknown));
    assert_eq!(sub.summary.representative_claim, None);
    assert_eq!(sub.left(SONNET, NOW), 1.0, "unknown is treated like allowed");
}

#[test]
fn windows_past_the_limit_are_ignored_and_counted() {
    let pairs: Vec<(String, Vec<u8>)> = (0..40)
        .flat_map(|i| {
            [
                (
                    format!("anthropic-ratelimit-unified-w{i}-status"),
                    b"allowed".to_vec(),
                ),
                (
                    format!("anthropic-ratelimit-unified-w{i}-utilization"),
                    b"0.5".to_vec(),
                ),
            ]
        })
        .collect();
    let sub = Subscription::parse(&pairs).unwrap();
    assert_eq!(sub.windows.len(), MAX_WINDOWS);
    assert_eq!(sub.ignored, 2 * (40 - MAX_WINDOWS as u32));
    assert!(close(sub.left(None, NOW), 0.5));

    let mut full = sub.clone();
    full.update(parse(&[
        ("anthropic-ratelimit-unified-more-status", "rejected"),
        ("anthropic-ratelimit-unified-w0-status", "rejected"),
    ]));
    assert_eq!(full.windows.len(), MAX_WINDOWS);
    assert_eq!(full.ignored, sub.ignored + 1);
    assert_eq!(full.left(None, NOW), 0.0, "known windows still update");
}

#[test]
fn codex_percentages_become_windows() {
    let (r1, r2) = (NOW + 3 * HOUR, NOW + 6 * DAY);
    let (r1_s, r2_s) = (secs(r1), secs(r2));
    let sub = parse(&[
        ("X-Codex-Primary-Used-Percent", "42.5"),
        ("X-Codex-Primary-Window-Minutes", "300"),
        ("X-Codex-Primary-Reset-At", &r1_s),
        ("X-Codex-Secondary-Used-Percent", "13"),
        ("X-Codex-Secondary-Window-Minutes", "10080"),
        ("X-Codex-Secondary-Reset-At", &r2_s),
        ("x-codex-primary-over-secondary-limit-percent", "12"),
    ]);
    assert_eq!(sub.ignored, 0);
    let primary = window(&sub, "primary");
    assert_eq!(primary.scope, None);
    assert_eq!(primary.status, WindowStatus::Allowed);
    assert!(close(primary.utilization.unwrap(), 0.425));
    assert_eq!(primary.length_minutes, Some(300));
    assert_eq!(window(&sub, "secondary").length_minutes, Some(10_080));
    assert!(close(sub.left(Some("gpt-5-codex"), NOW), 0.575));
    assert_eq!(sub.resets_at_ms(Some("gpt-5-codex"), NOW), Some(r1 / 1000 * 1000));
    assert!(close(sub.left(None, r1), 0.87));

    let spent = parse(&[
        ("x-codex-primary-used-percent", "100.0"),
        ("x-codex-primary-window-minutes", "15"),
    ]);
    assert_eq!(window(&spent, "primary").status, WindowStatus::Rejected);
    assert_eq!(spent.left(None, NOW), 0.0);
}

#[test]
fn lendable_keeps_the_members_share() {
    assert!(close(lendable(0.58, DEFAULT_KEEP_SHARE), 0.28));
    assert_eq!(
        lendable(0.3, DEFAULT_KEEP_SHARE),
        0.0,
        "at 70 % utilization lending stops"
    );
    assert_eq!(lendable(0.1, DEFAULT_KEEP_SHARE), 0.0);
    assert_eq!(lendable(1.0, 0.0), 1.0);
    assert_eq!(lendable(0.5, 1.0), 0.0);
    assert_eq!(lendable(2.0, -1.0), 1.0, "inputs are clamped");
    assert_eq!(lendable(f64::NAN, 0.3), 0.0);
    assert_eq!(lendable(0.9, f64::NAN), 0.0);
    assert!(close(lendable(f64::INFINITY, 0.3), 0.7));
}

#[test]
fn units_round_down_and_saturate() {
    assert_eq!(units(0.58, 100), 58);
    assert_eq!(units(1.0 - 0.42, 100), 58);
    assert_eq!(units(0.999, 10), 9);
    assert_eq!(units(0.0, 100), 0);
    assert_eq!(units(-0.5, 100), 0);
    assert_eq!(units(f64::NAN, 100), 0);
    assert_eq!(units(1.5, 100), 100);
    assert_eq!(units(f64::INFINITY, 7), 7);
    assert_eq!(units(1.0, u64::MAX), u64::MAX);
    assert_eq!(units(0.5, u64::MAX), 1 << 63);
    assert_eq!(units(0.999_999, 1_000_000), 999_999);
    assert_eq!(units(0.5, 0), 0);
}

/// Header names near and far from the ones read.
fn any_name() -> impl Strategy<Value = String> {
    let fields = prop::sample::select(vec!["status", "utilization", "reset", "surpassed-threshold", "x"]);
    let codex_fields = prop::sample::select(vec![
        "used-percent",
        "window-minutes",
        "reset-at",
        "reset-after-seconds",
    ]);
    prop_oneof![
        ("[a-zA-Z0-9_.]{0,40}", fields).prop_map(|(w, f)| format!("Anthropic-Ratelimit-Unified-{w}-{f}")),
        "[a-zA-Z0-9_.-]{0,40}".prop_map(|s| format!("anthropic-ratelimit-unified-{s}")),
        (
            prop::sample::select(vec!["primary", "secondary", "tertiary"]),
            codex_fields
        )
            .prop_map(|(w, f)| format!("x-codex-{w}-{f}")),
        any::<String>(),
    ]
}

/// Values of every shape: numbers good and bad, statuses, bytes.
fn any_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<f64>().prop_map(|n| n.to_string().into_bytes()),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        "-?[0-9]{0,20}(\\.[0-9]{0,20})?(e-?[0-9]{1,3})?".prop_map(String::into_bytes),
        prop::sample::select(vec![
            "allowed",
            "allowed_warning",
            "rejected",
            "NaN",
            "inf",
            "1e400",
            "overage",
            ""
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn any_headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec((any_name(), any_value()), 0..80)
}

proptest! {
    // A fixed seed keeps CI deterministic; failures are still persisted to proptest-regressions/.
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7375_6273),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_headers_never_panic_and_left_stays_in_range(
        first in any_headers(),
        second in any_headers(),
        model in prop::option::of(prop_oneof![Just("claude-opus-4-1".to_string()), any::<String>()]),
        now in any::<u64>(),
    ) {
        let mut state = Subscription::parse(&first).unwrap_or_default();
        let left = state.left(model.as_deref(), now);
        prop_assert!((0.0..=1.0).contains(&left), "left {left}");
        if let Some(newer) = Subscription::parse(&second) {
            state.update(newer);
        }
        prop_assert!(state.windows.len() <= MAX_WINDOWS);
        for at in [0, NOW, now] {
            let left = state.left(model.as_deref(), at);
            prop_assert!((0.0..=1.0).contains(&left), "left {left}");
            let _ = state.resets_at_ms(model.as_deref(), at);
            let lend = lendable(left, DEFAULT_KEEP_SHARE);
            prop_assert!((0.0..=1.0).contains(&lend));
            prop_assert!(units(lend, 1000) <= 1000);
        }
        let _ = state.may_lend();
    }
}
