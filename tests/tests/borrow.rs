//! Issue-4 acceptance: borrowing through a relay, double spends, and a lender killed mid-request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// An HTTP/1.1 request to a gateway, carrying a tool's own key (which must not leave the node); returns (status,
/// body).
fn gateway(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    gateway_request_with(base, method, path, body, "Authorization: Bearer tool-secret\r\n")
}

struct Group {
    admin: tempfile::TempDir,
    homes: Vec<tempfile::TempDir>,
    ids: Vec<String>,
}

/// A group whose admin is the first of `ids`.
fn group(members: usize) -> Group {
    let g = TestGroup::new("lenders", members, 200);
    let mut ids = vec![g.admin_id];
    ids.extend(g.ids);
    Group {
        admin: g.admin,
        homes: g.homes,
        ids,
    }
}

fn counter(n: &RunningNode, name: &str) -> u64 {
    n.get("/v1/node").1["counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn fifty_requests_borrowed_through_relays_never_reveal_the_borrower() {
    let g = group(3);
    // The admin is member A here: capacity 0, so everything is borrowed.
    let common = ["--attestation-period", "1s", "--gateway", "127.0.0.1:0"];
    let (mut a, mut lenders) = borrower_and_lenders(g.admin.path(), &g.homes, &common, 40);
    a.wait_until("tokens", WAIT, |n| {
        n.get("/v1/node").1["wallet_balance"].as_u64().unwrap_or(0) >= 20
    });
    let gw = a.gateway.clone();
    let mut served_by: HashMap<String, usize> = HashMap::new();
    for i in 0..50 {
        let (status, body) = gateway(&gw, "POST", &format!("/v1/echo?i={i}"), "{\"prompt\":\"hi\"}");
        assert_eq!(status, 200, "request {i}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        *served_by
            .entry(v["served_by"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let a_short = &g.ids[0][g.ids[0].len() - 8..];
    assert!(
        !served_by.contains_key(a_short),
        "A never serves its own requests: {served_by:?}"
    );
    assert_eq!(served_by.values().sum::<usize>(), 50);
    // Tokens taken from A's wallet equal the borrows served.
    assert_eq!(counter(&a, "borrows_ok"), 50);
    assert_eq!(counter(&a, "tokens_spent"), 50);
    assert_eq!(counter(&a, "served_locally"), 0);
    // Lenders' records: 50 distinct tokens, each spent once, none naming A.
    let mut hashes = HashSet::new();
    let mut served = 0;
    for l in lenders.iter_mut() {
        let (_, lends) = l.get("/v1/lends");
        for rec in lends["lends"].as_array().unwrap() {
            let text = rec.to_string();
            assert!(
                !text.contains(&g.ids[0]) && !text.contains(a_short),
                "a lender's record names the borrower: {text}"
            );
            if rec["outcome"] == "served" {
                served += 1;
                assert!(
                    hashes.insert(rec["token_hash"].as_str().unwrap().to_string()),
                    "a token spent twice"
                );
            }
        }
        // The lender's log lines about lends name the token and the relay, never A. The log reaches this process
        // through a pipe, so wait (bounded) until every lend record's line has arrived.
        let records = lends["lends"].as_array().unwrap().len();
        l.wait_until("the lend log lines", WAIT, |l| {
            l.log()
                .lines()
                .filter(|line| line.contains("lendmesh_node::roles::lender") && line.contains("outcome"))
                .count()
                >= records
        });
        let lend_lines: Vec<String> = l
            .log()
            .lines()
            .filter(|line| line.contains("lendmesh_node::roles::lender") && line.contains("outcome"))
            .map(String::from)
            .collect();
        assert!(!lend_lines.is_empty(), "no lend lines:\n{}", l.log());
        assert!(
            !lend_lines.iter().any(|line| line.contains(a_short)),
            "{lend_lines:?}"
        );
    }
    assert_eq!(served, 50);
    assert_eq!(hashes.len(), 50);
    for l in lenders {
        assert!(l.stop());
    }
    assert!(a.stop());
}

#[test]
fn killing_the_lender_mid_request_gives_a_response_or_a_clear_504_and_no_double_count() {
    let g = group(3);
    let common = ["--attestation-period", "1s", "--gateway", "127.0.0.1:0"];
    // A borrows everything; R relays (no capacity); B and C lend slowly so the request is in flight for a while.
    let mut a = RunningNode::start(
        g.admin.path(),
        &[&common[..], &["--mock-capacity", "0", "--low-water", "10"]].concat(),
    );
    let boot = a.p2p_addr.clone();
    let relay_args = [&common[..], &["--mock-capacity", "0", "--bootstrap", &boot]].concat();
    let lender_args = [
        &common[..],
        &[
            "--mock-capacity",
            "40",
            "--mock-latency",
            "3s",
            "--bootstrap",
            &boot,
        ],
    ]
    .concat();
    let mut r = RunningNode::start(g.homes[0].path(), &relay_args);
    let mut b = RunningNode::start(g.homes[1].path(), &lender_args);
    let mut c = RunningNode::start(g.homes[2].path(), &lender_args);
    for n in [&mut a, &mut r, &mut b, &mut c] {
        wait_ready(n, 3);
    }
    a.wait_until("tokens", WAIT, |n| {
        n.get("/v1/node").1["wallet_balance"].as_u64().unwrap_or(0) >= 5
    });
    let gw = a.gateway.clone();
    let request = std::thread::spawn(move || gateway(&gw, "GET", "/slow", ""));
    // Find the chosen lender and kill it while it works.
    let deadline = std::time::Instant::now() + WAIT;
    let chosen_b = loop {
        if counter(&b, "lends_in_flight") > 0 {
            break true;
        }
        if counter(&c, "lends_in_flight") > 0 {
            break false;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lender picked the request up"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "B {} in-flight {}, C {} in-flight {}, chosen_b {chosen_b}",
        b.get("/v1/node").1["peer_id"],
        counter(&b, "lends_in_flight"),
        c.get("/v1/node").1["peer_id"],
        counter(&c, "lends_in_flight")
    );
    let (killed, survivor) = if chosen_b { (b, c) } else { (c, b) };
    let killed_home = killed.home.clone();
    killed.kill9();
    let (status, body) = request.join().unwrap();
    if status == 200 {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let survivor_short = survivor.get("/v1/node").1["peer_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            survivor_short.ends_with(v["served_by"].as_str().unwrap()),
            "retried elsewhere: {body}; survivor {survivor_short}, killed {}\nA's log:\n{}",
            killed_home.display(),
            a.log()
        );
    } else {
        assert_eq!(status, 504, "a clear timeout: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "lender_timeout");
    }
    // No token counted twice: whatever the killed lender claimed is not what the survivor served.
    let (_, lends) = survivor.get("/v1/lends");
    let survivor_tokens: HashSet<String> = lends["lends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["token_hash"].as_str().unwrap().to_string())
        .collect();
    let killed_store = lendmesh_node::store::Store::open(&killed_home).unwrap();
    for h in killed_store.spent_hashes(1).unwrap() {
        assert!(
            !survivor_tokens.contains(&h.to_string()),
            "token {h} counted at two lenders"
        );
    }
    assert!(survivor.stop());
    assert!(r.stop());
    assert!(a.stop());
}
