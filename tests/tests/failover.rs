//! Issue-17 acceptance (failure attribution, first part): relays killed under concurrent load are the relays'
//! fault — the healthy lender is never cooled down, no request is refused for want of a lender, and borrowing goes
//! on through the relays that are left.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn killing_two_relays_under_load_never_blames_the_lender() {
    // Admin (relay), borrower, lender, two more relays.
    let g = TestGroup::new("failover", 4, 100_000);
    let fast = ["--attestation-period", "1s"];
    let relay_args = [&fast[..], &["--mock-capacity", "0"]].concat();
    let mut admin = RunningNode::start(g.admin.path(), &relay_args);
    let boot = admin.p2p_addr.clone();
    let with_boot = |extra: &[&'static str]| -> Vec<String> {
        extra
            .iter()
            .map(|a| a.to_string())
            .chain(["--bootstrap".to_string(), boot.clone()])
            .collect()
    };
    let borrower_args = with_boot(&[&relay_args[..], &["--low-water", "300", "--batch", "64"]].concat());
    let mut borrower = RunningNode::start(g.homes[0].path(), &strs(&borrower_args));
    let lender_args = with_boot(&[&fast[..], &["--mock-capacity", "100000"]].concat());
    let mut lender = RunningNode::start(g.homes[1].path(), &strs(&lender_args));
    let relay_boot = with_boot(&relay_args);
    let mut r1 = RunningNode::start(g.homes[2].path(), &strs(&relay_boot));
    let mut r2 = RunningNode::start(g.homes[3].path(), &strs(&relay_boot));
    for n in [&mut admin, &mut borrower, &mut lender, &mut r1, &mut r2] {
        n.wait_until("4 connected peers", WAIT, |n| connected_peers(n) >= 4);
    }
    borrower.wait_until("tokens and the lender's attestation", WAIT, |n| {
        wallet_balance(n) >= 250
            && n.get("/v1/peers").1["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["attestation"]["bucket"] == "high"))
    });
    let lender_id = node_info(&lender)["peer_id"].as_str().unwrap().to_string();

    // Eight clients, unpaced, for the whole test (the window between a relay dying and the borrower noticing is
    // where a dial to the dead relay happens).
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (stop, results, gw) = (stop.clone(), results.clone(), borrower.gateway.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (status, body) = gateway_request(&gw, "POST", &format!("/v1/echo?c={c}&i={i}"), "{}");
                    results.lock().unwrap().push((started, status, body));
                    i += 1;
                }
            })
        })
        .collect();
    // Some load first, then kill -9 both extra relays.
    borrower.wait_until("borrows under load", WAIT, |n| {
        node_info(n)["counters"]["borrows_ok"].as_u64().unwrap_or(0) >= 20
    });
    let killed_at = Instant::now();
    r1.kill9();
    r2.kill9();
    // Borrowing goes on for a while after the kill (a bounded count, not a sleep).
    let after_kill = |r: &Vec<(Instant, u16, String)>| r.iter().filter(|(t, ..)| *t > killed_at).count();
    let deadline = Instant::now() + WAIT;
    while after_kill(&results.lock().unwrap()) < 400 {
        assert!(Instant::now() < deadline, "the load stalled after the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let results = results.lock().unwrap();
    let after: Vec<&(Instant, u16, String)> = results.iter().filter(|(t, ..)| *t > killed_at).collect();
    let ok = after.iter().filter(|(_, s, _)| *s == 200).count();
    let no_lender: Vec<_> = after
        .iter()
        .filter(|(_, _, b)| b.contains("no_lender_available"))
        .collect();
    eprintln!("{} requests after the kill, {ok} served", after.len());
    assert!(
        no_lender.is_empty(),
        "no 503 while the lender has headroom: {no_lender:?}"
    );
    assert!(
        ok * 100 >= after.len() * 99,
        "≥ 99 % served after the kill: {ok} of {}: {:?}",
        after.len(),
        after.iter().filter(|(_, s, _)| *s != 200).collect::<Vec<_>>()
    );
    // The lender was never refused-and-cooled on the relays' account.
    let peers = borrower.get("/v1/peers").1;
    let l = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == lender_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(l["outcomes"]["lender_refused"], 0, "{l}");
    for n in [borrower, lender, admin] {
        assert!(n.stop());
    }
}
