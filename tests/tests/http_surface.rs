//! Issue 19: no one gets in where they don't belong. The gateway beyond loopback needs a key (refused to start
//! without one, `401` without it, never passed on or logged); request heads and bodies that are too large or too
//! slow get their status codes, counted, and the node keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use lendmesh_tests::stream::{Pace, Script, ScriptedUpstream};
use lendmesh_tests::*;

const UPSTREAM_KEY: &str = "sk-upstream-secret-5c1e9a";
const ENV_KEY: &str = "lmk_from-the-environment-0123456789";

/// `lendmesh_http_refusals_total{server, reason}`.
fn refusals(n: &RunningNode, server: &str, reason: &str) -> u64 {
    metric_value(
        n,
        &format!("lendmesh_http_refusals_total{{server=\"{server}\",reason=\"{reason}\"}} "),
    )
}

/// Sends raw bytes, then reads the answer to its end (bounded); returns the status (0 if the server closed without
/// one) and the text.
fn raw(base: &str, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer (and close) before it has read everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get_with(base: &str, headers: &str) -> (u16, String) {
    gateway_request_with(base, "POST", "/v1/chat/completions", "{}", headers)
}

#[test]
fn a_gateway_beyond_loopback_needs_a_key_that_never_leaves_the_node() {
    let g = TestGroup::new("gw-keys", 0, 100);
    let home = g.admin.path();
    let common = [
        "run",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        "127.0.0.1:0",
        "--gateway",
        "0.0.0.0:0",
    ];
    // No key: the node refuses to start, and says how to add one.
    let (ok, _, err) = cli(home, &common);
    assert!(!ok, "a keyless gateway beyond loopback must not start: {err}");
    assert!(
        err.contains("beyond loopback") && err.contains("lendmesh gateway key add"),
        "{err}"
    );

    // A key per device in the keys file (0600), and one from the environment.
    let out = cli_ok(home, &["gateway", "key", "add", "laptop"]);
    let laptop = out.lines().last().unwrap().trim().to_string();
    assert!(laptop.starts_with("lmk_"), "{out}");
    assert_eq!(cli_ok(home, &["gateway", "key", "list"]).trim(), "laptop");
    let upstream = ScriptedUpstream::start(Script {
        events: 2,
        pace: Pace::Every(Duration::ZERO),
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    let node = RunningNode::start_with_env(
        home,
        "/ip4/127.0.0.1/tcp/0",
        &[
            "--gateway",
            "0.0.0.0:0",
            "--upstream",
            "http",
            "--upstream-url",
            &upstream.url,
            "--upstream-key-env",
            "UPSTREAM_KEY",
        ],
        &[("UPSTREAM_KEY", UPSTREAM_KEY), ("LENDMESH_GATEWAY_KEY", ENV_KEY)],
    );
    assert!(node.gateway.starts_with("http://0.0.0.0:"), "{}", node.gateway);
    let gw = node.gateway.replace("0.0.0.0", "127.0.0.1");

    let (status, body) = get_with(&gw, "");
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("unauthorized") && body.contains("API key"),
        "{body}"
    );
    let (status, _) = get_with(&gw, "Authorization: Bearer lmk_not-a-key-of-this-node\r\n");
    assert_eq!(status, 401);
    let (status, _) = get_with(&gw, &format!("x-api-key: {laptop}x\r\n"));
    assert_eq!(status, 401, "a longer key is another key");
    // The way the OpenAI SDKs send their key, and the way the Anthropic SDKs do.
    let (status, body) = get_with(&gw, &format!("Authorization: Bearer {laptop}\r\n"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_with(&gw, &format!("x-api-key: {ENV_KEY}\r\n"));
    assert_eq!(status, 200, "{body}");
    let record = upstream.wait_for("two calls", Duration::from_secs(10), |r| r.requests.len() == 2);
    for (headers, body) in &record.requests {
        for (k, v) in headers {
            assert!(
                !v.contains(&laptop) && !v.contains(ENV_KEY),
                "a gateway key reached the upstream in {k}"
            );
        }
        assert!(!String::from_utf8_lossy(body).contains("lmk_"));
        assert!(
            headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("authorization")
                    && v == &format!("Bearer {UPSTREAM_KEY}")),
            "the upstream gets this member's own key: {headers:?}"
        );
    }
    assert_eq!(refusals(&node, "gateway", "unauthorized"), 3);

    // Revoked on the running node: the laptop's key opens nothing from the next change check on.
    cli_ok(home, &["gateway", "key", "remove", "laptop"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = get_with(&gw, &format!("Authorization: Bearer {laptop}\r\n"));
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the removed key still works");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = get_with(&gw, &format!("Authorization: Bearer {ENV_KEY}\r\n"));
    assert_eq!(status, 200, "the other key still works");

    let (ok, log) = node.stop_with_log();
    assert!(ok);
    for secret in [laptop.as_str(), ENV_KEY, UPSTREAM_KEY] {
        assert!(!log.contains(secret), "a secret is in the log");
    }
}

#[test]
fn oversized_and_slow_requests_get_their_status_codes_and_the_node_keeps_serving() {
    let g = TestGroup::new("http-limits", 0, 100);
    let home = g.admin.path();
    std::fs::write(
        home.join("config.toml"),
        "[http]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n",
    )
    .unwrap();
    let node = RunningNode::start(home, &["--mock-capacity", "1000"]);
    let gw = node.gateway.clone();
    let fine = |what: &str| {
        let (status, body) = gateway_request(&gw, "GET", "/v1/models", "");
        assert_eq!(status, 200, "after {what}: {body}");
    };
    fine("start");

    // A 200 KB header (over the 64 KiB default), and 150 headers (over 100): 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    assert_eq!(raw(&gw, big.as_bytes()).0, 431);
    fine("a 200 KB header");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = raw(&gw, format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert_eq!(status, 431);
    fine("150 headers");
    assert_eq!(refusals(&node, "gateway", "header_too_large"), 2);

    // A head that stops half way: 408 once the head timeout passes, and the connection is closed.
    let (status, text) = raw(&gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("header_timeout"), "{text}");
    assert_eq!(refusals(&node, "gateway", "header_timeout"), 1);
    // A connection that never sends anything is closed without an answer (not a refusal).
    let (status, text) = raw(&gw, b"");
    assert_eq!((status, text.as_str()), (0, ""));
    assert_eq!(refusals(&node, "gateway", "header_timeout"), 1);
    fine("a slow head");

    // Bodies: announced over the 1 MiB limit (refused unread), sent over it, or too slow.
    let (status, _) = raw(
        &gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
    );
    assert_eq!(status, 413);
    let chunked_over = {
        let mut r =
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..20 {
            r.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
            r.extend(std::iter::repeat_n(b'x', 100_000));
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    };
    assert_eq!(raw(&gw, &chunked_over).0, 413);
    assert_eq!(refusals(&node, "gateway", "body_too_large"), 2);
    let (status, text) = raw(
        &gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"only\":",
    );
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert_eq!(refusals(&node, "gateway", "body_timeout"), 1);
    fine("oversized and slow bodies");

    // The API has the same limits.
    assert_eq!(raw(&node.api, big.as_bytes()).0, 431);
    assert_eq!(refusals(&node, "api", "header_too_large"), 1);
    assert_eq!(http_get(&node.api, "/health").0, 200);
    assert!(node.stop());
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Issue 15 (found by `contrib/load.py`): a body trickled a byte per read made the node hold a fresh 8 KiB read
/// buffer per byte until the body ended — 50 such clients took a gateway from 20 to 290 MiB within the size limit
/// and the timeout. Now each piece is copied into one buffer as it arrives. 20 clients send 400 one-byte chunks
/// each, a round every 3 ms: the old code grew by about 60 MiB here, the new one by a few.
#[test]
fn a_trickled_body_costs_its_bytes_not_a_buffer_per_read() {
    let g = TestGroup::new("http-trickle", 0, 100);
    let node = RunningNode::start(g.admin.path(), &["--mock-capacity", "1000"]);
    let addr = node.gateway.trim_start_matches("http://").to_string();
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .unwrap();
            s
        })
        .collect();
    let before = rss_kib(node.pid());
    for _ in 0..400 {
        for s in conns.iter_mut() {
            s.write_all(b"1\r\nx\r\n").unwrap();
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let during = rss_kib(node.pid());
    let grown_mib = during.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 24,
        "20 trickled bodies of 400 bytes grew the node by {grown_mib} MiB"
    );
    // Each body, ended, is an ordinary request.
    for s in conns.iter_mut() {
        s.write_all(b"0\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    }
}
