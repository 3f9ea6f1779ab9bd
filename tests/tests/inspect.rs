//! Issue-5 inspection: `/metrics` is valid OpenMetrics and moves with borrows, `/v1/peers` shows RTT and
//! attestation ages that change, `/health` follows the peers, the API token rules, `status` / `peers`, and no
//! secret in any output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
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
    let mut b = RunningNode::start(
        g.homes[0].path(),
        &[&common[..], &["--mock-capacity", "40", "--bootstrap", &boot]].concat(),
    );
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

    // /metrics: valid OpenMetrics, with lendmesh and libp2p families.
    let (status, text) = http_get_raw(&a.api, "/metrics", None);
    assert_eq!(status, 200);
    let before = parse_openmetrics(&text);
    for family in [
        "lendmesh_wallet_balance",
        "lendmesh_peers_connected",
        "lendmesh_fresh_attestations",
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
    let (_, text) = http_get_raw(&a.api, "/metrics", None);
    let after = parse_openmetrics(&text);
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
    let (_, text_b) = http_get_raw(&b.api, "/metrics", None);
    assert_eq!(
        sample(
            &parse_openmetrics(&text_b),
            "lendmesh_lends_total",
            "outcome=\"served\""
        ),
        5.0,
        "B served them all (C's upstream is unreachable)"
    );
    outputs.push(text);
    outputs.push(text_b);

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
    let mut secrets: Vec<String> = vec![upstream_key.to_string(), hex::encode(invite.psk.as_bytes())];
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
