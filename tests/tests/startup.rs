//! Issue-9 acceptance: nodes started in any order find each other — members before the admin, all at once (ten
//! times in a row) — and members reconnect by themselves when the admin is killed and restarted on its port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use lendmesh_tests::*;

/// The bound the issue sets: every node connected and holding tokens within 30 s.
const WITHIN: Duration = Duration::from_secs(30);

/// A group whose invites point members at `127.0.0.1:port` (the admin's future address).
fn group_at(port: u16, members: usize) -> TestGroup {
    let boot = format!("/ip4/127.0.0.1/tcp/{port}");
    TestGroup::with_args("startup", members, 100, &[], &["--bootstrap", &boot])
}

fn listen(port: u16) -> String {
    format!("/ip4/127.0.0.1/tcp/{port}")
}

/// Waits (bounded by `WITHIN` from `since`) until every node has `peers` connections and some tokens.
fn all_ready(nodes: &mut [RunningNode], peers: u64, since: Instant) {
    for n in nodes.iter_mut() {
        let left = WITHIN.saturating_sub(since.elapsed());
        n.wait_until("connected to every other node", left, |n| {
            connected_peers(n) >= peers
        });
        let left = WITHIN.saturating_sub(since.elapsed());
        n.wait_until("tokens in the wallet", left, |n| wallet_balance(n) >= 1);
    }
}

#[test]
fn members_started_before_the_admin_connect_and_fill_and_reconnect_after_an_admin_restart() {
    let port = free_port();
    let g = group_at(port, 2);
    // Members first, with no bootstrap flag: the invite names the admin's address, where nothing listens yet.
    let mut nodes: Vec<RunningNode> = g
        .homes
        .iter()
        .map(|h| RunningNode::start(h.path(), &[]))
        .collect();
    for n in &mut nodes {
        n.wait_for_log("connection refused", WITHIN);
    }
    let start_admin_at = Instant::now() + Duration::from_secs(5);
    while Instant::now() < start_admin_at {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        nodes.iter().all(|n| !n.log().contains("check the group key")),
        "a refused connection is not a key problem"
    );
    let since = Instant::now();
    nodes.push(RunningNode::start_on(g.admin.path(), &listen(port), &[]));
    all_ready(&mut nodes, 2, since);
    eprintln!(
        "members started 5 s early: all connected with tokens {:?} after the admin started",
        since.elapsed()
    );

    // Kill the admin and restart it on the same port: the members come back by themselves.
    let admin = nodes.pop().unwrap();
    admin.kill9();
    for n in &mut nodes {
        n.wait_until("the admin gone", WITHIN, |n| connected_peers(n) <= 1);
    }
    let since = Instant::now();
    nodes.push(RunningNode::start_on(g.admin.path(), &listen(port), &[]));
    for n in &mut nodes {
        n.wait_until("reconnected to both others", WITHIN, |n| connected_peers(n) >= 2);
    }
    eprintln!(
        "admin restarted: members reconnected within {:?}",
        since.elapsed()
    );
    for n in nodes {
        assert!(n.stop());
    }
}

#[test]
fn three_nodes_started_at_the_same_time_connect_every_time() {
    for round in 0..10 {
        let port = free_port();
        let g = group_at(port, 2);
        let since = Instant::now();
        // Start all three at once, each from its own thread.
        let admin_home = g.admin.path().to_path_buf();
        let mut handles = vec![std::thread::spawn(move || {
            RunningNode::start_on(&admin_home, &listen(port), &[])
        })];
        for h in &g.homes {
            let home = h.path().to_path_buf();
            handles.push(std::thread::spawn(move || RunningNode::start(&home, &[])));
        }
        let mut nodes: Vec<RunningNode> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        all_ready(&mut nodes, 2, since);
        eprintln!(
            "round {round}: all three connected with tokens after {:?}",
            since.elapsed()
        );
        for n in nodes {
            assert!(n.stop());
        }
    }
}

#[test]
fn a_connected_group_does_not_keep_asking_kademlia() {
    // Issue 15's idle-cost run found each node starting a Kademlia bootstrap on every 250 ms redial tick, about 8 % of
    // a core in an idle 10-member group. Once every member is connected, a node bootstraps every 5 min: over 4 s of a
    // connected group at most the one started as the last member connected falls in the window, against 16 before
    // the fix. Counted from the node's own log of the bootstraps it starts: libp2p's query metrics count a result
    // per step, and one bootstrap took from 1 to 11 steps (a loaded CI run), too loose a measure for this.
    let port = free_port();
    let g = group_at(port, 2);
    let since = Instant::now();
    let log = [("RUST_LOG", "info,lendmesh_node::net::actor=debug")];
    let mut nodes = vec![RunningNode::start_with_env(
        g.admin.path(),
        &listen(port),
        &[],
        &log,
    )];
    for h in &g.homes {
        nodes.push(RunningNode::start_with_env(
            h.path(),
            "/ip4/127.0.0.1/tcp/0",
            &[],
            &log,
        ));
    }
    all_ready(&mut nodes, 2, since);
    let bootstraps = |n: &RunningNode| n.log().matches("kademlia bootstrap started").count();
    let results = |n: &RunningNode| {
        metric_value(
            n,
            "libp2p_kad_query_result_num_requests_count{type=\"Bootstrap\"}",
        )
    };
    let before: Vec<(usize, u64)> = nodes.iter().map(|n| (bootstraps(n), results(n))).collect();
    // Counting what does not happen needs a window: 4 s is 16 redial ticks.
    std::thread::sleep(Duration::from_secs(4));
    for (n, (b, r)) in nodes.iter().zip(before) {
        let (after, results_after) = (bootstraps(n), results(n));
        eprintln!("Kademlia bootstraps started: {b} -> {after} (query results {r} -> {results_after})");
        assert!(
            after - b <= 1,
            "Kademlia bootstraps went from {b} to {after} in 4 s of a connected group"
        );
    }
    for n in nodes {
        assert!(n.stop());
    }
}
