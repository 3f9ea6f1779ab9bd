//! Issue-5 inspection: `/metrics` is valid OpenMetrics and moves with borrows, `/v1/peers` shows RTT and
//! attestation ages that change, `/health` follows the peers, the API token rules, `status` / `peers`, and no
//! secret in any output. Issue 10: `/metrics` answers OpenMetrics only to an `Accept` that asks for it, and the
//! Prometheus text format otherwise, which passes `promtool check metrics` (required in CI, where `CI` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lendmesh_protocol::group::Invite;
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Strict OpenMetrics text checks: `# EOF` last; every line a known comment or a well-formed sample; every sample
/// belongs to a family declared by a preceding `# TYPE`; no family declared twice. Returns the samples.
fn parse_openmetrics(text: &str) -> Vec<(String, String, f64)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last().copied(),
        Some("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let mut families: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap();
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "info",
                    "unknown",
                    "summary",
                    "stateset",
                    "gaugehistogram"
                ]
                .contains(&kind),
                "{line}"
            );
            assert!(seen.insert(name.clone()), "family {name} declared twice");
            families.push(name);
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (name, labels, value) = parse_sample(line);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "name: {line}"
        );
        let family = families
            .last()
            .unwrap_or_else(|| panic!("sample before any # TYPE: {line}"));
        let ok_suffix = ["", "_total", "_bucket", "_count", "_sum", "_created", "_info"]
            .iter()
            .any(|s| name == format!("{family}{s}"));
        assert!(ok_suffix, "sample {name} outside its family {family}");
        samples.push((name, labels, value));
    }
    samples
}

/// What `promtool check metrics` checks, in Rust, on the Prometheus text format 0.0.4: only `# HELP` and `# TYPE`
/// comments (no `# EOF`, no `# UNIT`), one of each per family, before its samples, naming it; every sample family
/// has both; counters' samples end `_total` and nothing else does; no non-histogram name ends `_bucket`, no
/// non-histogram non-summary one `_count` or `_sum`; no `_created` samples; snake_case names without `:`.
/// Returns the samples.
fn parse_prometheus_text(text: &str) -> Vec<(String, String, f64)> {
    let mut help: HashMap<&str, &str> = HashMap::new();
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut samples: Vec<(String, String, f64)> = Vec::new();
    for line in text.lines() {
        assert_ne!(line, "# EOF", "no # EOF in the Prometheus text format");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("no help text: {line}"));
            assert!(!h.trim().is_empty(), "empty help text: {line}");
            assert!(help.insert(name, h).is_none(), "second HELP for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "not a Prometheus text type: {line}"
            );
            assert!(types.insert(name, kind).is_none(), "second TYPE for {name}");
            assert!(
                !samples.iter().any(|(n, _, _)| n == name
                    || ["_bucket", "_count", "_sum"]
                        .iter()
                        .any(|x| n.strip_prefix(name) == Some(*x))),
                "TYPE after samples: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "not in the Prometheus text format: {line}"
        );
        let (name, labels, value) = parse_sample(line);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "not a snake_case name: {line}"
        );
        samples.push((name, labels, value));
    }
    for (name, _, _) in &samples {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| match types.get(f) {
                Some(&"histogram") => true,
                Some(&"summary") => !name.ends_with("_bucket"),
                _ => false,
            })
            .unwrap_or(name);
        let kind = *types
            .get(family)
            .unwrap_or_else(|| panic!("no # TYPE line names {family}"));
        assert!(help.contains_key(family), "no # HELP line names {family}");
        assert_eq!(
            kind == "counter",
            family.ends_with("_total"),
            "{family} ({kind}): counters' samples, and only theirs, end _total"
        );
        if kind != "histogram" {
            assert!(
                !family.ends_with("_bucket"),
                "non-histogram {family} ends _bucket"
            );
            if kind != "summary" {
                assert!(
                    !family.ends_with("_count") && !family.ends_with("_sum"),
                    "non-histogram {family} ends _count or _sum"
                );
            }
        }
        assert!(!name.ends_with("_created"), "_created sample {name}");
    }
    samples
}

