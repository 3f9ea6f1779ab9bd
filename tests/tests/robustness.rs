//! Issue-3 robustness: malformed invites, a truncated store, oversized frames and garbage gossip each give a clear
//! error or a counted rejection, and the node keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lendmesh_protocol::group::Invite;
use lendmesh_tests::rogue::Rogue;
use lendmesh_tests::*;

#[test]
fn malformed_and_mismatched_invites_are_refused_clearly() {
    let admin = temp_home();
    init(admin.path());
    cli_ok(
        admin.path(),
        &["group", "create", "--name", "g", "--rsa-bits", "2048"],
    );
    let member = temp_home();
    let id = init(member.path());
    let other = temp_home();
    let other_id = init(other.path());
    let invite = member.path().join("invite.txt");
    cli_ok(
        admin.path(),
        &["group", "invite", &id, "--out", invite.to_str().unwrap()],
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&invite).unwrap().permissions().mode() & 0o777,
            0o600,
            "invite is 0600"
        );
    }
    let text = std::fs::read_to_string(&invite).unwrap();

    // Truncated.
    let truncated = member.path().join("truncated.txt");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    let (ok, _, err) = cli(member.path(), &["join", truncated.to_str().unwrap()]);
    assert!(
        !ok && err.contains("ask the group admin for a fresh invite"),
        "{err}"
    );
    // Garbage.
    let garbage = member.path().join("garbage.txt");
    std::fs::write(&garbage, "hello\x00world").unwrap();
    let (ok, _, err) = cli(member.path(), &["join", garbage.to_str().unwrap()]);
    assert!(!ok && err.contains("invite"), "{err}");
    // For another node.
    let (ok, _, err) = cli(other.path(), &["join", invite.to_str().unwrap()]);
    assert!(!ok && err.contains("send the admin this node's peer id"), "{err}");
    assert!(!other_id.is_empty());
    // The right one works, and no output carries the secrets.
    let out = cli_ok(member.path(), &["join", invite.to_str().unwrap()]);
    let parsed = Invite::from_file_text(&text).unwrap();
    let psk_hex = parsed.psk.to_swarm_key();
    let psk_line = psk_hex.lines().nth(2).unwrap();
    assert!(!out.contains(psk_line));
    let show = cli_ok(member.path(), &["group", "show"]);
    assert!(!show.contains(psk_line), "group show never prints the key");
}

#[test]
fn a_truncated_store_fails_with_a_clear_message() {
    let home = temp_home();
    init(home.path());
    cli_ok(
        home.path(),
        &["group", "create", "--name", "g", "--rsa-bits", "2048"],
    );
    let store = home.path().join("store.redb");
    let len = std::fs::metadata(&store).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let (ok, _, err) = cli(home.path(), &["group", "show"]);
    assert!(!ok, "a damaged store is refused");
    assert!(err.contains("damaged") && err.contains("move it aside"), "{err}");
}

#[test]
fn oversized_frames_and_garbage_gossip_are_counted_and_the_node_keeps_running() {
    let admin = temp_home();
    init(admin.path());
    let out = cli_ok(
        admin.path(),
        &["group", "create", "--name", "g", "--rsa-bits", "2048"],
    );
    assert!(out.contains("created group"));
    // The rogue is a real member: it has the key and is on the roster.
    let key = libp2p::identity::Keypair::generate_ed25519();
    let rogue_id = key.public().to_peer_id().to_string();
    let invite = admin.path().join("rogue.txt");
    cli_ok(
        admin.path(),
        &["group", "invite", &rogue_id, "--out", invite.to_str().unwrap()],
    );
    let parsed = Invite::from_file_text(&std::fs::read_to_string(&invite).unwrap()).unwrap();
    let psk = *parsed.psk.as_bytes();
    let topic = format!("/lendmesh/{}/v1", parsed.group_id);

    let node = RunningNode::start(admin.path(), &[]);
    let addr: libp2p::Multiaddr = node.p2p_addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rogue = Rogue::new(key, psk, "/lendmesh/issue/1");
        let peer = rogue.connect(addr).await;
        // 1 MiB on the issue protocol (limit 64 KiB): the stream fails, nothing is decoded.
        let result = rogue.raw_request(peer, vec![0xAB; 1 << 20]).await;
        assert!(
            result.is_err() || result.as_ref().is_ok_and(|r| r.is_empty()),
            "oversized frame answered: {result:?}"
        );
        // Garbage that fits the limit is refused too.
        let result = rogue.raw_request(peer, vec![1, 1, 0xff, 0xff, 0xff]).await;
        assert!(
            result.is_err() || result.as_ref().is_ok_and(|r| r.is_empty()),
            "garbage answered: {result:?}"
        );
        // Garbage gossip on the group topic.
        rogue
            .publish_when_ready(&topic, peer, b"not a lendmesh message".to_vec())
            .await;
    });
    let mut node = node;
    node.wait_until(
        "the oversized frames to be counted",
        Duration::from_secs(20),
        |n| {
            n.get("/v1/node").1["counters"]["inbound_failures"]
                .as_u64()
                .unwrap_or(0)
                >= 2
        },
    );
    node.wait_until("the garbage gossip to be counted", Duration::from_secs(20), |n| {
        n.get("/v1/node").1["counters"]["gossip_malformed"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
    // Still serving.
    let (status, body) = node.get("/v1/node");
    assert_eq!(status, 200);
    assert_eq!(body["group"]["name"], "g");
    assert!(node.stop());
}
