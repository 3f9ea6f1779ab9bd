//! Issue 20: a borrowed request carries no fingerprint of the borrower. Requests recorded from real clients — Claude
//! Code 2.1.197, the `anthropic` 2.14.0 and `openai` 3.57.0 Python SDKs (`tests/fixtures/clients`) — are replayed
//! from two members, alice and bob, over several sessions each, through real borrows to one lender whose upstream
//! records what it receives: what the lender's node saw after opening each request, plus the lender's own key.
//! Nothing of the tools' keys, ids, client fingerprint or home paths arrives, and a linker that tries every header
//! and body field but the users' own words does no better than chance — while on the raw recordings it names the
//! member every time. The member's own upstream still gets the tool's headers, minus its credentials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::Duration;

use lendmesh_tests::linker::{self, Recorded, Seen};
use lendmesh_tests::stream::{Pace, Received, Script, ScriptedUpstream};
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);
/// The lender's own upstream key: the only credential its upstream may see.
const LENDER_KEY: &str = "lender-own-upstream-key-5521";

/// Sends a recorded request to `gateway` with the client's headers (the connection's own are the helper's).
fn replay(gateway: &str, r: &Recorded) -> (u16, String) {
    let headers: String = r
        .headers
        .iter()
        .filter(|(k, _)| {
            !["host", "content-length", "connection", "transfer-encoding"]
                .contains(&k.to_ascii_lowercase().as_str())
        })
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    gateway_request_with(gateway, &r.method, &r.path, &r.body, &headers)
}

fn upstream_seen(rec: &[Received], sent: &[&Recorded]) -> Vec<Seen> {
    assert_eq!(rec.len(), sent.len(), "one upstream call per request");
    rec.iter()
        .zip(sent)
        .map(|((headers, body), r)| Seen {
            member: r.member.clone(),
            session: r.session.clone(),
            headers: headers.clone(),
            body: body.clone(),
        })
        .collect()
}

