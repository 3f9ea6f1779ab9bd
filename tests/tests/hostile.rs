//! Issue 19: no member can take the group down. A hostile member — on the roster, holding the network key and the
//! attestation key — misbehaves one way at a time and then all ways at once, while an honest member borrows through
//! its gateway:
//!
//! 1. floods gossip: valid attestations with jumping `seq`, replays of one, oversized messages;
//! 2. opens thousands of relay streams and dials a node again and again;
//! 3. sends issue requests over its quota as fast as it can;
//! 4. spams claims for token hashes it never held;
//! 5. offers itself as a relay and reads a byte a second, never forwarding;
//! 6. attests headroom as a lender and answers every borrow with garbage.
//!
//! For each: every honest borrow is served, the honest borrow p99 stays within a stated bound of the run without
//! the hostile member, the honest nodes' memory stays bounded, and the hostile member is throttled, disconnected or
//! avoided — visible in `/metrics` and `lendmesh peers` under its short id. Finally `group remove` cuts it off live.
//!
//! Short mode (this test, in `.ci/run`): 24 honest borrows per phase, 3 s of each behaviour. Longer runs for the
//! README: `LENDMESH_HOSTILE_BORROWS=200 LENDMESH_HOSTILE_SECS=15 cargo test -p lendmesh-tests --test hostile --
//! --nocapture` prints the table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use lendmesh_protocol::PeerId;
use lendmesh_protocol::attestation::{Attestation, AttestationBody, HeadroomBucket};
use lendmesh_protocol::claims::{self, Claim};
use lendmesh_protocol::group::Invite;
use lendmesh_protocol::token::TokenHash;
use lendmesh_protocol::wallet::Wallet;
use lendmesh_protocol::wire::{self, ClaimRequest, GossipMessage};
use lendmesh_tests::rogue::{Rogue, RogueBehaviourEvent};
use lendmesh_tests::*;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use tokio::sync::mpsc;

const RELAY: StreamProtocol = StreamProtocol::new("/lendmesh/relay/2");
const BORROW: StreamProtocol = StreamProtocol::new("/lendmesh/borrow/2");

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the hostile member's swarm task is asked to do.
enum Cmd {
    Publish(Vec<u8>),
    Issue(libp2p::PeerId, Vec<u8>),
    Claim(libp2p::PeerId, Vec<u8>),
    Dial(Multiaddr),
}

/// Counts of what happened to the hostile member.
#[derive(Default)]
struct Seen {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    publish_refused: AtomicU64,
}

/// The hostile member: its swarm runs in a task that takes commands; streams go through `control`.
struct Hostile {
    tx: mpsc::Sender<Cmd>,
    control: libp2p_stream::Control,
    seen: Arc<Seen>,
    key: ed25519_dalek::SigningKey,
    id: PeerId,
    invite: Invite,
    seq: u64,
}

impl Hostile {
    fn spawn(
        rt: &tokio::runtime::Runtime,
        mut rogue: Rogue,
        key: ed25519_dalek::SigningKey,
        invite: Invite,
    ) -> Hostile {
        let (tx, mut rx) = mpsc::channel::<Cmd>(64);
        let seen = Arc::new(Seen::default());
        let control = rogue.swarm.behaviour().streams.new_control();
        let topic = libp2p::gossipsub::IdentTopic::new(format!("/lendmesh/{}/v1", invite.group_id));
        rogue.swarm.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
        let s = seen.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        s.sent.fetch_add(1, Ordering::Relaxed);
                        let b = rogue.swarm.behaviour_mut();
                        match cmd {
                            Cmd::Publish(data) => {
                                if b.gossipsub.publish(topic.clone(), data).is_err() {
                                    s.publish_refused.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Cmd::Issue(peer, bytes) => {
                                b.issue.send_request(&peer, bytes);
                            }
                            Cmd::Claim(peer, bytes) => {
                                b.claim.send_request(&peer, bytes);
                            }
                            Cmd::Dial(addr) => {
                                let _ = rogue.swarm.dial(
                                    libp2p::swarm::dial_opts::DialOpts::unknown_peer_id().address(addr).build(),
                                );
                            }
                        }
                    }
                    event = rogue.swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(RogueBehaviourEvent::Issue(e) | RogueBehaviourEvent::Claim(e)) => match e {
                            libp2p::request_response::Event::Message { .. } => {
                                s.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            libp2p::request_response::Event::OutboundFailure { .. } => {
                                s.failed.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        },
                        SwarmEvent::ConnectionClosed { .. } => {
                            s.closed.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    },
                }
            }
        });
        let id = PeerId::from_public_key(&key.verifying_key());
        Hostile {
            tx,
            control,
            seen,
            key,
            id,
            invite,
            seq: 1,
        }
    }

    /// A valid attestation from the hostile member (`seq` as given), made now.
    fn attestation(&self, seq: u64, headroom: HeadroomBucket, key_config: Vec<u8>) -> Vec<u8> {
        attestation(&self.key, &self.invite, seq, headroom, key_config)
    }
}

