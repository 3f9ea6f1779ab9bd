//! Issue-17 (part 4) acceptance: refills back off. A member whose quota is spent, hit by a tool at 20 gateway
//! requests a second, answers every request at once with `429 quota_exhausted` and asks the issuer nothing more
//! (not even after a restart, when it has to learn again that the quota is spent); a member whose issuer is down
//! answers `503 wallet_empty` with a Retry-After saying when its next refill is due, tries about log2(time / 1 s)
//! times, and refills at once when the issuer comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lendmesh_node::now_ms;
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);
/// The tool's rate.
const PER_SECOND: u64 = 20;
/// How long the tool keeps sending.
const LOAD: Duration = Duration::from_secs(5);

/// One gateway answer and when it was asked and answered (ms since the Unix epoch).
#[derive(Debug)]
struct Timed {
    sent_ms: u64,
    got_ms: u64,
    answer: GatewayAnswer,
}

/// A tool sending `PER_SECOND` requests a second to `gateway` for `LOAD`, paced by a tokio interval; each request
/// on its own thread, so a slow answer does not slow the pace.
fn paced_load(gateway: &str) -> Vec<Timed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let n = PER_SECOND * LOAD.as_secs();
        let mut tasks = Vec::new();
        for i in 0..n {
            tick.tick().await;
            let gw = gateway.to_string();
            tasks.push(tokio::task::spawn_blocking(move || {
                let sent_ms = now_ms();
                let answer = gateway_answer(&gw, "POST", &format!("/v1/echo?i={i}"), "{}");
                Timed {
                    sent_ms,
                    got_ms: now_ms(),
                    answer,
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
}

/// Waits until `n` is connected to `peers` members and has fresh attestations with headroom from `lenders` of
/// them (the borrow run asks the wallet only once it has a lender and a relay).
fn ready(n: &mut RunningNode, peers: u64, lenders: usize) {
    n.wait_until("connections", WAIT, |n| connected_peers(n) >= peers);
    n.wait_until("fresh attestations with headroom", WAIT, |n| {
        n.get("/v1/peers").1["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().filter(|p| p["attestation"]["bucket"] == "high").count() >= lenders)
    });
}

/// Refill requests by outcome, checking the node reports them at all.
fn counted(n: &RunningNode) -> BTreeMap<String, u64> {
    let by = refill_requests(n);
    assert!(
        by.contains_key("granted") && by.contains_key("unreachable"),
        "/v1/node has no refill_requests: {}",
        node_info(n)
    );
    by
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// `lendmesh_refill_requests_total` summed over outcomes, from `/metrics`.
fn metric_total(n: &RunningNode) -> u64 {
    let text = http_get_raw(&n.api, "/metrics", None).1;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("lendmesh_refill_requests_total{outcome="))
        .collect();
    assert_eq!(lines.len(), 6, "one series per outcome:\n{text}");
    lines
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_spent_quota_under_twenty_requests_a_second_asks_the_issuer_nothing_more() {
    let g = TestGroup::new("refill-quota", 2, 4);
    let fast = ["--attestation-period", "1s"];
    let mut admin = RunningNode::start(g.admin.path(), &fast);
    let boot = admin.p2p_addr.clone();
    let mut lender = RunningNode::start(g.homes[0].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    // No capacity of its own; default low-water mark (8) and batch (16), both above the quota of 4.
    let member_args = [&fast[..], &["--mock-capacity", "0", "--bootstrap", &boot]].concat();
    let mut member = RunningNode::start(g.homes[1].path(), &member_args);
    for n in [&mut admin, &mut lender] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    ready(&mut member, 2, 2);
    member.wait_for_log("quota for epoch 1 is spent", WAIT);
    assert_eq!(wallet_balance(&member), 4, "exactly the quota");
    for i in 0..4 {
        let (status, body) = gateway_request(&member.gateway, "POST", &format!("/v1/echo?b={i}"), "{}");
        assert_eq!(status, 200, "borrow {i}: {body}");
    }
    assert_eq!(wallet_balance(&member), 0);

    // The quota is spent: 20 requests a second for 5 s.
    let before = counted(&member);
    assert_eq!(
        before.get("granted"),
        Some(&1),
        "one request fetched the whole quota: {before:?}"
    );
    let answers = paced_load(&member.gateway);
    let during = diff(&counted(&member), &before);
    let next_epoch = current_epoch_end(&member);
    check_quota_exhausted(&answers, next_epoch, &member);
    eprintln!(
        "quota spent: {} answers, refill requests during the load: {during:?}",
        answers.len()
    );
    assert!(
        during.values().sum::<u64>() <= 3,
        "a spent quota is not asked for again: {during:?}\n{}",
        member.plain_log()
    );
    assert_eq!(
        metric_total(&member),
        refill_requests_total(&member),
        "/metrics agrees"
    );

    // Restarted, the member no longer knows its quota is spent: it learns it from one over-quota refusal.
    assert!(member.stop());
    let refused_before = node_info(&admin)["counters"]["issue_refused"].as_u64().unwrap();
    let mut member = RunningNode::start(g.homes[1].path(), &member_args);
    ready(&mut member, 2, 2);
    member.wait_for_log("quota for epoch 1 is spent", WAIT);
    let answers = paced_load(&member.gateway);
    let since_start = counted(&member);
    check_quota_exhausted(&answers, next_epoch, &member);
    let refused = node_info(&admin)["counters"]["issue_refused"].as_u64().unwrap() - refused_before;
    eprintln!(
        "after a restart: {} answers, refill requests since the start: {since_start:?}, refused by the issuer: {refused}",
        answers.len()
    );
    assert!(
        since_start.values().sum::<u64>() <= 3,
        "{since_start:?}\n{}",
        member.plain_log()
    );
    assert!(since_start["over_quota"] >= 1, "it asked once: {since_start:?}");
    assert!(refused <= 3, "the issuer refused {refused} requests");
    for n in [member, lender, admin] {
        assert!(n.stop());
    }
}

/// When the current epoch ends, per `/v1/node` (the next epoch starts then).
fn current_epoch_end(n: &RunningNode) -> u64 {
    let info = node_info(n);
    let current = info["epoch"].as_u64().unwrap();
    info["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["epoch"].as_u64() == Some(current))
        .and_then(|e| e["ends_at_ms"].as_u64())
        .unwrap_or_else(|| panic!("no end for epoch {current}: {info}"))
}

/// Every answer is `429 quota_exhausted` with a Retry-After until the next epoch, or (while a restarted member has
/// not heard from the issuer yet) `503 wallet_empty` with a short one.
fn check_quota_exhausted(answers: &[Timed], next_epoch_ms: u64, n: &RunningNode) {
    assert_eq!(answers.len() as u64, PER_SECOND * LOAD.as_secs());
    let mut exhausted = 0;
    for t in answers {
        let a = &t.answer;
        let retry = a
            .retry_after_s()
            .unwrap_or_else(|| panic!("no Retry-After: {a:?}"));
        match (a.status, a.json()["error"].as_str()) {
            (429, Some("quota_exhausted")) => {
                exhausted += 1;
                // Until the next epoch starts, rounded up to whole seconds.
                let expect_max = next_epoch_ms.saturating_sub(t.sent_ms).div_ceil(1000).max(1);
                let expect_min = next_epoch_ms.saturating_sub(t.got_ms).div_ceil(1000).max(1);
                assert!(
                    (expect_min..=expect_max).contains(&retry),
                    "Retry-After {retry} s, the next epoch starts in {expect_min}..={expect_max} s: {a:?}"
                );
                assert_eq!(a.json()["next_epoch_starts_at_ms"].as_u64(), Some(next_epoch_ms));
            }
            (503, Some("wallet_empty")) => {
                assert!((1..=60).contains(&retry), "{a:?}");
            }
            _ => panic!("unexpected answer {a:?}\n{}", n.plain_log()),
        }
    }
    assert!(
        exhausted * 2 >= answers.len(),
        "mostly quota_exhausted: {exhausted} of {}",
        answers.len()
    );
}

/// A refill failure the member logged: when it failed and when the next try is due (ms since the Unix epoch).
#[derive(Clone, Copy, Debug)]
struct Backoff {
    failed_ms: u64,
    due_ms: u64,
}

fn field(line: &str, name: &str) -> Option<u64> {
    let rest = line.split(&format!(" {name}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn backoffs(n: &RunningNode) -> Vec<Backoff> {
    n.plain_log()
        .lines()
        .filter(|l| l.contains("refill failed; backing off"))
        .filter_map(|l| {
            let wait = field(l, "retry_in_ms")?;
            let due_ms = field(l, "retry_at_ms")?;
            Some(Backoff {
                failed_ms: due_ms - wait,
                due_ms,
            })
        })
        .collect()
}

/// The most tries an issuer that never answers gets in `elapsed`: at once, then after at least 1, 2, 4, … s.
fn max_tries(elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    1 + (secs + 1.0).log2().floor() as u64
}

#[test]
fn an_unreachable_issuer_is_retried_with_backoff_and_an_empty_wallet_says_when() {
    let g = TestGroup::new("refill-down", 3, 50);
    let fast = ["--attestation-period", "1s"];
    // The admin listens on a port known in advance, so it can come back at the same address.
    let admin_listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut admin = RunningNode::start_on(g.admin.path(), &admin_listen, &fast);
    let boot = admin.p2p_addr.clone();
    let mut l1 = RunningNode::start(g.homes[0].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    let mut l2 = RunningNode::start(g.homes[1].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    for n in [&mut admin, &mut l1, &mut l2] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    assert!(admin.stop());
    l1.wait_until("the admin gone", WAIT, |n| connected_peers(n) == 1);

    // A member with an empty wallet whose issuer is down: one lender, one relay.
    let started = Instant::now();
    let mut member = RunningNode::start(
        g.homes[2].path(),
        &[&fast[..], &["--mock-capacity", "0", "--bootstrap", &l1.p2p_addr]].concat(),
    );
    ready(&mut member, 2, 2);
    member.wait_for_log("refill failed; backing off", WAIT);
    assert_eq!(wallet_balance(&member), 0);

    let before = counted(&member);
    let load_started = Instant::now();
    let answers = paced_load(&member.gateway);
    let load_took = load_started.elapsed();
    let after = counted(&member);
    let total_took = started.elapsed();
    let during = diff(&after, &before);
    let tries: u64 = after.values().sum();
    eprintln!(
        "issuer down: {} answers in {load_took:?}; refill requests during the load: {during:?}, since the start \
         ({total_took:?} ago): {after:?}",
        answers.len()
    );
    assert_eq!(
        tries, after["unreachable"],
        "every try failed to reach the issuer: {after:?}"
    );
    assert!(
        during.values().sum::<u64>() <= max_tries(load_took).min(3),
        "{during:?}\n{}",
        member.plain_log()
    );
    assert!(
        tries <= max_tries(total_took),
        "{tries} tries in {total_took:?}\n{}",
        member.plain_log()
    );

    // Every answer is an empty wallet, with a Retry-After saying when the backoff in force then ends.
    let logged = backoffs(&member);
    assert_eq!(
        logged.len() as u64,
        tries,
        "one backoff per failed try: {logged:?}"
    );
    for w in logged.windows(2) {
        assert!(
            w[1].failed_ms >= w[0].due_ms,
            "no try before its backoff ended: {logged:?}"
        );
    }
    for t in &answers {
        let a = &t.answer;
        assert_eq!(
            (a.status, a.json()["error"].as_str()),
            (503, Some("wallet_empty")),
            "{a:?}"
        );
        let retry = a.retry_after_s().expect("Retry-After");
        assert!((1..=60).contains(&retry), "{a:?}");
        // The backoff in force when the member answered: the last one logged before the answer (or the one
        // before it, if the answer was made just before that failure).
        let in_force: Vec<&Backoff> = logged
            .iter()
            .filter(|b| b.failed_ms <= t.got_ms)
            .rev()
            .take(2)
            .collect();
        let matches = |b: &Backoff| {
            let lo = b.due_ms.saturating_sub(t.got_ms).div_ceil(1000).max(1);
            let hi = b.due_ms.saturating_sub(t.sent_ms).div_ceil(1000).max(1);
            (lo..=hi).contains(&retry)
        };
        assert!(
            in_force.iter().any(|b| matches(b)),
            "Retry-After {retry} s at {}..{} ms does not match the backoff in force {in_force:?}",
            t.sent_ms,
            t.got_ms
        );
    }

    // The issuer comes back at the same address: once connected, the member refills at once rather than when
    // its backoff (by now several seconds) ends.
    let admin = RunningNode::start_on(g.admin.path(), &admin_listen, &fast);
    member.wait_until("the admin connected", WAIT, |n| connected_peers(n) >= 3);
    let connected_ms = now_ms();
    let due_ms = backoffs(&member).last().unwrap().due_ms;
    member.wait_until("a refill", WAIT, |n| wallet_balance(n) > 0);
    let refilled_ms = now_ms();
    eprintln!(
        "refilled within {} ms of the admin connecting; the backoff then in force ended {} ms after it connected",
        refilled_ms - connected_ms,
        due_ms as i64 - connected_ms as i64
    );
    if due_ms > connected_ms + 2_000 {
        assert!(
            refilled_ms < due_ms,
            "the issuer connecting ends a backoff after an unanswered try:\n{}",
            member.plain_log()
        );
    }
    // On the schedule (the default) the member then draws its whole quota, 50 tokens in batches of 16: four
    // requests, each granted once.
    member.wait_until("the whole quota", WAIT, |n| {
        node_info(n)["tokens_received"].as_u64() == Some(50)
    });
    let after = counted(&member);
    assert_eq!(after["granted"], 4, "{after:?}");
    for n in [member, l1, l2, admin] {
        assert!(n.stop());
    }
}

/// Sends `signal` (`STOP`, `CONT`) to a node's process.
fn signal(n: &RunningNode, signal: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(n.pid().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {}", n.pid());
}

#[test]
fn a_hung_issuer_does_not_hold_up_the_gateway() {
    let g = TestGroup::new("refill-hung", 3, 50);
    let fast = ["--attestation-period", "1s"];
    let mut admin = RunningNode::start(g.admin.path(), &fast);
    let boot = admin.p2p_addr.clone();
    let mut l1 = RunningNode::start(g.homes[0].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    let mut l2 = RunningNode::start(g.homes[1].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    for n in [&mut admin, &mut l1, &mut l2] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    // The issuer hangs: its port still accepts connections, nothing answers.
    signal(&admin, "STOP");

    // A member with an empty wallet: its first refill waits for an issuer that does not answer.
    let mut member = RunningNode::start(
        g.homes[2].path(),
        &[&fast[..], &["--mock-capacity", "0", "--bootstrap", &l1.p2p_addr]].concat(),
    );
    ready(&mut member, 2, 2);
    let answers = paced_load(&member.gateway);
    let slowest = answers.iter().map(|t| t.got_ms - t.sent_ms).max().unwrap();
    let by = counted(&member);
    let tries: u64 = by.values().sum();
    eprintln!(
        "issuer hung: {} answers, the slowest in {slowest} ms; refill requests that ended: {by:?}",
        answers.len()
    );
    for t in &answers {
        let a = &t.answer;
        assert_eq!(
            (a.status, a.json()["error"].as_str()),
            (503, Some("wallet_empty")),
            "{a:?}"
        );
        assert!((1..=60).contains(&a.retry_after_s().unwrap()), "{a:?}");
    }
    assert!(
        slowest < 2_000,
        "an empty wallet answers at once, whatever the issuer does: {slowest} ms"
    );
    assert!(tries <= 3, "{tries}");

    // The issuer wakes up: the refill goes through.
    signal(&admin, "CONT");
    member.wait_until("a refill", WAIT, |n| wallet_balance(n) > 0);
    for n in [member, l1, l2, admin] {
        assert!(n.stop());
    }
}
