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
    let rogue_key_bytes = [0x5a_u8; 32];
    let key = libp2p::identity::Keypair::ed25519_from_bytes(rogue_key_bytes).unwrap();
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
        let mut rogue = Rogue::new(key, psk);
        let peer = rogue.connect(addr).await;
        for protocol in lendmesh_tests::rogue::PROTOCOLS {
            // Over the protocol's limit (64 KiB for issue, 256 B for claim, 8 MiB + 16 KiB for relay and borrow):
            // the stream fails, nothing is decoded.
            let size = if protocol.contains("relay") || protocol.contains("borrow") {
                9 << 20
            } else {
                1 << 20
            };
            let result = rogue.raw_request(protocol, peer, vec![0xAB; size]).await;
            assert!(
                result.is_err() || result.as_ref().is_ok_and(|r| r.is_empty()),
                "{protocol}: oversized frame answered: {result:?}"
            );
            // Garbage that fits the limit is refused too.
            let result = rogue
                .raw_request(protocol, peer, vec![1, 1, 0xff, 0xff, 0xff])
                .await;
            assert!(
                result.is_err() || result.as_ref().is_ok_and(|r| r.is_empty()),
                "{protocol}: garbage answered: {result:?}"
            );
        }
        // Garbage gossip on the group topic.
        rogue
            .publish_when_ready(&topic, peer, b"not a lendmesh message".to_vec())
            .await;
        // A well-formed attestation tagged with the wrong group key (a forger without the key).
        let forged = forged_attestation(&rogue_key_bytes, parsed.group_id);
        rogue.publish_when_ready(&topic, peer, forged).await;
    });
    let mut node = node;
    let counter = |n: &RunningNode, name: &str| n.get("/v1/node").1["counters"][name].as_u64().unwrap_or(0);
    node.wait_until(
        "the oversized and garbage frames to be counted",
        Duration::from_secs(20),
        |n| counter(n, "inbound_failures") >= 8,
    );
    node.wait_until("the garbage gossip to be counted", Duration::from_secs(20), |n| {
        counter(n, "gossip_malformed") >= 1
    });
    node.wait_until(
        "the forged attestation to be rejected",
        Duration::from_secs(20),
        |n| counter(n, "attestations_rejected") >= 1,
    );
    // Still serving.
    let (status, body) = node.get("/v1/node");
    assert_eq!(status, 200);
    assert_eq!(body["group"]["name"], "g");
    assert!(node.stop());
}

fn forged_attestation(seed: &[u8; 32], group: lendmesh_protocol::GroupId) -> Vec<u8> {
    use lendmesh_protocol::attestation::{Attestation, AttestationBody, AttestationKey, HeadroomBucket};
    let key = ed25519_dalek::SigningKey::from_bytes(seed);
    let body = AttestationBody {
        group_id: group,
        peer_id: lendmesh_protocol::PeerId::from_public_key(&key.verifying_key()),
        seq: 1,
        issued_at_ms: lendmesh_node::now_ms(),
        headroom: HeadroomBucket::High,
        window_resets_at_ms: lendmesh_node::now_ms() + 60_000,
        ohttp_key_config: vec![],
        epoch_keys: vec![],
    };
    let att = Attestation::create(body, &AttestationKey::from_bytes([9; 32]), &key).unwrap();
    lendmesh_protocol::wire::encode(&lendmesh_protocol::wire::GossipMessage::Attestation(att)).unwrap()
}