/// A valid attestation by `key`'s member of `invite`'s group, made now.
fn attestation(
    key: &ed25519_dalek::SigningKey,
    invite: &Invite,
    seq: u64,
    headroom: HeadroomBucket,
    key_config: Vec<u8>,
) -> Vec<u8> {
    {
        let now = lendmesh_node::now_ms();
        let body = AttestationBody {
            group_id: invite.group_id,
            peer_id: PeerId::from_public_key(&key.verifying_key()),
            seq,
            issued_at_ms: now,
            headroom,
            window_resets_at_ms: now + 60_000,
            ohttp_key_config: key_config,
            epoch_keys: vec![],
            capabilities: vec![],
        };
        wire::encode(&GossipMessage::Attestation(
            Attestation::create(body, &invite.attestation_key, key).unwrap(),
        ))
        .unwrap()
    }
}

/// One honest node's resident memory, in KiB.
fn rss_kib(n: &RunningNode) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", n.pid()))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix(" kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

fn throttled(n: &RunningNode, peer: &str, surface: &str) -> u64 {
    metric_value(
        n,
        &format!("lendmesh_peer_throttled_total{{peer=\"{peer}\",surface=\"{surface}\"}} "),
    )
}

fn bans(n: &RunningNode, peer: &str) -> u64 {
    metric_value(n, &format!("lendmesh_peer_bans_total{{peer=\"{peer}\"}} "))
}

/// `n` honest borrows through `b`'s gateway, one after the other, spread over `over` (each starts on its slot, or
/// when the one before ends): latencies in ms (sorted) and failures. Each is a new conversation (a random first
/// message), so none is steered to the lender of an earlier one.
fn honest_borrows(b: &RunningNode, n: u64, over: Duration) -> (Vec<f64>, Vec<String>) {
    let mut lat = Vec::new();
    let mut failed = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let slot = start + over.mul_f64(i as f64 / n as f64);
        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let (status, body) = gateway_request(
            &b.gateway,
            "POST",
            "/v1/chat/completions",
            &format!(
                "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{i} {:x}\"}}]}}",
                rand::random::<u64>()
            ),
        );
        if status == 200 {
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            failed.push(format!("{status} {body}"));
        }
    }
    lat.sort_by(f64::total_cmp);
    (lat, failed)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    phase: &'static str,
    ok: usize,
    failed: usize,
    p50: f64,
    p99: f64,
    rss_mib: f64,
    fate: String,
}

