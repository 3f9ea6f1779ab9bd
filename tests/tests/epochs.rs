//! Issue-9 acceptance: epochs that roll (20 s epochs, 10 s grace) while a member borrows continuously; quotas that
//! refill every epoch; previous-epoch tokens accepted in the grace period and refused after it; retired epochs'
//! spent sets pruned; a quota smaller than the batch issued exactly, then `quota_exhausted`; the key-consistency
//! alarm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lendmesh_protocol::group::{EpochAnnouncement, Invite};
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wire::InnerBorrowResponse;
use lendmesh_tests::rogue::Rogue;
use lendmesh_tests::spend::{http, peer_of, rejection, rogue_tokens, spend_direct};
use lendmesh_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn metrics(n: &RunningNode) -> String {
    http_get_raw(&n.api, "/metrics", None).1
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Spends `token` at `lender` directly (as a relay would forward it) and opens the answer.
async fn spend(
    rogue: &mut Rogue,
    lender: &RunningNode,
    token: &WalletToken,
    request_id: [u8; 16],
) -> InnerBorrowResponse {
    let (lender_id, _) = peer_of(lender);
    spend_direct(
        rogue,
        lender,
        token,
        lender_id,
        request_id,
        &http("POST", "/v1/echo", b"{}"),
    )
    .await
}

/// Invites a rogue member (a bare libp2p node the test drives) into a stopped admin's group.
fn invite_rogue(admin: &std::path::Path) -> (libp2p::identity::Keypair, Invite) {
    let key = libp2p::identity::Keypair::generate_ed25519();
    let path = admin.join("rogue-invite.txt");
    cli_ok(
        admin,
        &[
            "group",
            "invite",
            &key.public().to_peer_id().to_string(),
            "--out",
            path.to_str().unwrap(),
        ],
    );
    let invite = Invite::from_file_text(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (key, invite)
}

fn refusal(resp: &InnerBorrowResponse) -> Option<String> {
    rejection(resp)
}

/// Whether `n` still accepts tokens of `epoch` (per its `/v1/node` epoch list).
fn accepts(n: &RunningNode, epoch: u64) -> bool {
    let now = lendmesh_node::now_ms();
    node_info(n)["epochs"]
        .as_array()
        .map(|es| {
            es.iter().any(|e| {
                e["epoch"].as_u64() == Some(epoch)
                    && e["state"] != "cancelled"
                    && e["accepted_until_ms"].as_u64().is_some_and(|u| u > now)
            })
        })
        .unwrap_or(false)
}

#[test]
fn borrowing_continues_across_epoch_switches_quotas_refill_and_retired_epochs_are_pruned() {
    let g = TestGroup::with_args("epochs", 2, 200, &["--epoch", "20s", "--grace", "10s"], &[]);
    let (rogue_key, invite) = invite_rogue(g.admin.path());
    let fast = ["--attestation-period", "1s", "--mock-capacity", "1000"];
    let mut admin = RunningNode::start(g.admin.path(), &fast);
    let boot = admin.p2p_addr.clone();
    let mut lender = RunningNode::start(g.homes[0].path(), &[&fast[..], &["--bootstrap", &boot]].concat());
    let mut borrower = RunningNode::start(
        g.homes[1].path(),
        &[
            "--attestation-period",
            "1s",
            "--mock-capacity",
            "0",
            "--low-water",
            "5",
            "--batch",
            "8",
            "--bootstrap",
            &boot,
        ],
    );
    for n in [&mut admin, &mut lender, &mut borrower] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    borrower.wait_until("tokens", WAIT, |n| wallet_balance(n) >= 5);
    borrower.wait_until("fresh attestations from both lenders", WAIT, |n| {
        n.get("/v1/peers").1["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().filter(|p| p["attestation"]["bucket"] == "high").count() >= 2)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rogue = Rogue::new(rogue_key, *invite.psk.as_bytes());
    let old_tokens = rt.block_on(async {
        let t = rogue_tokens(&mut rogue, &admin, &invite, 2).await;
        rogue.connect(lender.p2p_addr.parse().unwrap()).await;
        t
    });
    assert_eq!(old_tokens[0].token.input.epoch, 1);

    // A tool borrowing through the member's gateway the whole time, about 5 requests a second.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let gw = borrower.gateway.clone();
    let load = {
        let (stop, results) = (stop.clone(), results.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) =
                    gateway_request(&gw, "POST", &format!("/v1/echo?i={i}"), "{\"prompt\":\"hi\"}");
                results
                    .lock()
                    .unwrap()
                    .push((status, format!("at {} ms: {body}", lendmesh_node::now_ms())));
                i += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // Epoch 2 starts: a token of epoch 1 is still accepted (grace period), and counted in epoch 1's spent set.
    admin.wait_until("epoch 2", WAIT, |n| current_epoch(n) >= 2);
    let in_grace = rt.block_on(spend(&mut rogue, &lender, &old_tokens[0], [1; 16]));
    assert!(matches!(in_grace, InnerBorrowResponse::Served), "{in_grace:?}");
    assert!(
        sample(&metrics(&lender), "lendmesh_spent_set_size{epoch=\"1\"}").unwrap_or(0.0) >= 1.0,
        "epoch 1's spent set is shown while it is accepted"
    );
    // After the grace period: refused, and epoch 1's spent set is pruned.
    lender.wait_until("epoch 1 retired", WAIT, |n| !accepts(n, 1));
    let after_grace = rt.block_on(spend(&mut rogue, &lender, &old_tokens[1], [2; 16]));
    let label = refusal(&after_grace);
    assert!(
        matches!(label.as_deref(), Some("unknown_epoch" | "epoch_closed")),
        "a token of a retired epoch is refused: {after_grace:?}"
    );
    lender.wait_until("epoch 1's spent set pruned", WAIT, |n| {
        let m = metrics(n);
        sample(&m, "lendmesh_spent_set_size{epoch=\"1\"}").is_none()
            && sample(&m, "lendmesh_epochs_pruned_total").unwrap_or(0.0) >= 1.0
    });
    // At least three switches (1→2→3→4), borrowing all along.
    admin.wait_until("epoch 4", Duration::from_secs(90), |n| current_epoch(n) >= 4);
    borrower.wait_until("a refill in epoch 4", WAIT, |n| {
        n.plain_log()
            .lines()
            .any(|l| l.contains("wallet refilled") && l.contains("epoch=4"))
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let results = results.lock().unwrap();
    let failed: Vec<&(u16, String)> = results.iter().filter(|(s, _)| *s != 200).collect();
    eprintln!(
        "{} borrows across the switches, {} failed",
        results.len(),
        failed.len()
    );
    assert!(results.len() >= 100, "the tool kept borrowing: {}", results.len());
    assert!(
        failed.is_empty(),
        "no borrow failed because of a switch: {failed:?}\nborrower:\n{}\nadmin:\n{}",
        borrower.plain_log(),
        admin.plain_log()
    );
    // The borrower's quota refilled in every epoch.
    let log = borrower.plain_log();
    for epoch in 1..=4 {
        assert!(
            log.lines()
                .any(|l| l.contains("wallet refilled") && l.contains(&format!("epoch={epoch} "))),
            "tokens received in epoch {epoch}:\n{log}"
        );
    }
    // The borrower's own leftover tokens of a finished epoch were spent in its grace period, at the lenders.
    let mut grace_spends = 0;
    for n in [&admin, &lender] {
        for rec in n.get("/v1/lends").1["lends"].as_array().unwrap() {
            if rec["outcome"] == "served" && rec["epoch"].as_u64().unwrap() < 4 {
                grace_spends += 1;
            }
        }
    }
    assert!(grace_spends > 0);
    // Storage stays bounded: at most three epochs' spent sets at once (previous, current, next).
    let m = metrics(&lender);
    let series = m
        .lines()
        .filter(|l| l.starts_with("lendmesh_spent_set_size{"))
        .count();
    assert!(series <= 3, "{m}");
    for n in [borrower, lender, admin] {
        assert!(n.stop());
    }
}

#[test]
fn a_quota_below_the_batch_is_issued_exactly_then_the_gateway_says_quota_exhausted() {
    let g = TestGroup::new("small-quota", 2, 5);
    let mut admin = RunningNode::start(g.admin.path(), &["--attestation-period", "1s"]);
    let boot = admin.p2p_addr.clone();
    let mut lender = RunningNode::start(
        g.homes[0].path(),
        &["--attestation-period", "1s", "--bootstrap", &boot],
    );
    // Default batch (16) and low-water mark (8): far above the quota of 5.
    let mut member = RunningNode::start(g.homes[1].path(), &["--mock-capacity", "0", "--bootstrap", &boot]);
    for n in [&mut admin, &mut lender, &mut member] {
        n.wait_until("2 connected peers", WAIT, |n| connected_peers(n) >= 2);
    }
    member.wait_for_log("quota for epoch 1 is spent", WAIT);
    assert_eq!(wallet_balance(&member), 5, "exactly the quota");
    assert_eq!(node_info(&member)["tokens_received"], 5);
    member.wait_until("fresh attestations", WAIT, |n| {
        n.get("/v1/peers").1["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().filter(|p| p["attestation"]["bucket"] == "high").count() >= 2)
    });
    for i in 0..5 {
        let (status, body) = gateway_request(&member.gateway, "POST", &format!("/v1/echo?i={i}"), "{}");
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = gateway_request(&member.gateway, "POST", "/v1/echo?i=5", "{}");
    assert_eq!(status, 429, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "quota_exhausted");
    let next = v["next_epoch_starts_at_ms"]
        .as_u64()
        .expect("says when the next epoch starts");
    assert!(next > lendmesh_node::now_ms());
    assert!(v["message"].as_str().unwrap().contains("next epoch starts in"));
    // At zero it stops asking: the issuer never had to refuse this member.
    member.wait_until("two more refill checks", WAIT, |n| {
        n.get("/v1/node").1["uptime_s"].as_u64().unwrap_or(0) >= 6
    });
    assert_eq!(
        node_info(&admin)["counters"]["issue_refused"],
        0,
        "{}",
        admin.plain_log()
    );
    assert!(!admin.plain_log().contains("over quota"));
    for n in [member, lender, admin] {
        assert!(n.stop());
    }
}

#[test]
fn another_key_for_the_same_epoch_raises_the_key_consistency_alarm() {
    let g = TestGroup::new("alarm", 2, 50);
    // The admin signs a second, member-specific key for epoch 1 and hands it to member 0 only.
    let admin_store = lendmesh_node::store::Store::open(g.admin.path()).unwrap();
    let admin_key = admin_store.identity().unwrap().unwrap();
    drop(admin_store);
    let store = lendmesh_node::store::Store::open(g.homes[0].path()).unwrap();
    let mut group = store.group().unwrap().unwrap();
    let other = lendmesh_protocol::blind_rsa::SecretKey::generate(
        lendmesh_protocol::blind_rsa::KeySize::Rsa2048,
        &mut rand::rngs::OsRng,
    )
    .unwrap();
    let mut a: EpochAnnouncement = group.epochs.get(1).unwrap().signed.announcement.clone();
    a.issuer_key_spki = other.public_key().spki_der().to_vec();
    let signed = a.sign(&admin_key).unwrap();
    group.epochs = lendmesh_protocol::epoch::EpochBook::new(signed, &group.group_id, &group.admin).unwrap();
    store.put_group(&group).unwrap();
    drop(store);

    let mut admin = RunningNode::start(g.admin.path(), &["--attestation-period", "1s"]);
    let boot = admin.p2p_addr.clone();
    let mut targeted = RunningNode::start(
        g.homes[0].path(),
        &["--attestation-period", "1s", "--bootstrap", &boot],
    );
    let mut other_member = RunningNode::start(
        g.homes[1].path(),
        &["--attestation-period", "1s", "--bootstrap", &boot],
    );
    for n in [&mut targeted, &mut admin, &mut other_member] {
        n.wait_until("the key-consistency alarm on /health", WAIT, |n| {
            let (status, body) = http_get(&n.api, "/health");
            status == 503
                && body["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("key consistency alarm for epoch(s) [1]"))
        });
        assert!(sample(&metrics(n), "lendmesh_key_consistency_alarms ").unwrap_or(0.0) >= 1.0);
        assert_eq!(node_info(n)["key_alarms"], serde_json::json!([1]));
    }
    targeted.wait_for_log("KEY CONSISTENCY ALARM", WAIT);
    // The targeted member holds no token of that key: the issuer refuses to sign for a key it did not announce.
    assert_eq!(wallet_balance(&targeted), 0);
    for n in [targeted, other_member, admin] {
        assert!(n.stop());
    }
}
