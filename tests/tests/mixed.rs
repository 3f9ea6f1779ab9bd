//! Issue 18: a mixed group. Lenders share different APIs and models — an OpenAI-chat upstream for `gpt-4o`, an
//! Anthropic one for `claude-sonnet-*`, and a Claude-subscription-like HTTP upstream for `claude-opus-*` that answers
//! with `anthropic-ratelimit-unified-*` windows at 75 % utilization. A member with no capacity borrows each kind:
//! every borrow reaches a lender that serves it and no other, a model nobody serves is refused at once with no token
//! spent, and the subscription lender stops lending at its kept share (30 %) while its own requests still go through.
//! Nodes start in any order: the members first, bootstrapping to an admin that is not up yet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lendmesh_tests::stream::{Pace, Script, ScriptedUpstream};
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn json_body(model: &str) -> String {
    format!(r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

/// The lend records of a node: `(request line, outcome)`.
fn lends(n: &RunningNode) -> Vec<(String, String)> {
    let (_, v) = n.get("/v1/lends");
    v["lends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    (
                        l["request"].as_str().unwrap_or("").to_string(),
                        l["outcome"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn gauge(n: &RunningNode, name: &str) -> f64 {
    http_get_raw(&n.api, "/metrics", None)
        .1
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
        .unwrap_or(0.0)
}

/// The bucket of `peer`'s attestation as `n` sees it.
fn bucket_of(n: &RunningNode, peer: &str) -> Option<String> {
    let (_, v) = n.get("/v1/peers");
    v["peers"].as_array()?.iter().find_map(|p| {
        (p["peer_id"].as_str() == Some(peer))
            .then(|| p["attestation"]["bucket"].as_str().map(str::to_string))
            .flatten()
    })
}

#[test]
fn borrows_go_only_to_lenders_that_serve_them() {
    let reset_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    // A Claude subscription behind a local proxy: every answer carries its windows, 75 % of the 5 h window used.
    let subscription = ScriptedUpstream::start(Script {
        events: 1,
        pace: Pace::Every(Duration::ZERO),
        head_delay: Duration::ZERO,
        headers: vec![
            ("anthropic-ratelimit-unified-5h-status".into(), "allowed".into()),
            ("anthropic-ratelimit-unified-5h-utilization".into(), "0.75".into()),
            ("anthropic-ratelimit-unified-5h-reset".into(), reset_s.to_string()),
            ("anthropic-ratelimit-unified-7d-status".into(), "allowed".into()),
            ("anthropic-ratelimit-unified-7d-utilization".into(), "0.2".into()),
            (
                "anthropic-ratelimit-unified-7d-reset".into(),
                (reset_s + 86_400).to_string(),
            ),
            ("anthropic-ratelimit-unified-status".into(), "allowed".into()),
            (
                "anthropic-ratelimit-unified-representative-claim".into(),
                "five_hour".into(),
            ),
        ],
    });
    let g = TestGroup::new("mixed", 4, 200);
    let admin_port = free_port();
    let boot = format!("/ip4/127.0.0.1/tcp/{admin_port}/p2p/{}", g.admin_id);
    let fast = ["--attestation-period", "1s", "--bootstrap", &boot];
    let lender = |cap: &str, api: &str, model: &str| -> Vec<String> {
        [
            &fast[..],
            &[
                "--mock-capacity",
                cap,
                "--upstream-api",
                api,
                "--upstream-model",
                model,
            ],
        ]
        .concat()
        .into_iter()
        .map(str::to_string)
        .collect()
    };
    let openai = lender("100", "openai-chat", "gpt-4o");
    let anthropic = lender("100", "anthropic-messages", "claude-sonnet-*");
    let sub_args: Vec<&str> = [
        &fast[..],
        &[
            "--upstream",
            "http",
            "--upstream-url",
            &subscription.url,
            "--upstream-api",
            "anthropic-messages",
            "--upstream-model",
            "claude-opus-*",
        ],
    ]
    .concat();
    let b_args = [
        &fast[..],
        &["--mock-capacity", "0", "--low-water", "20", "--batch", "20"],
    ]
    .concat();
    let mut b = RunningNode::start(g.homes[0].path(), &b_args);
    let mut lo = RunningNode::start(g.homes[1].path(), &strs(&openai));
    let mut la = RunningNode::start(g.homes[2].path(), &strs(&anthropic));
    let mut ls = RunningNode::start(g.homes[3].path(), &sub_args);
    let mut a = RunningNode::start_on(
        g.admin.path(),
        &format!("/ip4/127.0.0.1/tcp/{admin_port}"),
        &["--attestation-period", "1s", "--mock-capacity", "0"],
    );
    for n in [&mut a, &mut b, &mut lo, &mut la, &mut ls] {
        wait_ready(n, 4);
    }
    b.wait_until("tokens", WAIT, |n| wallet_balance(n) >= 20);
    let name = |n: &RunningNode| node_info(n)["short_id"].as_str().unwrap().to_string();
    let (lo_name, la_name) = (name(&lo), name(&la));

    // Each family goes to the lender that serves it, every time.
    for i in 0..8 {
        for (path, model, want) in [
            ("/v1/chat/completions", "gpt-4o", &lo_name),
            ("/v1/messages", "claude-sonnet-4-5", &la_name),
        ] {
            let (status, body) = gateway_request(&b.gateway, "POST", path, &json_body(model));
            assert_eq!(status, 200, "{path} {model} #{i}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                v["served_by"].as_str(),
                Some(want.as_str()),
                "{path} {model} #{i}: {body}"
            );
        }
    }
    let served = |n: &RunningNode| -> HashSet<String> {
        lends(n)
            .into_iter()
            .map(|(req, outcome)| {
                assert_eq!(outcome, "served", "{req}: a lend that was not served");
                req
            })
            .collect()
    };
    assert_eq!(
        served(&lo),
        HashSet::from(["POST /v1/chat/completions".to_string()])
    );
    assert_eq!(served(&la), HashSet::from(["POST /v1/messages".to_string()]));

    // A model nobody serves: refused at once, by name, with no token taken.
    let spent = gauge(&b, "lendmesh_tokens_spent");
    let answer = gateway_answer(&b.gateway, "POST", "/v1/messages", &json_body("claude-haiku-4-5"));
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(answer.json()["error"], "no_capable_lender", "{}", answer.body);
    assert!(answer.body.contains("claude-haiku-4-5"), "{}", answer.body);
    let answer = gateway_answer(&b.gateway, "POST", "/v1/responses", &json_body("gpt-4o"));
    assert_eq!(
        answer.json()["error"],
        "no_capable_lender",
        "another API: {}",
        answer.body
    );
    assert_eq!(
        gauge(&b, "lendmesh_tokens_spent"),
        spent,
        "no token spent on a request nobody serves"
    );

    // The subscription: the first Opus borrow is served and teaches the lender its 5 h window is 75 % used; with
    // 30 % kept for its member it has nothing more to lend. Its attestations do not say so (the default
    // `attest_floor = "high"`: they say nothing of headroom, docs/design.md §9.4), so the next borrow goes to it and
    // is refused by the lender itself; the lender cools down at the borrower (its reset time capped at 5 minutes)
    // and the tool is told to come back then. The token stays unspent.
    let (status, body) = gateway_request(&b.gateway, "POST", "/v1/messages", &json_body("claude-opus-4-1"));
    assert_eq!(status, 200, "{body}");
    let ls_id = node_info(&ls)["peer_id"].as_str().unwrap().to_string();
    assert_eq!(
        bucket_of(&b, &ls_id).as_deref(),
        Some("high"),
        "no headroom attested"
    );
    let spent = gauge(&b, "lendmesh_tokens_spent");
    let answer = gateway_answer(&b.gateway, "POST", "/v1/messages", &json_body("claude-opus-4-1"));
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["error"], "lenders_cooling_down", "{}", answer.body);
    let retry = answer.retry_after_s().expect("Retry-After");
    assert!(
        (60..=600).contains(&retry),
        "retry once the refusal's cooldown ends: {retry} s ({})",
        answer.body
    );
    assert_eq!(
        gauge(&b, "lendmesh_tokens_spent"),
        spent,
        "a refusal for headroom spends no token"
    );
    // Its member's own requests still use the kept share.
    let (status, body) = gateway_request(&ls.gateway, "POST", "/v1/messages", &json_body("claude-opus-4-1"));
    assert_eq!(status, 200, "the member's own request: {body}");
    assert_eq!(subscription.record().calls.len(), 2, "one lend, one own call");
    let (_, node) = ls.get("/v1/node");
    let up = &node["upstreams"][0];
    assert_eq!(
        (up["api"].as_str(), up["lendable_bucket"].as_str()),
        (Some("anthropic-messages"), Some("none"))
    );
    // Sonnet still goes to its lender: the subscription's state did not spill over.
    let (status, body) = gateway_request(
        &b.gateway,
        "POST",
        "/v1/messages",
        &json_body("claude-sonnet-4-5"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(lends(&lo).iter().all(|(r, _)| r == "POST /v1/chat/completions"));

    for n in [b, lo, la, ls, a] {
        assert!(n.stop());
    }
}