/// Whether this is a CI run (`CI` set, as CI services do, and not `false` / `0`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `promtool check metrics` (Debian's `prometheus` package) on each Prometheus-format body, fed on stdin: it must
/// exit 0 without a word. Skipped, saying so, when promtool is not on PATH, except in CI, which requires it.
#[allow(clippy::print_stderr)]
fn promtool_check_metrics(bodies: &[(&str, String)]) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    for (what, text) in bodies {
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !in_ci() => {
                eprintln!(
                    "promtool is not on PATH: `promtool check metrics` skipped (install Debian's `prometheus` \
                     package; CI requires it)"
                );
                return;
            }
            Err(e) => panic!(
                "cannot run promtool ({e}), which CI requires (CI is set): install it with \
                 `apt-get install --no-install-recommends prometheus`, as .ci/run does"
            ),
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.is_empty(),
            "`promtool check metrics` on {what}'s /metrics: {}\n{said}",
            out.status
        );
    }
}

/// Prometheus's own scrape `Accept` header (2.x).
const PROMETHEUS_SCRAPE_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                        version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET /metrics` with an optional `Accept` header; returns (status, content type, body). HTTP/1.0, so the body
/// is never chunked.
fn get_metrics(base: &str, accept: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let hostport = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {hostport}\r\n{accept}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// `GET /metrics` asking for OpenMetrics; checks the content type and parses it strictly.
fn get_openmetrics(base: &str, accept: &str) -> (String, Vec<(String, String, f64)>) {
    let (status, content_type, text) = get_metrics(base, Some(accept));
    assert_eq!(status, 200);
    assert_eq!(
        content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "Accept: {accept}"
    );
    let samples = parse_openmetrics(&text);
    (text, samples)
}

/// `GET /metrics` as curl or promtool would (`accept`: none, or one without OpenMetrics); checks the content type
/// and the Prometheus text format.
fn get_prometheus_text(base: &str, accept: Option<&str>) -> (String, Vec<(String, String, f64)>) {
    let (status, content_type, text) = get_metrics(base, accept);
    assert_eq!(status, 200);
    assert_eq!(
        content_type, "text/plain; version=0.0.4; charset=utf-8",
        "Accept: {accept:?}"
    );
    let samples = parse_prometheus_text(&text);
    (text, samples)
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && l.contains(labels))
        .map(|(_, _, v)| v)
        .sum()
}

fn post(base: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let hostport = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn metrics_peers_health_token_and_no_secrets() {
    let g = TestGroup::new("inspect", 2, 200);
    let common = ["--attestation-period", "1s"];
    let mut outputs: Vec<String> = Vec::new();
    // A member with an HTTP upstream whose API key must never show.
    let upstream_key = "sk-test-5ecret-upstream-key-0123456789";
    let mut a = RunningNode::start(g.admin.path(), &[&common[..], &["--mock-capacity", "0"]].concat());
    let boot = a.p2p_addr.clone();
    // A member whose gateway holds keys (one from the environment, one from its keys file) that must never show.
    let gateway_env_key = "lmk_gateway-key-from-the-environment-42";
    let phone = cli_ok(g.homes[0].path(), &["gateway", "key", "add", "phone"]);
    let gateway_file_key = phone.lines().last().unwrap().trim().to_string();
    outputs.push(cli_ok(g.homes[0].path(), &["gateway", "key", "list"]));
    let mut b = RunningNode::start_with_env(
        g.homes[0].path(),
        "/ip4/127.0.0.1/tcp/0",
        &[
            &common[..],
            &[
                "--mock-capacity",
                "40",
                "--bootstrap",
                &boot,
                "--require-gateway-key",
            ],
        ]
        .concat(),
        &[("LENDMESH_GATEWAY_KEY", gateway_env_key)],
    );
    let admin_token = std::fs::read_to_string(g.homes[0].path().join("admin.token")).unwrap();
    let c_args = [
        &common[..],
        &[
            "--upstream",
            "http",
            "--upstream-url",
            "http://127.0.0.1:9",
            "--upstream-key-env",
            "LENDMESH_TEST_UPSTREAM_KEY",
        ],
        &["--bootstrap", &boot],
    ]
    .concat();
    let mut c = RunningNode::start_with_env(
        g.homes[1].path(),
        "/ip4/127.0.0.1/tcp/0",
        &c_args,
        &[("LENDMESH_TEST_UPSTREAM_KEY", upstream_key)],
    );
    for n in [&mut a, &mut b, &mut c] {
        n.wait_until("2 peers with attestations", WAIT, |n| {
            let (_, p) = n.get("/v1/peers");
            p["peers"].as_array().map_or(0, |ps| {
                ps.iter()
                    .filter(|p| !p["attestation"].is_null() && p["connected"] == true)
                    .count()
            }) == 2
        });
    }
    a.wait_until("tokens", WAIT, |n| {
        n.get("/v1/node").1["wallet_balance"].as_u64().unwrap_or(0) >= 5
    });

    // /metrics: valid OpenMetrics to a client that asks for it, with lendmesh and libp2p families.
    let (text, before) = get_openmetrics(&a.api, "application/openmetrics-text");
    for family in [
        "lendmesh_wallet_balance",
        "lendmesh_peers_connected",
        "lendmesh_fresh_attestations",
        "lendmesh_headroom_level",
    ] {
        assert!(before.iter().any(|(n, _, _)| n == family), "missing {family}");
    }
    assert!(
        before.iter().any(|(n, _, _)| n.starts_with("libp2p_")),
        "libp2p metrics are recorded"
    );
    assert_eq!(sample(&before, "lendmesh_peers_connected", ""), 2.0);
    outputs.push(text);
    // Borrows move the counters.
    let gw = a.gateway.clone();
    for i in 0..5 {
        assert_eq!(post(&gw, &format!("/x?{i}")), 200);
    }
    let (text, after) = get_openmetrics(&a.api, PROMETHEUS_SCRAPE_ACCEPT);
    assert_eq!(
        sample(&after, "lendmesh_borrows_total", "outcome=\"ok\"")
            - sample(&before, "lendmesh_borrows_total", "outcome=\"ok\""),
        5.0
    );
    assert_eq!(sample(&after, "lendmesh_borrow_latency_seconds_count", ""), 5.0);
    for family in [
        "lendmesh_borrows_total",
        "lendmesh_borrow_latency_seconds_bucket",
        "lendmesh_tokens_spent",
    ] {
        assert!(after.iter().any(|(n, _, _)| n == family), "missing {family}");
    }
    let (text_b, after_b) = get_openmetrics(
        &b.api,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    );
    assert_eq!(
        sample(&after_b, "lendmesh_lends_total", "outcome=\"served\""),
        5.0,
        "B served them all (C's upstream is unreachable)"
    );
    outputs.push(text);
    outputs.push(text_b);
    // Without an Accept that names OpenMetrics: the Prometheus text format, with the same samples.
    let mut prometheus_texts = Vec::new();
    for (n, name, om) in [(&a, "A", &after), (&b, "B", &after_b)] {
        for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
            let (text, prom) = get_prometheus_text(&n.api, accept);
            for counter in ["lendmesh_borrows_total", "lendmesh_lends_total"] {
                assert_eq!(
                    sample(&prom, counter, ""),
                    sample(om, counter, ""),
                    "{name} {counter}"
                );
            }
            assert_eq!(
                sample(&prom, "lendmesh_borrow_latency_seconds_count", ""),
                sample(om, "lendmesh_borrow_latency_seconds_count", "")
            );
            assert!(prom.iter().any(|(n, _, _)| n == "lendmesh_headroom_level"));
            assert!(prom.iter().any(|(n, _, _)| n.starts_with("libp2p_")));
            assert!(!text.contains("lendmesh_headroom_bucket"));
            outputs.push(text.clone());
            prometheus_texts.push((name, text));
        }
    }

    // Per-peer outcomes: B lent all five; relays delivered them.
    let (_, peers) = a.get("/v1/peers");
    let served: u64 = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcomes"]["lender_served"].as_u64().unwrap())
        .sum();
    let relayed: u64 = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcomes"]["relay_delivered"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 5);
    assert!(relayed >= 5, "{peers}");
    // /v1/peers: both others, with RTT and attestation ages that change over time.
    let snapshot = |n: &RunningNode| -> Vec<(String, Option<f64>, u64, u64)> {
        let (_, p) = n.get("/v1/peers");
        p["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["short_id"].as_str().unwrap().to_string(),
                    p["rtt_ms"].as_f64(),
                    p["attestation"]["age_ms"].as_u64().unwrap_or(0),
                    p["attestation"]["seq"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    a.wait_until("RTTs from ping", WAIT, |n| {
        snapshot(n).iter().all(|p| p.1.is_some())
    });
    let first = snapshot(&a);
    assert_eq!(first.len(), 2);
    a.wait_until("attestations to move on", WAIT, |n| {
        let now = snapshot(n);
        now.iter().zip(&first).all(|(x, y)| x.2 != y.2 || x.3 != y.3)
    });

    // The CLI reads the same API.
    let status_out = cli_ok(
        g.admin.path(),
        &["status", "--api", a.api.trim_start_matches("http://")],
    );
    assert!(
        status_out.contains("wallet") && status_out.contains("inspect"),
        "{status_out}"
    );
    let peers_json = cli_ok(
        g.admin.path(),
        &["peers", "--json", "--api", a.api.trim_start_matches("http://")],
    );
    let parsed: serde_json::Value = serde_json::from_str(&peers_json).unwrap();
    assert_eq!(parsed["peers"].as_array().unwrap().len(), 2);
    let peers_table = cli_ok(
        g.admin.path(),
        &["peers", "--api", a.api.trim_start_matches("http://")],
    );
    assert!(peers_table.starts_with("PEER"));
    let (ok, _, err) = cli(g.admin.path(), &["status", "--api", "127.0.0.1:1"]);
    assert!(!ok && err.contains("no lendmesh node is answering"), "{err}");
    outputs.extend([status_out, peers_json, peers_table]);
    for path in ["/v1/node", "/v1/peers", "/v1/lends", "/health"] {
        for n in [&a, &b, &c] {
            outputs.push(http_get_raw(&n.api, path, None).1);
        }
    }

    // /health follows the peers.
    assert_eq!(a.get("/health").0, 200);
    outputs.push(b.log());
    outputs.push(c.log());
    assert!(b.stop());
    assert!(c.stop());
    a.wait_until("/health to report the lost peers", WAIT, |n| {
        n.get("/health").0 == 503
    });
    let (_, body) = http_get_raw(&a.api, "/health", None);
    assert!(body.contains("no peer connected"), "{body}");
    outputs.push(a.log());
    assert!(a.stop());

    // No secret anywhere: node keys, the network key, the attestation key, tokens, the upstream key.
    outputs.push(cli_ok(g.admin.path(), &["group", "show"]));
    outputs.push(cli_ok(g.homes[0].path(), &["config", "show"]));
    let invite_path = g.admin.path().join("again.txt");
    let member_id = &g.ids[0];
    outputs.push(cli_ok(
        g.admin.path(),
        &[
            "group",
            "invite",
            member_id,
            "--out",
            invite_path.to_str().unwrap(),
        ],
    ));
    let invite = Invite::from_file_text(&std::fs::read_to_string(&invite_path).unwrap()).unwrap();
    let mut secrets: Vec<String> = vec![
        upstream_key.to_string(),
        hex::encode(invite.psk.as_bytes()),
        gateway_env_key.to_string(),
        gateway_file_key,
        admin_token.trim().to_string(),
    ];
    secrets.push(hex::encode(postcard_bytes(&invite.attestation_key)));
    for home in [g.admin.path(), g.homes[0].path(), g.homes[1].path()] {
        let store = lendmesh_node::store::Store::open(home).unwrap();
        secrets.push(hex::encode(store.identity().unwrap().unwrap().as_bytes()));
        for t in store.wallet_tokens().unwrap().iter().take(5) {
            secrets.push(hex::encode(&t.token.signature[..32]));
            secrets.push(hex::encode(&postcard_bytes(&t.spend_secret)[..32]));
        }
    }
    let all = outputs.join("\n").to_lowercase();
    for s in &secrets {
        assert!(
            !all.contains(&s.to_lowercase()),
            "a secret leaked into an output: {}…",
            &s[..8]
        );
    }

    // The standard linter agrees with the checks above (last: without promtool outside CI, all else still ran).
    promtool_check_metrics(&prometheus_texts);
}

#[test]
fn the_prometheus_text_checks_refuse_what_promtool_refuses() {
    let good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"b\"} 1\n\
                # HELP h_seconds H.\n# TYPE h_seconds histogram\nh_seconds_sum 1\nh_seconds_count 1\n\
                h_seconds_bucket{le=\"+Inf\"} 1\n# HELP g G.\n# TYPE g gauge\ng 2\n";
    assert_eq!(parse_prometheus_text(good).len(), 5);
    for bad in [
        // OpenMetrics: the counter's descriptors name the family, not its samples; # UNIT, # EOF.
        "# HELP x X.\n# TYPE x counter\nx_total 1\n",
        "# HELP g_seconds G.\n# TYPE g_seconds gauge\n# UNIT g_seconds seconds\ng_seconds 1\n",
        "# HELP g G.\n# TYPE g gauge\ng 2\n# EOF\n",
        // The old headroom gauge.
        "# HELP headroom_bucket H.\n# TYPE headroom_bucket gauge\nheadroom_bucket 3\n",
        // No help, no type, a counter without _total, a gauge with it, _created.
        "# TYPE g gauge\ng 2\n",
        "# HELP g G.\ng 2\n",
        "# HELP c C.\n# TYPE c counter\nc 1\n",
        "# HELP g_total G.\n# TYPE g_total gauge\ng_total 1\n",
        "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\nx_created 1\n",
        "# HELP g_count G.\n# TYPE g_count gauge\ng_count 1\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_prometheus_text(bad)).is_err(),
            "accepted:\n{bad}"
        );
    }
}

fn postcard_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    lendmesh_protocol::wire::encode_plain(v)
}

#[test]
fn api_beyond_loopback_needs_a_token_and_the_token_is_enforced() {
    let g = TestGroup::new("tok", 0, 10);
    let (ok, _, err) = cli(
        g.admin.path(),
        &[
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--gateway",
            "127.0.0.1:0",
            "--api",
            "0.0.0.0:0",
        ],
    );
    assert!(!ok, "refuses to start");
    assert!(err.contains("--api-token"), "{err}");
    let n = RunningNode::start(g.admin.path(), &["--api-token", "t0ken-for-test"]);
    assert_eq!(http_get_raw(&n.api, "/v1/node", None).0, 401);
    assert_eq!(http_get_raw(&n.api, "/metrics", Some("wrong")).0, 401);
    assert_eq!(http_get_raw(&n.api, "/v1/node", Some("t0ken-for-test")).0, 200);
    assert!(!n.log().contains("t0ken-for-test"), "the token is never logged");
    let (ok, _, err) = cli(
        g.admin.path(),
        &["status", "--api", n.api.trim_start_matches("http://")],
    );
    assert!(!ok && err.contains("needs a token"), "{err}");
    assert!(n.stop());
}

/// A sample line's name, label set (without braces) and value; panics with the line when it does not parse.
fn parse_sample(line: &str) -> (String, String, f64) {
    let (name_labels, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("no value: {line}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
    };
    let (name, labels) = match name_labels.split_once('{') {
        Some((n, l)) => {
            assert!(l.ends_with('}'), "labels: {line}");
            (n.to_string(), l.trim_end_matches('}').to_string())
        }
        None => (name_labels.to_string(), String::new()),
    };
    (name, labels, value)
}
