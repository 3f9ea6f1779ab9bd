//! Issue 13 acceptance in the node: `[exposure]` is followed. A member with plenty of capacity of its own still
//! borrows a share of its requests (cover borrows, each counted), and with `issuance = "schedule"` it draws its
//! whole quota of every epoch on the schedule — the running epoch's at once, the next one's in steps spread over
//! the announcement lead before it starts — whatever it spends. The three nodes start at the same time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use lendmesh_tests::{
    RunningNode, TestGroup, free_port, gateway_request, metric_value, node_info, wait_ready,
};

/// Each member's quota per epoch; with batches of 8, seven steps, the last one short (2).
const QUOTA: u64 = 50;
/// Epoch length (the admin announces the next one a third of it, 10 s, before it starts).
const EPOCH_S: u64 = 30;
const LEAD_MS: u64 = EPOCH_S * 1000 / 3;
const WAIT: Duration = Duration::from_secs(60);

fn tokens_received(n: &RunningNode) -> u64 {
    node_info(n)["tokens_received"].as_u64().unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The current epoch and when it ends, as `n` holds them.
fn current_epoch(n: &RunningNode) -> (u64, u64) {
    let info = node_info(n);
    let e = info["epochs"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["state"] == "current").cloned())
        .expect("a current epoch");
    (e["epoch"].as_u64().unwrap(), e["ends_at_ms"].as_u64().unwrap())
}

#[test]
fn cover_borrows_happen_with_own_headroom_and_issuance_follows_the_schedule_not_spending() {
    let epoch = format!("{EPOCH_S}s");
    let g = TestGroup::with_args(
        "exposure",
        2,
        QUOTA as u32,
        &["--epoch", &epoch, "--grace", "10s"],
        &[],
    );
    std::fs::write(
        g.homes[0].path().join("config.toml"),
        "[exposure]\ncover_share = 0.5\nissuance = \"schedule\"\n",
    )
    .unwrap();
    let port = free_port();
    let boot = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", g.admin_id);
    let common = ["--attestation-period", "1s", "--mock-capacity", "1000"];
    let mut admin = RunningNode::start_on(g.admin.path(), &format!("/ip4/127.0.0.1/tcp/{port}"), &common);
    let mut member = RunningNode::start(
        g.homes[0].path(),
        &[
            &common[..],
            &["--bootstrap", &boot, "--low-water", "4", "--batch", "8"],
        ]
        .concat(),
    );
    let mut lender = RunningNode::start(
        g.homes[1].path(),
        &[&common[..], &["--bootstrap", &boot]].concat(),
    );
    assert_eq!(node_info(&member)["exposure"]["issuance"], "schedule");

    // The running epoch's whole quota, at once (seven batches, within the catch-up burst), before a single token
    // is spent (on demand, with a low-water mark of 4 and batches of 8, it would stop at 8).
    member.wait_until("the whole quota of the running epoch", WAIT, |n| {
        tokens_received(n) >= QUOTA
    });
    assert_eq!(tokens_received(&member) % QUOTA, 0, "whole quotas only");
    for n in [&mut admin, &mut member, &mut lender] {
        wait_ready(n, 2);
    }

    // Cover borrows: 40 requests the member's own capacity (1 000) could all serve; about half go to a lender.
    let sent = 40;
    for i in 0..sent {
        let (status, body) = gateway_request(
            &member.gateway,
            "POST",
            "/v1/chat/completions",
            &format!(r#"{{"model":"m","messages":[{{"role":"user","content":"q{i}"}}]}}"#),
        );
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let cover = metric_value(
        &member,
        "lendmesh_borrows_by_choice_total{reason=\"cover\",outcome=\"borrowed\"} ",
    );
    let local = metric_value(&member, "lendmesh_served_locally_total ");
    assert!(
        (5..=35).contains(&cover),
        "about half of {sent} requests are cover borrows: {cover}"
    );
    assert_eq!(
        cover + local,
        sent,
        "every request served, here or as a cover borrow"
    );
    let own = &node_info(&member)["upstreams"][0];
    assert!(
        own["remaining"].as_u64().unwrap() >= 1000 - sent,
        "the member had its own headroom throughout: {own}"
    );
    let lent = metric_value(&admin, "lendmesh_lends_total{outcome=\"served\"} ")
        + metric_value(&lender, "lendmesh_lends_total{outcome=\"served\"} ");
    assert!(
        lent >= cover,
        "the lenders served the cover borrows: {lent} < {cover}"
    );

    // The schedule: the next epoch whose lead has not opened yet (a second of margin to start watching).
    let (current, ends) = current_epoch(&member);
    let (target, starts) = if now_ms() + 1_000 < ends - LEAD_MS {
        (current + 1, ends)
    } else {
        (current + 2, ends + EPOCH_S * 1000)
    };
    let opens = starts - LEAD_MS;
    let before = tokens_received(&member);
    // Watch from before the lead opens until shortly after the epoch starts: nothing is spent meanwhile.
    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_millis(starts + 5_000 - now_ms()) + WAIT;
    while Instant::now() < deadline {
        let t = now_ms();
        seen.push((t, tokens_received(&member)));
        if t > starts + 3_000 && seen.last().unwrap().1 >= before + QUOTA {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let early: Vec<u64> = seen.iter().filter(|(t, _)| *t < opens).map(|(_, v)| *v).collect();
    assert!(
        early.iter().all(|&v| v == before),
        "nothing drawn for epoch {target} before its lead opens: {seen:?}"
    );
    let at_start = seen
        .iter()
        .rev()
        .find(|(t, _)| *t < starts)
        .map_or(before, |(_, v)| *v);
    assert!(
        at_start >= before + QUOTA / 2,
        "most of epoch {target}'s quota drawn before it starts: {at_start} of {before} + {QUOTA}: {seen:?}"
    );
    assert_eq!(
        seen.last().unwrap().1,
        before + QUOTA,
        "exactly the whole quota of epoch {target}: {seen:?}"
    );
    let mut levels: Vec<u64> = seen
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| *v > before && *v < before + QUOTA)
        .collect();
    levels.dedup();
    assert!(
        levels.len() >= 2,
        "drawn in steps over the lead, not at once: {seen:?}"
    );
    // Only quotas, never more: every draw is a whole epoch's, whatever was spent.
    assert_eq!(tokens_received(&member) % QUOTA, 0);
    for n in [admin, member, lender] {
        assert!(n.stop(), "clean shutdown");
    }
}
