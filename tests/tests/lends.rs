//! Issue 17 (part 5): a lender's records last. They are written to its store, survive a clean restart, page through
//! `/v1/lends` newest first, and are bounded by the retention settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use lendmesh_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// Borrows the lender serves: more than two pages of [`PAGE`].
const BORROWS: usize = 12;
const PAGE: usize = 5;

/// The lender's flags (it lends everything but its reserve; records kept as configured by `extra`).
fn start_lender(home: &std::path::Path, boot: &str, extra: &[&str]) -> RunningNode {
    let flags = [
        &[
            "--attestation-period",
            "1s",
            "--mock-capacity",
            "100",
            "--bootstrap",
            boot,
        ][..],
        extra,
    ]
    .concat();
    RunningNode::start(home, &flags)
}

/// `/v1/lends` with a query; asserts 200.
fn lends(n: &RunningNode, query: &str) -> (Vec<Value>, Value) {
    let (status, v) = n.get(&format!("/v1/lends{query}"));
    assert_eq!(status, 200, "/v1/lends{query}: {v}");
    (v["lends"].as_array().unwrap().clone(), v["next"].clone())
}

/// Every record, one page of `limit` at a time; asserts the pages are disjoint and each at most `limit`.
fn all_pages(n: &RunningNode, limit: usize) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    let mut query = format!("?limit={limit}");
    let mut pages = 0;
    loop {
        let (page, next) = lends(n, &query);
        pages += 1;
        assert!(page.len() <= limit, "page of {} > {limit}", page.len());
        for rec in &page {
            assert!(seen.insert(rec.to_string()), "a record on two pages: {rec}");
        }
        all.extend(page);
        match next.as_str() {
            Some(cursor) => query = format!("?limit={limit}&before={cursor}"),
            None => {
                assert!(next.is_null(), "{next}");
                return (all, pages);
            }
        }
        assert!(pages <= BORROWS, "paging does not end");
    }
}

#[test]
fn lend_records_survive_a_restart_and_page_newest_first() {
    let g = TestGroup::new("lends", 2, 200);
    // The admin relays (no capacity of its own), member 0 lends, member 1 borrows everything.
    let mut admin = RunningNode::start(
        g.admin.path(),
        &["--attestation-period", "1s", "--mock-capacity", "0"],
    );
    let boot = admin.p2p_addr.clone();
    let mut lender = start_lender(g.homes[0].path(), &boot, &[]);
    let mut borrower = RunningNode::start(
        g.homes[1].path(),
        &[
            "--attestation-period",
            "1s",
            "--mock-capacity",
            "0",
            "--low-water",
            "20",
            "--batch",
            "20",
            "--bootstrap",
            &boot,
        ],
    );
    for n in [&mut admin, &mut lender, &mut borrower] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    borrower.wait_until("tokens and the lender's attestation", WAIT, |n| {
        wallet_balance(n) >= BORROWS as u64
            && n.get("/v1/peers").1["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["attestation"]["bucket"] == "high"))
    });
    assert!(lends(&lender, "").0.is_empty(), "a new lender has no records");

    let lender_short = g.ids[0][g.ids[0].len() - 8..].to_string();
    let admin_short = g.admin_id[g.admin_id.len() - 8..].to_string();
    let borrower_short = g.ids[1][g.ids[1].len() - 8..].to_string();
    let mut bodies = Vec::new();
    for i in 0..BORROWS {
        let body = format!("{{\"prompt\":\"{}\"}}", "x".repeat(i));
        let (status, answer) = gateway_request(&borrower.gateway, "POST", &format!("/v1/echo?i={i}"), &body);
        assert_eq!(status, 200, "borrow {i}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["served_by"], lender_short.as_str(), "{answer}");
        bodies.push(body);
    }
    // Each record is written once its lend is answered, so the last may land just after the borrower's answer.
    lender.wait_until("every lend recorded", WAIT, |n| {
        lends(n, "?limit=1000").0.len() >= BORROWS
    });

    let (whole, next) = lends(&lender, "?limit=1000");
    assert!(next.is_null(), "one page holds them all: {next}");
    assert_eq!(whole.len(), BORROWS);
    assert_eq!(
        lends(&lender, "").0,
        whole,
        "the default page (100) holds them all"
    );
    for (n, rec) in whole.iter().enumerate() {
        // Newest first: the first record is the last borrow.
        let i = BORROWS - 1 - n;
        assert_eq!(rec["outcome"], "served", "{rec}");
        assert_eq!(rec["request"], format!("POST /v1/echo?i={i}"), "{rec}");
        assert_eq!(
            rec["request_bytes"].as_u64(),
            Some(bodies[i].len() as u64),
            "{rec}"
        );
        assert!(rec["response_bytes"].as_u64().unwrap() > 0, "{rec}");
        assert!(rec["duration_ms"].as_u64().is_some(), "{rec}");
        assert_eq!(
            rec["relay"],
            admin_short.as_str(),
            "the relay, not the borrower: {rec}"
        );
        assert_eq!(rec["epoch"], 1, "{rec}");
        assert_eq!(rec["token_hash"].as_str().unwrap().len(), 64, "{rec}");
        let text = rec.to_string();
        assert!(
            !text.contains(&g.ids[1]) && !text.contains(&borrower_short),
            "a record names the borrower: {text}"
        );
        if n > 0 {
            assert!(
                whole[n - 1]["at_ms"].as_u64() >= rec["at_ms"].as_u64(),
                "newest first"
            );
        }
    }

    // Pages of 5: disjoint, together the whole list in the same order.
    let (paged, pages) = all_pages(&lender, PAGE);
    assert_eq!(pages, BORROWS.div_ceil(PAGE));
    assert_eq!(paged, whole);

    // Bad queries get a JSON 400 that names the parameter.
    for query in ["?limit=0", "?limit=1001", "?limit=ten", "?limit=", "?before=nope"] {
        let (status, v) = lender.get(&format!("/v1/lends{query}"));
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["error"], "bad_request", "{query}: {v}");
        let param = if query.starts_with("?limit") {
            "limit"
        } else {
            "before"
        };
        assert!(v["message"].as_str().unwrap().contains(param), "{query}: {v}");
    }

    // A clean stop and a start on the same home: the same records.
    let home = lender.home.clone();
    assert!(lender.stop(), "the lender exits cleanly");
    let lender = start_lender(&home, &boot, &[]);
    assert_eq!(
        lends(&lender, "?limit=1000").0,
        whole,
        "the records survive a restart"
    );
    assert_eq!(all_pages(&lender, PAGE).0, whole);

    // Started with a lower bound, the lender trims the oldest records at start.
    assert!(lender.stop());
    let mut lender = start_lender(&home, &boot, &["--lend-records", &PAGE.to_string()]);
    lender.wait_until("the oldest records removed", WAIT, |n| {
        lends(n, "").0.len() == PAGE
    });
    assert_eq!(lends(&lender, "").0, whole[..PAGE], "the newest are kept");

    for n in [lender, borrower, admin] {
        assert!(n.stop());
    }
}
