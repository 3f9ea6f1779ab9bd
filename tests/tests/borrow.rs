//! Issue-4 acceptance: borrowing through a relay, double spends, and a lender killed mid-request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// An HTTP/1.1 request to a gateway; returns (status, body).
fn gateway(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let hostport = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer tool-secret\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn gateway_addr(n: &RunningNode) -> String {
    let log = n.log();
    let line = log
        .lines()
        .find(|l| l.contains("gateway listening on http://"))
        .expect("gateway line");
    let plain: String = line
        .split("gateway listening on ")
        .nth(1)
        .unwrap()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    plain.trim().trim_end_matches("[0m").to_string()
}

struct Group {
    admin: tempfile::TempDir,
    homes: Vec<tempfile::TempDir>,
    ids: Vec<String>,
}

fn group(members: usize) -> Group {
    let admin = temp_home();
    let admin_id = init(admin.path());
    cli_ok(
        admin.path(),
        &["group", "create", "--name", "lenders", "--rsa-bits", "2048"],
    );
    let mut homes = Vec::new();
    let mut ids = vec![admin_id];
    for _ in 0..members {
        let home = temp_home();
        let id = init(home.path());
        let invite = home.path().join("invite.txt");
        cli_ok(
            admin.path(),
            &["group", "invite", &id, "--out", invite.to_str().unwrap()],
        );
        cli_ok(home.path(), &["join", invite.to_str().unwrap()]);
        homes.push(home);
        ids.push(id);
    }
    Group { admin, homes, ids }
}

fn ready(n: &mut RunningNode, peers: usize) {
    n.wait_until("connections", WAIT, |n| {
        n.get("/v1/node").1["connected_peers"].as_u64().unwrap_or(0) >= peers as u64
    });
    n.wait_until("fresh attestations", WAIT, |n| {
        let (_, p) = n.get("/v1/peers");
        p["peers"]
            .as_array()
            .map_or(0, |ps| ps.iter().filter(|p| !p["attestation"].is_null()).count())
            >= peers
    });
}

fn counter(n: &RunningNode, name: &str) -> u64 {
    n.get("/v1/node").1["counters"][name].as_u64().unwrap_or(0)
}

#[test]
fn fifty_requests_borrowed_through_relays_never_reveal_the_borrower() {
    let g = group(3);
    // The admin is member A here: capacity 0, so everything is borrowed.
    let common = ["--attestation-period", "1s", "--gateway", "127.0.0.1:0"];
    let mut a = RunningNode::start(
        g.admin.path(),
        &[
            &common[..],
            &["--mock-capacity", "0", "--low-water", "20", "--batch", "20"],
        ]
        .concat(),
    );
    let boot = a.p2p_addr.clone();
    let mut lenders: Vec<RunningNode> = g
        .homes
        .iter()
        .map(|h| {
            RunningNode::start(
                h.path(),
                &[&common[..], &["--mock-capacity", "40", "--bootstrap", &boot]].concat(),
            )
        })
        .collect();
    ready(&mut a, 3);
    for l in lenders.iter_mut() {
        ready(l, 3);
    }
    a.wait_until("tokens", WAIT, |n| {
        n.get("/v1/node").1["wallet_balance"].as_u64().unwrap_or(0) >= 20
    });
    let gw = gateway_addr(&a);
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
    for l in &lenders {
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
        // The lender's log lines about lends name the token and the relay, never A.
        let lend_lines: Vec<String> = l
            .log()
            .lines()
            .filter(|line| line.contains("lendmesh_node::lender") && line.contains("outcome"))
            .map(String::from)
            .collect();
        assert!(!lend_lines.is_empty());
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