fn scrubbed(n: &RunningNode, what: &str) -> u64 {
    let metrics = http_get_raw(&n.api, "/metrics", None).1;
    let prefix = format!("lendmesh_borrowed_scrubbed_total{{outcome=\"{what}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn borrowed_requests_carry_no_fingerprint_of_their_member() {
    let clients = ["claude-code.json", "anthropic-sdk.json", "openai-sdk.json"];
    let recorded: Vec<Recorded> = clients.iter().flat_map(|f| linker::fixture(f)).collect();
    // The raw recordings name their member: the linker is not blind.
    let raw: Vec<Seen> = recorded
        .iter()
        .map(|r| Seen {
            member: r.member.clone(),
            session: r.session.clone(),
            headers: r.headers.clone(),
            body: r.body.clone().into_bytes(),
        })
        .collect();
    let before = linker::link(&raw, &[]);
    assert!(
        before.accuracy > 0.99 && !before.linking.is_empty(),
        "the linker should tie the raw recordings to their members: {before:?}"
    );

    let upstream = ScriptedUpstream::start(Script {
        events: 2,
        pace: Pace::Every(Duration::ZERO),
        head_delay: Duration::ZERO,
        headers: vec![],
    });
    // Admin A (issuer and relay, no capacity), alice and bob (no capacity: every request is borrowed), lender L
    // (HTTP upstream, x-api-key). The members start first, bootstrapping to an admin not up yet.
    let g = TestGroup::new("fingerprint", 3, 100);
    let admin_port = free_port();
    let boot = format!("/ip4/127.0.0.1/tcp/{admin_port}/p2p/{}", g.admin_id);
    let fast = ["--attestation-period", "1s"];
    let none = [
        &fast[..],
        &[
            "--mock-capacity",
            "0",
            "--low-water",
            "20",
            "--batch",
            "20",
            "--bootstrap",
            &boot,
        ],
    ]
    .concat();
    let lender_args = [
        &fast[..],
        &[
            "--bootstrap",
            &boot,
            "--upstream",
            "http",
            "--upstream-url",
            &upstream.url,
            "--upstream-key-env",
            "FINGERPRINT_LENDER_KEY",
            "--upstream-auth",
            "x-api-key",
        ],
    ]
    .concat();
    let listen = "/ip4/127.0.0.1/tcp/0";
    let mut l = RunningNode::start_with_env(
        g.homes[2].path(),
        listen,
        &lender_args,
        &[("FINGERPRINT_LENDER_KEY", LENDER_KEY)],
    );
    let mut alice = RunningNode::start(g.homes[0].path(), &none);
    let mut bob = RunningNode::start(g.homes[1].path(), &none);
    let mut a = RunningNode::start_on(
        g.admin.path(),
        &format!("/ip4/127.0.0.1/tcp/{admin_port}"),
        &[&fast[..], &["--mock-capacity", "0"]].concat(),
    );
    for n in [&mut a, &mut alice, &mut bob, &mut l] {
        wait_ready(n, 3);
    }
    for n in [&mut alice, &mut bob] {
        n.wait_until("tokens and the lender's attestation", WAIT, |n| {
            wallet_balance(n) >= 20
                && n.get("/v1/peers").1["peers"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["attestation"]["bucket"] == "high"))
        });
    }

    // Alice's and bob's requests, interleaved, each through its member's gateway.
    let (mine, theirs): (Vec<&Recorded>, Vec<&Recorded>) = recorded.iter().partition(|r| r.member == "alice");
    let mut sent = Vec::new();
    for i in 0..mine.len().max(theirs.len()) {
        for (r, gw) in [(mine.get(i), &alice.gateway), (theirs.get(i), &bob.gateway)] {
            let Some(r) = r else { continue };
            let (status, body) = replay(gw, r);
            assert_eq!(status, 200, "{} {} of {}: {body}", r.client, r.path, r.member);
            sent.push(*r);
        }
    }
    let rec = upstream.record();
    let seen = upstream_seen(&rec.requests, &sent);

    // Nothing of the tools' keys, ids, client fingerprint or home paths reached the lender's upstream.
    let device_ids: Vec<String> = recorded
        .iter()
        .filter_map(|r| {
            let b: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            let u: serde_json::Value = serde_json::from_str(b["metadata"]["user_id"].as_str()?).ok()?;
            Some(u["device_id"].as_str()?.to_string())
        })
        .collect();
    assert!(
        !device_ids.is_empty(),
        "the Claude Code recordings carry a device id"
    );
    for (s, r) in seen.iter().zip(&sent) {
        let what = format!("{} {} of {} (session {})", r.client, r.path, r.member, r.session);
        let keys: Vec<&str> = s
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-api-key"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(keys, [LENDER_KEY], "{what}: the lender's key and no other");
        for (k, _) in &s.headers {
            let k = k.to_ascii_lowercase();
            assert!(
                !(k.starts_with("x-stainless")
                    || [
                        "x-claude-code-session-id",
                        "x-app",
                        "authorization",
                        "user-agent",
                        "openai-organization",
                        "openai-project"
                    ]
                    .contains(&k.as_str())),
                "{what}: header {k} reached the lender's upstream"
            );
        }
        let all = format!("{:?} {}", s.headers, String::from_utf8_lossy(&s.body)).to_ascii_lowercase();
        for gone in ["alice", "bob", "/home/", "sk-ant-", "sk-proj-"] {
            assert!(
                !all.contains(gone),
                "{what}: {gone:?} reached the lender's upstream:\n{all}"
            );
        }
        for id in &device_ids {
            assert!(
                !all.contains(id.as_str()),
                "{what}: a device id reached the lender's upstream"
            );
        }
        for (k, v) in &r.headers {
            if k.eq_ignore_ascii_case("x-claude-code-session-id") {
                assert!(
                    !all.contains(&v.to_ascii_lowercase()),
                    "{what}: the session id reached the lender"
                );
            }
        }
    }

    // The linker, on what the lender saw (its own key left out): no better than chance.
    let after = linker::link(&seen, &["x-api-key"]);
    let names: Vec<&str> = before.linking.iter().map(|(f, _)| f.as_str()).collect();
    eprintln!(
        "linker: {} requests, {} features; raw recordings {:.0} % right with {} linking features ({}), after the borrow {:.0} % with {}",
        seen.len(),
        after.features,
        before.accuracy * 100.0,
        before.linking.len(),
        names.join(", "),
        after.accuracy * 100.0,
        after.linking.len()
    );
    if std::env::var_os("FINGERPRINT_SHOW").is_some() {
        for s in &seen {
            eprintln!("{:?}\n{}\n", s.headers, String::from_utf8_lossy(&s.body));
        }
    }
    assert!(
        after.linking.is_empty(),
        "features that still link a member's sessions: {:?}",
        after.linking
    );
    assert!(after.accuracy <= 0.5 + 1e-9, "the linker beats chance: {after:?}");
    for n in [&alice, &bob] {
        assert!(
            scrubbed(n, "field") > 0 && scrubbed(n, "environment") > 0,
            "counted"
        );
    }

    // The member's own upstream path: the tool's headers pass, its credentials do not.
    let cc = recorded
        .iter()
        .find(|r| r.client.starts_with("claude-code"))
        .unwrap();
    let (status, body) = replay(&l.gateway, cc);
    assert_eq!(status, 200, "{body}");
    let rec = upstream.record();
    let (headers, _) = rec.requests.last().unwrap();
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        get("x-api-key"),
        [LENDER_KEY],
        "own path: the node's key, not the tool's"
    );
    assert_eq!(
        get("x-claude-code-session-id").len(),
        1,
        "own path: the tool's headers pass"
    );
    assert!(get("x-stainless-os").len() == 1 && get("anthropic-beta").len() == 1);
}