#[test]
fn a_hostile_member_cannot_take_the_group_down_and_is_cut_off_live() {
    let borrows = env_num("LENDMESH_HOSTILE_BORROWS", 24);
    let secs = env_num("LENDMESH_HOSTILE_SECS", 3);

    // Admin (issuer, relay), two lenders, one borrower (no capacity of its own), and the hostile member.
    // Quota for every honest borrow of every phase, and the tokens a garbage lender burns.
    let quota = u32::try_from(borrows * 10 + 200).unwrap();
    let TestGroup { admin, homes, .. } = TestGroup::new("hostile", 3, quota);
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let h_libp2p = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
    let h_id = h_libp2p.public().to_peer_id().to_string();
    let invite = lendmesh_tests::spend::invite_key(admin.path(), &h_libp2p, 10);
    // Bans last 3 s here (60 s by default), so each phase starts with the hostile member back in.
    for home in std::iter::once(admin.path()).chain(homes.iter().map(|h| h.path())) {
        std::fs::write(home.join("config.toml"), "[limits]\nban_ms = 3000\n").unwrap();
    }
    let common = ["--attestation-period", "1s"];
    let (mut a, mut lenders) = borrower_and_lenders(admin.path(), &homes[..2], &common, 100_000);
    let mut b = RunningNode::start(
        homes[2].path(),
        &[
            &common[..],
            &[
                "--mock-capacity",
                "0",
                "--bootstrap",
                &a.p2p_addr,
                "--low-water",
                "40",
                "--batch",
                "64",
            ],
        ]
        .concat(),
    );
    wait_ready(&mut b, 3);
    wait_ready(&mut a, 3);
    let (l1, l2) = (lenders.remove(0), lenders.remove(0));
    let h_short = invite.member.short();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rogue = Rogue::new(h_libp2p, *invite.psk.as_bytes());
    let (a_peer, b_peer, l1_peer) = rt.block_on(async {
        let a_peer = rogue.connect(a.p2p_addr.parse().unwrap()).await;
        let b_peer = rogue.connect(b.p2p_addr.parse().unwrap()).await;
        let l1_peer = rogue.connect(l1.p2p_addr.parse().unwrap()).await;
        rogue.connect(l2.p2p_addr.parse().unwrap()).await;
        (a_peer, b_peer, l1_peer)
    });
    let mut h = Hostile::spawn(&rt, rogue, key, invite.clone());
    b.wait_until("the hostile member connected", Duration::from_secs(30), |n| {
        n.get("/v1/peers").1["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["short_id"] == h_short.as_str() && p["connected"] == true)
    });

    let honest = [&a, &b, &l1, &l2];
    let honest_addrs: Vec<Multiaddr> = honest.iter().map(|n| n.p2p_addr.parse().unwrap()).collect();
    let max_rss = || honest.iter().map(|n| rss_kib(n)).max().unwrap_or(0) as f64 / 1024.0;
    let connected_to = |n: &RunningNode| {
        n.get("/v1/peers").1["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["short_id"] == h_short.as_str() && p["connected"] == true)
    };
    // A member that was banned in the phase before comes back once its ban (3 s here) is over.
    let rejoin = |h: &mut Hostile, name: &str| {
        let back = Instant::now() + Duration::from_secs(15);
        while !honest.iter().all(|n| connected_to(n)) {
            assert!(
                Instant::now() < back,
                "{name}: the hostile member could not rejoin"
            );
            rt.block_on(async {
                for (n, addr) in honest.iter().zip(&honest_addrs) {
                    if !connected_to(n) {
                        let _ = h.tx.send(Cmd::Dial(addr.clone())).await;
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let mut rows = Vec::new();
    let mut phase = |name: &'static str,
                     h: &mut Hostile,
                     hostile: &dyn Fn(&mut Hostile, Instant) -> Vec<tokio::task::JoinHandle<()>>,
                     fate: &dyn Fn() -> String| {
        rejoin(h, name);
        let until = Instant::now() + Duration::from_secs(secs);
        let tasks = hostile(h, until);
        let (lat, failed) = honest_borrows(&b, borrows, Duration::from_secs(secs));
        for t in tasks {
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(secs + 30), t).await;
            });
        }
        let row = Row {
            phase: name,
            ok: lat.len(),
            failed: failed.len(),
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            rss_mib: max_rss(),
            fate: fate(),
        };
        eprintln!(
            "{name}: {} ok, {} failed {:?}, p50 {:.1} ms, p99 {:.1} ms, max RSS {:.1} MiB; {}",
            row.ok,
            row.failed,
            failed.iter().take(3).collect::<Vec<_>>(),
            row.p50,
            row.p99,
            row.rss_mib,
            row.fate
        );
        rows.push(row);
        if std::env::var("LENDMESH_HOSTILE_DEBUG").is_ok() {
            eprintln!(
                "  ROGUE sent {} answered {} failed {} closed {} publish refused {}",
                h.seen.sent.load(Ordering::Relaxed),
                h.seen.answered.load(Ordering::Relaxed),
                h.seen.failed.load(Ordering::Relaxed),
                h.seen.closed.load(Ordering::Relaxed),
                h.seen.publish_refused.load(Ordering::Relaxed)
            );
            for p in b.get("/v1/peers").1["peers"].as_array().unwrap() {
                if p["short_id"] == h_short.as_str() {
                    eprintln!(
                        "  H at B: healthy {} outcomes {} att {}",
                        p["healthy"], p["outcomes"], p["attestation"]
                    );
                }
            }
            eprintln!(
                "RSS KiB: a {} b {} l1 {} l2 {}",
                rss_kib(&a),
                rss_kib(&b),
                rss_kib(&l1),
                rss_kib(&l2)
            );
            let log = b.plain_log();
            let lines: Vec<&str> = log.lines().collect();
            let mut counts = std::collections::BTreeMap::new();
            for l in &lines {
                let key: String = l.split_whitespace().skip(2).take(6).collect::<Vec<_>>().join(" ");
                *counts.entry(key).or_insert(0) += 1;
            }
            for (k, n) in counts.iter().filter(|(_, n)| **n > 3) {
                eprintln!("  LOG {n}× {k}");
            }
            if name == "garbage lender" {
                for l in lines
                    .iter()
                    .filter(|l| l.contains("borrow attempt"))
                    .skip(20)
                    .take(30)
                {
                    eprintln!("  HLOG {l}");
                }
            }
            for (i, l) in lines.iter().enumerate() {
                if l.contains("panicked") {
                    for m in &lines[i..(i + 12).min(lines.len())] {
                        eprintln!("  PANIC {m}");
                    }
                    break;
                }
            }
            for l in http_get_raw(&b.api, "/metrics", None).1.lines() {
                if (l.contains("dropped")
                    || l.contains("inbound_failures")
                    || l.contains("relays")
                    || l.contains("lends_in_flight")
                    || l.contains("cancelled"))
                    && !l.starts_with('#')
                {
                    eprintln!("  {l}");
                }
            }
            for p in b.get("/v1/peers").1["peers"].as_array().unwrap() {
                eprintln!(
                    "  {} connected {} healthy {} outcomes {} limits {}",
                    p["short_id"], p["connected"], p["healthy"], p["outcomes"], p["limits"]
                );
            }
        }
    };

    // Baseline: the hostile member connected and quiet.

    // 1. Gossip flood: valid attestations with jumping seq, one replayed, and oversized messages.
    let flood_gossip = |h: &mut Hostile, until: Instant| -> Vec<tokio::task::JoinHandle<()>> {
        let first = h.attestation(h.seq, HeadroomBucket::None, vec![]);
        let mut msgs = Vec::new();
        for i in 0..3000u64 {
            h.seq += 1000;
            msgs.push(match i % 3 {
                0 => h.attestation(h.seq, HeadroomBucket::None, vec![]),
                1 => first.clone(),
                _ => vec![0xAB; 512 * 1024],
            });
        }
        let tx = h.tx.clone();
        // 200 a second, a third of the time each: valid attestations with jumping seq, a replay of one, oversized
        // messages (faster, most are dropped by the hostile member's own gossipsub queues before they leave).
        let third = Duration::from_secs(secs).as_secs_f64() / 3.0;
        let started = Instant::now();
        vec![rt.spawn(async move {
            let mut kinds: Vec<std::collections::VecDeque<Vec<u8>>> = vec![Default::default(); 3];
            for (i, m) in msgs.into_iter().enumerate() {
                kinds[i % 3].push_back(m);
            }
            while Instant::now() < until {
                let kind = ((started.elapsed().as_secs_f64() / third) as usize).min(2);
                let Some(m) = kinds[kind].pop_front() else { break };
                if tx.send(Cmd::Publish(m)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })]
    };

    // 2. Thousands of relay streams at the borrower's node, and dials again and again.
    let b_addr: Multiaddr = b.p2p_addr.parse().unwrap();
    let flood_streams = |h: &mut Hostile, until: Instant| -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut control = h.control.clone();
            tasks.push(rt.spawn(async move {
                let mut opened = 0;
                while Instant::now() < until && opened < 500 {
                    opened += 1;
                    if let Ok(Ok(mut s)) =
                        tokio::time::timeout(Duration::from_secs(2), control.open_stream(b_peer, RELAY)).await
                    {
                        let _ = s.write_all(&[0, 0, 0, 4, 1, 2, 3, 4]).await;
                        // Left open: each costs the node a stream until it times out.
                        tokio::spawn(async move {
                            let mut buf = [0u8; 64];
                            let _ = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await;
                        });
                    }
                }
            }));
        }
        let tx = h.tx.clone();
        let addr = b_addr.clone();
        tasks.push(rt.spawn(async move {
            for _ in 0..50 {
                if Instant::now() > until || tx.send(Cmd::Dial(addr.clone())).await.is_err() {
                    break;
                }
            }
        }));
        tasks
    };

    // 3. Issue requests over its quota (10 tokens), as fast as it can.
    let issuer_key = invite.epoch.announcement.issuer_key().unwrap();
    let epoch = invite.epoch.announcement.epoch;
    // Prepared ahead (blinding costs time): 20 different requests, sent over and over.
    let issue_requests: Vec<Vec<u8>> = (0..20)
        .map(|_| {
            let (req, _) = Wallet::prepare_batch(&issuer_key, epoch, 8, &mut rand::rngs::OsRng).unwrap();
            wire::encode(&req).unwrap()
        })
        .collect();
    let flood_issue = |h: &mut Hostile, until: Instant| -> Vec<tokio::task::JoinHandle<()>> {
        let reqs = issue_requests.clone();
        let tx = h.tx.clone();
        vec![rt.spawn(async move {
            for r in reqs.iter().cycle().take(2000) {
                if Instant::now() > until || tx.send(Cmd::Issue(a_peer, r.clone())).await.is_err() {
                    break;
                }
            }
        })]
    };
    // 4. Claims for token hashes it never held, at a lender (a replica).
    let roster = invite.epoch.announcement.frozen_roster();
    let flood_claims = |h: &mut Hostile, until: Instant| -> Vec<tokio::task::JoinHandle<()>> {
        let (id, tx) = (h.id, h.tx.clone());
        let digest = claims::roster_digest(&roster);
        vec![rt.spawn(async move {
            for i in 0..20_000u32 {
                let claim = Claim {
                    token_hash: TokenHash(rand::random()),
                    epoch,
                    lender: id,
                    request_id: [(i % 256) as u8; 16],
                    roster: digest,
                };
                let bytes = wire::encode(&ClaimRequest::Claim(claim)).unwrap();
                if Instant::now() > until || tx.send(Cmd::Claim(l1_peer, bytes)).await.is_err() {
                    break;
                }
            }
        })]
    };

    // 5. A relay that reads a byte a second and never forwards.
    let slow_relay = |h: &mut Hostile, until: Instant| -> Vec<tokio::task::JoinHandle<()>> {
        let mut control = h.control.clone();
        vec![rt.spawn(async move {
            let Ok(mut incoming) = control.accept(RELAY) else {
                return;
            };
            let _ = tokio::time::timeout(until.saturating_duration_since(Instant::now()), async {
                while let Some((_, mut s)) = incoming.next().await {
                    tokio::spawn(async move {
                        let mut byte = [0u8; 1];
                        while s.read(&mut byte).await.is_ok_and(|n| n == 1) {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    });
                }
            })
            .await;
        })]
    };
    let relay_failures = |n: &RunningNode| -> u64 {
        n.get("/v1/peers").1["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["short_id"] == h_short.as_str())
            .map_or(0, |p| p["outcomes"]["relay_failed"].as_u64().unwrap_or(0))
    };

    // 6. A lender that attests headroom and answers every borrow with garbage.
    let keys = lendmesh_node::roles::lender::OhttpKeys::generate().unwrap();
    let key_config = keys.encoded_config().to_vec();
    let garbage_lender = |h: &mut Hostile, until: Instant| -> Vec<tokio::task::JoinHandle<()>> {
        let mut control = h.control.clone();
        let mut tasks = vec![rt.spawn(async move {
            let Ok(mut incoming) = control.accept(BORROW) else {
                return;
            };
            let _ = tokio::time::timeout(until.saturating_duration_since(Instant::now()), async {
                while let Some((_, mut s)) = incoming.next().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(&[0, 0, 0, 16]).await;
                        let _ = s.write_all(&[0x5A; 16]).await;
                        let _ = s.close().await;
                    });
                }
            })
            .await;
        })];
        // Fresh "high" attestations twice a second (as often as the gossip limit allows): fresher than the honest
        // lenders', so the borrower's lender choice picks it often.
        let (tx, key, invite, kc) = (h.tx.clone(), h.key.clone(), h.invite.clone(), key_config.clone());
        let first_seq = h.seq + 1;
        h.seq += 1_000;
        tasks.push(rt.spawn(async move {
            let mut seq = first_seq;
            while Instant::now() < until {
                let a = attestation(&key, &invite, seq, HeadroomBucket::High, kc.clone());
                seq += 1;
                if tx.send(Cmd::Publish(a)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
        tasks
    };
    let lender_failures = |n: &RunningNode| -> u64 {
        n.get("/v1/peers").1["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["short_id"] == h_short.as_str())
            .map_or(0, |p| p["outcomes"]["lender_failed"].as_u64().unwrap_or(0))
    };

    // Everything at once.
    let all = |h: &mut Hostile, until: Instant| -> Vec<tokio::task::JoinHandle<()>> {
        let mut t = flood_gossip(h, until);
        t.extend(flood_streams(h, until));
        t.extend(flood_issue(h, until));
        t.extend(flood_claims(h, until));
        t.extend(slow_relay(h, until));
        t.extend(garbage_lender(h, until));
        t
    };

    // The phases, in this order: those that need the hostile member trusted as a relay or lender come first (a
    // ban, or the graylist its gossip flood earns it, keeps it out of routing), the floods after.
    phase("none (baseline)", &mut h, &|_, _| vec![], &|| {
        "connected, quiet".into()
    });
    phase("garbage lender", &mut h, &garbage_lender, &|| {
        format!(
            "B's borrows sent to it failed {} times (each lost a token); after two in a row it is left out for 60 s",
            lender_failures(&b)
        )
    });
    phase("slow relay", &mut h, &slow_relay, &|| {
        format!(
            "B's borrows through it failed {} times (tokens kept); each time it is left out as a relay for 10 s",
            relay_failures(&b)
        )
    });
    phase("gossip flood", &mut h, &flood_gossip, &|| {
        format!(
            "B throttled {} of its gossip, banned {}×",
            throttled(&b, &h_short, "gossip"),
            bans(&b, &h_short)
        )
    });
    phase("issue over quota", &mut h, &flood_issue, &|| {
        format!(
            "the issuer throttled {} requests, banned {}×",
            throttled(&a, &h_short, "issue"),
            bans(&a, &h_short)
        )
    });
    phase("claim spam", &mut h, &flood_claims, &|| {
        format!(
            "the lender throttled {} claims (more were refused as streams over the 32 a connection may hold), \
             banned {}×",
            throttled(&l1, &h_short, "claim"),
            bans(&l1, &h_short)
        )
    });
    phase("streams and connections", &mut h, &flood_streams, &|| {
        format!(
            "B throttled {} of its relay streams, banned {}×",
            throttled(&b, &h_short, "relay"),
            bans(&b, &h_short)
        )
    });
    phase("all at once", &mut h, &all, &|| {
        format!(
            "throttled: gossip {} relay {} at B, issue {} at the issuer, claim {} at a lender",
            throttled(&b, &h_short, "gossip"),
            throttled(&b, &h_short, "relay"),
            throttled(&a, &h_short, "issue"),
            throttled(&l1, &h_short, "claim"),
        )
    });

    eprintln!(
        "\n| hostile behaviour | honest borrows served | p50 ms | p99 ms | max honest RSS MiB | the hostile member |"
    );
    eprintln!("|---|---|---|---|---|---|");
    for r in &rows {
        eprintln!(
            "| {} | {} of {} | {:.1} | {:.1} | {:.1} | {} |",
            r.phase,
            r.ok,
            r.ok + r.failed,
            r.p50,
            r.p99,
            r.rss_mib,
            r.fate
        );
    }
    let base = &rows[0];
    // The stated bounds: every honest borrow served; p99 at most 4× the baseline's plus 2.5 s (one relay-ack
    // timeout of 2 s and a retry); the largest honest node under 256 MiB.
    for r in &rows {
        assert_eq!(r.failed, 0, "{}: honest borrows failed", r.phase);
        assert!(
            r.p99 <= base.p99 * 4.0 + 2_500.0,
            "{}: honest p99 {:.1} ms against {:.1} ms without the hostile member",
            r.phase,
            r.p99,
            base.p99
        );
        assert!(
            r.rss_mib < 256.0,
            "{}: an honest node holds {:.1} MiB",
            r.phase,
            r.rss_mib
        );
    }
    // The hostile member was throttled on every surface it flooded, and banned by the issuer.
    assert!(
        throttled(&b, &h_short, "gossip") > 0,
        "gossip flood not throttled"
    );
    assert!(throttled(&b, &h_short, "relay") > 0, "stream flood not throttled");
    assert!(
        throttled(&a, &h_short, "issue") > 0 && bans(&a, &h_short) > 0,
        "issue flood not cut off"
    );
    assert!(throttled(&l1, &h_short, "claim") > 0, "claim spam not throttled");
    assert!(
        relay_failures(&b) > 0,
        "the slow relay was never tried: the phase tested nothing"
    );
    assert!(
        lender_failures(&b) > 0,
        "the garbage lender was never tried: the phase tested nothing"
    );
    // No honest member was ever throttled anywhere — the admin's republished roster and epochs included.
    for n in honest {
        for line in http_get_raw(&n.api, "/metrics", None).1.lines() {
            if let Some(rest) = line.strip_prefix("lendmesh_peer_throttled_total{peer=\"")
                && !rest.starts_with(h_short.as_str())
            {
                assert!(line.ends_with(" 0"), "an honest member was throttled: {line}");
            }
        }
    }
    // `lendmesh peers` names it.
    let table = cli_ok(
        b.home.as_path(),
        &["peers", "--api", b.api.trim_start_matches("http://")],
    );
    let line = table
        .lines()
        .find(|l| l.starts_with(h_short.as_str()))
        .unwrap_or_else(|| panic!("{h_short} missing from:\n{table}"));
    assert!(line.contains("throttled"), "{line}");

    // `group remove` cuts it off live: every honest node closes its connections and refuses new ones.
    rejoin(&mut h, "removal");
    let closed_before = h.seen.closed.load(Ordering::Relaxed);
    cli_ok(admin.path(), &["group", "remove", &h_id]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let still = honest.iter().any(|n| {
            n.get("/v1/peers").1["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["short_id"] == h_short.as_str() && p["connected"] == true)
        });
        if !still {
            break;
        }
        assert!(Instant::now() < deadline, "the removed member is still connected");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(h.seen.closed.load(Ordering::Relaxed) > closed_before);
    rt.block_on(async {
        let _ = h.tx.send(Cmd::Dial(b.p2p_addr.parse().unwrap())).await;
        let _ = h.tx.send(Cmd::Issue(a_peer, vec![1, 2, 3])).await;
    });
    let (lat, failed) = honest_borrows(&b, 5, Duration::from_secs(1));
    assert!(failed.is_empty() && lat.len() == 5, "{failed:?}");
    assert!(
        honest.iter().all(|n| !connected_to(n)),
        "the removed member got back in"
    );
    eprintln!(
        "hostile member: {} commands sent, {} answered, {} failed, {} connections closed, {} publishes refused",
        h.seen.sent.load(Ordering::Relaxed),
        h.seen.answered.load(Ordering::Relaxed),
        h.seen.failed.load(Ordering::Relaxed),
        h.seen.closed.load(Ordering::Relaxed),
        h.seen.publish_refused.load(Ordering::Relaxed),
    );
    drop(h);
    for n in [b, l1, l2, a] {
        assert!(n.stop());
    }
}
