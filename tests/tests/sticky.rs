//! Issue 11 part 6 (conversation stickiness): turns of a conversation named by `Lendmesh-Conversation` go to the lender
//! that served the conversation before while it can lend, so the provider's prompt cache stays warm; requests without
//! the header still spread over the lenders; a conversation whose lender is gone moves to another and sticks there.
//! The header never reaches a lender, and a bad one is refused with `400 bad_conversation`. Without it, a tool's own
//! session header or a chat's start keeps the turns together (issue 20).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Conversation names distinctive enough to search the lenders' records and logs for.
const CONVERSATION_A: &str = "sticky-test-conversation-alpha-3f9c";
const CONVERSATION_B: &str = "sticky-test-conversation-bravo-81d2";

/// One request through the gateway, in `conversation` if given; returns the node that served it.
fn turn(gw: &str, conversation: Option<&str>, i: usize) -> String {
    let header = conversation.map_or(String::new(), |c| format!("Lendmesh-Conversation: {c}\r\n"));
    let (status, body) = gateway_request_with(
        gw,
        "POST",
        &format!("/v1/echo?turn={i}"),
        "{\"prompt\":\"hi\"}",
        &header,
    );
    assert_eq!(status, 200, "turn {i} of {conversation:?}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["served_by"].as_str().unwrap().to_string()
}

#[test]
fn turns_of_a_conversation_stick_to_one_lender_and_the_header_never_leaves() {
    let g = TestGroup::new("sticky", 3, 200);
    let common = ["--attestation-period", "1s"];
    // The admin borrows everything (no capacity of its own); three lenders with plenty, each a relay for the others.
    let (mut a, mut lenders) = borrower_and_lenders(g.admin.path(), &g.homes, &common, 1000);
    a.wait_until("tokens", WAIT, |n| wallet_balance(n) >= 20);
    let gw = a.gateway.clone();

    // A bad name is refused before anything is served or borrowed.
    for (header, what) in [
        (
            format!("Lendmesh-Conversation: {}\r\n", "x".repeat(129)),
            "too long",
        ),
        ("Lendmesh-Conversation: a b\r\n".to_string(), "a space"),
        (
            "Lendmesh-Conversation: a\r\nLendmesh-Conversation: b\r\n".to_string(),
            "twice",
        ),
    ] {
        let (status, body) = gateway_request_with(&gw, "POST", "/v1/echo", "{}", &header);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("bad_conversation")),
            "{what}: {body}"
        );
        assert!(
            v["message"].as_str().unwrap().contains("Lendmesh-Conversation"),
            "{body}"
        );
    }
    let (status, body) = gateway_request_with(
        &gw,
        "POST",
        "/v1/echo",
        "{}",
        &format!("Lendmesh-Conversation: {}\r\n", "x".repeat(128)),
    );
    assert_eq!(status, 200, "128 bytes is allowed: {body}");

    // Ten turns of each of two conversations, interleaved: each sticks to one lender.
    let mut served: HashMap<&str, Vec<String>> = HashMap::new();
    for i in 0..10 {
        for c in [CONVERSATION_A, CONVERSATION_B] {
            served.entry(c).or_default().push(turn(&gw, Some(c), i));
        }
    }
    for (c, by) in &served {
        let lenders_used: HashSet<&String> = by.iter().collect();
        assert_eq!(lenders_used.len(), 1, "{c} moved between lenders: {by:?}");
    }
    // Without the header, requests spread over the lenders (p2c among three with equal headroom: the chance that 20
    // land on one is about 3 in 3.5 billion).
    let spread: HashSet<String> = (0..20).map(|i| turn(&gw, None, 100 + i)).collect();
    assert!(spread.len() > 1, "no spread without a conversation: {spread:?}");

    // Without the header the node names the conversation itself (issue 20): by the tool's own session header, or
    // by the conversation's start, which every later turn of a chat repeats.
    let by_session: HashSet<String> = (0..10)
        .map(|i| {
            let (status, body) = gateway_request_with(
                &gw,
                "POST",
                &format!("/v1/echo?session-turn={i}"),
                "{}",
                "X-Claude-Code-Session-Id: 5b0e8f7c-tool-session\r\n",
            );
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["served_by"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        by_session.len(),
        1,
        "a tool session moved between lenders: {by_session:?}"
    );
    let mut history = vec![r#"{"role":"system","content":"be brief"}"#.to_string()];
    let by_start: HashSet<String> = (0..10)
        .map(|i| {
            history.push(format!(r#"{{"role":"user","content":"question {i}"}}"#));
            let body = format!(r#"{{"model":"m","messages":[{}]}}"#, history.join(","));
            history.push(format!(r#"{{"role":"assistant","content":"answer {i}"}}"#));
            let (status, answer) = gateway_request_with(&gw, "POST", "/v1/chat/completions", &body, "");
            assert_eq!(status, 200, "{answer}");
            serde_json::from_str::<serde_json::Value>(&answer).unwrap()["served_by"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        by_start.len(),
        1,
        "a chat's turns moved between lenders: {by_start:?}"
    );

    // The header never reached a lender: no lender's records or log carry a conversation's name; nor does the
    // borrower's own log (the map keeps a salted hash, never the name).
    for l in lenders.iter_mut() {
        let (_, lends) = l.get("/v1/lends");
        let text = lends.to_string();
        for c in [CONVERSATION_A, CONVERSATION_B, "sticky-test-conversation"] {
            assert!(!text.contains(c), "a lend record names the conversation: {text}");
            assert!(!l.log().contains(c), "a lender logged the conversation");
        }
    }
    assert!(!a.log().contains("sticky-test-conversation"));

    // Conversation A's lender goes away: the next turn moves to another lender, and later turns stick there.
    let a_lender = served[CONVERSATION_A][0].clone();
    // A node's mock answers name it by the end of its peer id; `g.ids` is in the order of `lenders`.
    let gone = g
        .ids
        .iter()
        .position(|id| id.ends_with(&a_lender))
        .unwrap_or_else(|| panic!("no lender named {a_lender} in {:?}", g.ids));
    assert!(lenders.remove(gone).stop());
    a.wait_until("the lender's departure", WAIT, |n| connected_peers(n) == 2);
    let moved: Vec<String> = (10..18).map(|i| turn(&gw, Some(CONVERSATION_A), i)).collect();
    assert!(!moved.contains(&a_lender), "{moved:?}");
    assert_eq!(
        moved.iter().collect::<HashSet<_>>().len(),
        1,
        "after moving, the conversation sticks to its new lender: {moved:?}"
    );

    for l in lenders {
        assert!(l.stop());
    }
    assert!(a.stop());
}
