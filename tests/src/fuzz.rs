//! Fuzz targets: every decoder that takes bytes from outside the node, each behind one function of bytes.
//!
//! The same functions run in two places:
//! - `fuzz/` (cargo-fuzz, libFuzzer): one binary per target, for long campaigns
//!   (`cargo fuzz run <target> --sanitizer none`; see `fuzz/README.md`);
//! - `tests/tests/fuzz_corpus.rs`: `cargo test` replays the committed corpus (`fuzz/corpus/<target>/`) and a few
//!   hundred seeded mutations of each entry through them.
//!
//! A target fails by panicking: a decoder must refuse any input with an error, and what it accepts must survive
//! its own encoder unchanged (checked where the format has one). [`seeds`] writes valid inputs for every target,
//! the start of the corpus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use futures::AsyncReadExt;
use lendmesh_node::group::admin::{create_group, invite_member};
use lendmesh_node::group::state::GroupState;
use lendmesh_node::roles::lender::OhttpKeys;
use lendmesh_node::store::{RecordKind, Store};
use lendmesh_protocol::attestation::{AcceptorConfig, AttestationAcceptor};
use lendmesh_protocol::blind_rsa::KeySize;
use lendmesh_protocol::redeemer::Redeemer;
use lendmesh_protocol::wire::{self, WireMessage};
use lendmesh_protocol::{PeerId, bhttp, scrub};

/// A fuzz target: bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` binary and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_frame", wire_frame),
    ("gossip", gossip),
    ("invite", invite),
    ("store_record", store_record),
    ("sealed_request", sealed_request),
    ("bhttp_request", bhttp_request),
    ("gateway_request", gateway_request),
    ("sealed_response", sealed_response),
    ("upstream_headers", upstream_headers),
    ("text_files", text_files),
];

/// A fixed group (admin, one member, a 2048-bit issuer key) and the lender key every target that needs one uses;
/// made once per process.
pub struct Fixture {
    /// The group as its member holds it.
    pub group: GroupState,
    /// The member.
    pub member: PeerId,
    /// The admin's signing key.
    pub admin_key: SigningKey,
    /// A lender's OHTTP key, from a fixed seed (so a committed sealed request opens).
    pub ohttp: OhttpKeys,
    _home: tempfile::TempDir,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").field("member", &self.member).finish()
    }
}

/// The seed of the fixture's OHTTP key.
pub const OHTTP_SEED: [u8; 32] = [7; 32];

/// The process's fixture.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let admin_key = SigningKey::from_bytes(&[1; 32]);
        let mut group = create_group(
            &store,
            &admin_key,
            "fuzz",
            KeySize::Rsa2048,
            3_600_000,
            60_000,
            100,
        )
        .unwrap();
        let member = PeerId::from_public_key(&SigningKey::from_bytes(&[2; 32]).verifying_key());
        let invite = invite_member(&admin_key, &mut group, member, 100, 1, vec![]).unwrap();
        let group = GroupState::from_invite(&invite, &member).unwrap();
        Fixture {
            group,
            member,
            admin_key,
            ohttp: OhttpKeys::derive(&OHTTP_SEED).unwrap(),
            _home: home,
        }
    })
}

fn roundtrip<T: WireMessage + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    let msg = wire::decode::<T>(bytes).ok()?;
    let again = wire::encode(&msg).expect("a decoded frame encodes");
    assert_eq!(
        wire::decode::<T>(&again).expect("a re-encoded frame decodes"),
        msg,
        "a frame changed through encode"
    );
    Some(msg)
}

/// Every frame type of the wire format (the first byte picks it; a length-prefixed frame when its low bit is set,
/// as the streamed protocols read them): decoded within its limit, and what decodes re-encodes to the same value.
pub fn wire_frame(data: &[u8]) {
    use lendmesh_protocol::wire::*;
    let [pick, rest @ ..] = data else { return };
    let body = if pick & 1 == 1 {
        let Some((prefix, frame)) = rest.split_first_chunk::<{ FRAME_PREFIX }>() else {
            return;
        };
        let Ok(len) = prefixed_len::<RelayFrame>(*prefix) else {
            return;
        };
        &frame[..len.min(frame.len())]
    } else {
        rest
    };
    match (pick >> 1) % 14 {
        0 => drop(roundtrip::<IssueRequest>(body)),
        1 => drop(roundtrip::<IssueResponse>(body)),
        2 => drop(roundtrip::<RelayRequest>(body)),
        3 => drop(roundtrip::<RelayResponse>(body)),
        4 => drop(roundtrip::<RelayFrame>(body)),
        5 => drop(roundtrip::<BorrowRequest>(body)),
        6 => drop(roundtrip::<BorrowResponse>(body)),
        7 => drop(roundtrip::<InnerBorrowRequest>(body)),
        8 => drop(roundtrip::<InnerBorrowResponse>(body)),
        9 => drop(roundtrip::<ClaimRequest>(body)),
        10 => drop(roundtrip::<ClaimResponse>(body)),
        11 => drop(roundtrip::<GossipMessage>(body)),
        12 => drop(roundtrip::<HttpRequest>(body)),
        _ => drop(roundtrip::<HttpResponse>(body)),
    }
}

/// A gossip message as the node handles one: decoded, then an attestation checked by the acceptor, a roster or an
/// epoch announcement checked and adopted by the group state.
pub fn gossip(data: &[u8]) {
    use lendmesh_protocol::wire::GossipMessage;
    let Some(msg) = roundtrip::<GossipMessage>(data) else {
        return;
    };
    let f = fixture();
    let now = lendmesh_node::now_ms();
    match msg {
        GossipMessage::Attestation(att) => {
            let mut acceptor = AttestationAcceptor::new(
                f.group.group_id,
                f.group.attestation_key.clone(),
                AcceptorConfig::default(),
            );
            let _ = acceptor.accept(&att, f.group.roster(), now);
        }
        GossipMessage::Roster(signed) => {
            let _ = f.group.clone().adopt_roster(signed);
        }
        GossipMessage::Epoch(signed) => {
            let _ = f.group.clone().adopt_epoch(*signed, now);
        }
    }
}

/// An invite file and a pre-shared key file (`join`, `group` commands): parsed, then the invite verified and turned
/// into the member's group state.
pub fn invite(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = lendmesh_protocol::group::PreSharedKey::from_swarm_key(text);
    let Ok(invite) = lendmesh_protocol::group::Invite::from_file_text(text) else {
        return;
    };
    let again = lendmesh_protocol::group::Invite::from_file_text(&invite.to_file_text())
        .expect("a parsed invite reads back");
    assert_eq!(again, invite, "an invite changed through its file text");
    if invite.verify(&invite.member).is_ok() {
        let _ = GroupState::from_invite(&invite, &invite.member);
    }
}

/// A record of the store as a damaged or hostile file would hold it (the first byte picks the table).
pub fn store_record(data: &[u8]) {
    let [pick, rest @ ..] = data else { return };
    let kind = RecordKind::ALL[*pick as usize % RecordKind::ALL.len()];
    let _ = kind.check(rest);
}

/// What a lender does with a sealed borrow: open the OHTTP envelope (chunked, RFC 9458 and its streaming draft)
/// with its key, decode the inner request, check the token against the group's key, decode the Binary HTTP request.
pub fn sealed_request(data: &[u8]) {
    let f = fixture();
    let Ok(plain) = futures::executor::block_on(f.ohttp.open_request(data)) else {
        return;
    };
    let Some(inner) = roundtrip::<lendmesh_protocol::wire::InnerBorrowRequest>(&plain) else {
        return;
    };
    let mut redeemer = Redeemer::new(f.member);
    redeemer.accept_book(&f.group.epochs, &Default::default());
    let digest = wire::request_digest(&inner.http_request);
    let _ = redeemer.check(&inner.spend, &digest, lendmesh_node::now_ms());
    bhttp_request(&inner.http_request);
}

/// A Binary HTTP request (RFC 9292, known length), as a lender reads one: what decodes re-encodes to the same value.
pub fn bhttp_request(data: &[u8]) {
    let Ok(req) = bhttp::decode_request(data, 1 << 20) else {
        return;
    };
    let again =
        bhttp::decode_request(&bhttp::encode_request(&req), 1 << 20).expect("an encoded request decodes");
    assert_eq!(again, req, "a request changed through Binary HTTP");
}

/// Header names and values, as the node passes them around.
type Headers = Vec<(String, Vec<u8>)>;

/// Splits `data` into a request line, header lines and a body (`\n\n` ends the head), as lossy as a client can be.
fn split_request(data: &[u8]) -> (String, Headers, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers = lines
        .filter_map(|l| {
            let i = l.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&l[..i]).trim().to_ascii_lowercase();
            Some((name, l[i + 1..].trim_ascii().to_vec()))
        })
        .collect();
    (path, headers, body)
}

/// What the gateway does with a client's request before it leaves the node: the headers that may leave, the
/// conversation header, what the request needs of an upstream (API, model, size), the conversation hint, and the
/// scrubbing of a borrowed request's body.
pub fn gateway_request(data: &[u8]) {
    let (path, headers, body) = split_request(data);
    let mut map = axum::http::HeaderMap::new();
    for (k, v) in &headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_bytes(v),
        ) {
            map.append(k, v);
        }
    }
    let _ = lendmesh_node::http::gateway::outbound_headers(&map);
    let _ = lendmesh_node::roles::sticky::conversation_from_headers(
        map.get_all(lendmesh_node::roles::sticky::CONVERSATION_HEADER)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let parsed = scrub::Body::parse(body);
    let _ = lendmesh_protocol::capability::Need::of(&path, &headers, &parsed);
    let family = scrub::ApiFamily::of(&path, &headers);
    let _ = scrub::conversation_hint(family, &headers, &parsed);
    let _ = scrub::borrowed_headers(family, &headers);
    let (scrubbed, _) = scrub::scrub_body(
        family,
        body,
        parsed,
        "0123456789abcdef0123456789abcdef",
        scrub::ScrubSettings::default(),
    );
    // Scrubbing is idempotent: a scrubbed body has nothing more to scrub.
    let (twice, _) = scrub::scrub_body(
        family,
        &scrubbed,
        scrub::Body::parse(&scrubbed),
        "0123456789abcdef0123456789abcdef",
        scrub::ScrubSettings::default(),
    );
    assert_eq!(twice, scrubbed, "scrubbing a scrubbed body changed it");
}

/// An upstream's response headers (rate-limit headers of every known provider, subscription windows).
pub fn upstream_headers(data: &[u8]) {
    let (_, headers, _) = split_request(data);
    let now = lendmesh_node::now_ms();
    let _ = lendmesh_node::upstream::parse_rate_limit(&headers, now);
    if let Some(sub) = lendmesh_protocol::subscription::Subscription::parse(&headers) {
        let _ = sub.left(None, now);
        let _ = sub.resets_at_ms(None, now);
    }
}

/// The node's other text files: the gateway keys file and the config file.
pub fn text_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = lendmesh_node::http::keys::parse(text);
    let _ = lendmesh_node::config::Config::from_toml(text);
}

/// What a borrower does with a lender's sealed answer: read the chunked OHTTP response (its length framing and
/// AEAD) to a request it sealed to the fixture's key.
pub fn sealed_response(data: &[u8]) {
    let f = fixture();
    futures::executor::block_on(async {
        let sealed = lendmesh_node::roles::borrowed::SealedRequest::seal(f.ohttp.encoded_config(), b"x")
            .await
            .expect("seal to the fixture's key");
        let Ok(mut reader) = sealed.open(futures::io::Cursor::new(data.to_vec())) else {
            return;
        };
        let mut plain = Vec::new();
        let _ = reader.read_to_end(&mut plain).await;
    });
}

/// A frame of `T` with its kind byte for [`wire_frame`] (`prefixed`: with the stream length prefix).
fn frame_seed<T: WireMessage>(kind: u8, msg: &T, prefixed: bool) -> Vec<u8> {
    let mut out = vec![(kind << 1) | u8::from(prefixed)];
    if prefixed {
        out.extend(wire::encode_prefixed(msg).unwrap());
    } else {
        out.extend(wire::encode(msg).unwrap());
    }
    out
}

fn sample_http() -> Vec<lendmesh_protocol::wire::HttpRequest> {
    let h = |k: &str, v: &str| (k.to_string(), v.as_bytes().to_vec());
    vec![
        lendmesh_protocol::wire::HttpRequest {
            method: "POST".into(),
            path_and_query: "/v1/chat/completions".into(),
            headers: vec![h("content-type", "application/json")],
            body: br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
                .to_vec(),
        },
        lendmesh_protocol::wire::HttpRequest {
            method: "GET".into(),
            path_and_query: "/v1/models?limit=5".into(),
            headers: vec![],
            body: vec![],
        },
    ]
}

/// A token spend that decodes (its signature is not the issuer's, so a lender refuses it).
fn sample_spend(f: &Fixture) -> lendmesh_protocol::token::TokenSpend {
    use lendmesh_protocol::token::{Token, TokenInput, TokenSpend};
    let key = &f.group.epochs.get(1).expect("epoch 1").key;
    TokenSpend {
        token: Token {
            input: TokenInput::new(1, key.key_id(), [9; 32]),
            signature: vec![0x5a; 256],
        },
        lender: f.member,
        request_digest: [3; 32],
        time_ms: 1_800_000_000_000,
        signature: [4; 64],
    }
}

/// Valid inputs for every target (the start of the corpus): (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use lendmesh_protocol::wire::*;
    let f = fixture();
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add =
        |target: &'static str, name: &str, bytes: Vec<u8>| out.push((target, format!("seed-{name}"), bytes));

    let claim = ClaimRequest::Claim(lendmesh_protocol::claims::Claim {
        token_hash: lendmesh_protocol::token::TokenHash([3; 32]),
        epoch: 1,
        lender: f.member,
        request_id: [4; 16],
        roster: [6; 32],
    });
    add("wire_frame", "claim", frame_seed(9, &claim, false));
    add("wire_frame", "claim-prefixed", frame_seed(9, &claim, true));
    let roster = GossipMessage::Roster(f.group.roster.clone());
    add("wire_frame", "gossip-roster", frame_seed(11, &roster, false));
    let epoch = f
        .group
        .invite_epoch(lendmesh_node::now_ms())
        .expect("an epoch")
        .clone();
    let epoch = GossipMessage::Epoch(Box::new(epoch));
    add("wire_frame", "gossip-epoch", frame_seed(11, &epoch, true));
    for (i, http) in sample_http().into_iter().enumerate() {
        add("wire_frame", &format!("http-{i}"), frame_seed(12, &http, false));
        add(
            "bhttp_request",
            &format!("request-{i}"),
            bhttp::encode_request(&http),
        );
    }
    let response = HttpResponse {
        status: 429,
        headers: vec![("retry-after".into(), b"3".to_vec())],
        body: b"{\"error\":\"rate limited\"}".to_vec(),
    };
    add("wire_frame", "http-response", frame_seed(13, &response, false));
    let inner = InnerBorrowRequest {
        request_id: [8; 16],
        spend: sample_spend(f),
        http_request: bhttp::encode_request(&sample_http()[0]),
    };
    add("wire_frame", "inner-borrow", frame_seed(7, &inner, true));
    let refused = InnerBorrowResponse::Refused {
        reason: BorrowRefusal::BadRequest("no".into()),
        retry_after_ms: Some(1000),
    };
    add("wire_frame", "inner-refused", frame_seed(8, &refused, false));

    add("gossip", "roster", wire::encode(&roster).unwrap());
    add("gossip", "epoch", wire::encode(&epoch).unwrap());

    let invite = lendmesh_node::group::admin::invite_member(
        &f.admin_key,
        &mut f.group.clone(),
        f.member,
        50,
        1,
        vec!["/ip4/127.0.0.1/tcp/4001".into()],
    );
    // The fixture's group is the member's copy: inviting needs the admin's, so an invite that fails is skipped.
    if let Ok(invite) = invite {
        add("invite", "invite", invite.to_file_text().into_bytes());
    }
    add("invite", "swarm-key", f.group.psk.to_swarm_key().into_bytes());

    let group = postcard::to_allocvec(&f.group).unwrap();
    add("store_record", "group", [vec![0], group].concat());
    let addrs = postcard::to_allocvec(&vec!["/ip4/127.0.0.1/tcp/4001".to_string()]).unwrap();
    add("store_record", "peer-addrs", [vec![4], addrs].concat());

    futures::executor::block_on(async {
        let plain = wire::encode(&inner).unwrap();
        let sealed = lendmesh_node::roles::borrowed::SealedRequest::seal(f.ohttp.encoded_config(), &plain)
            .await
            .unwrap();
        add("sealed_request", "inner-borrow", sealed.bytes.clone());
        let garbage =
            lendmesh_node::roles::borrowed::SealedRequest::seal(f.ohttp.encoded_config(), b"not a frame")
                .await
                .unwrap();
        add("sealed_request", "not-a-frame", garbage.bytes);
        // An answer sealed by this lender's key to another request: well framed, never opens.
        add("sealed_response", "framed", sealed.bytes[7..].to_vec());
    });

    let requests: [(&str, &str); 4] = [
        (
            "openai",
            "/v1/chat/completions\ncontent-type: application/json\nlendmesh-conversation: chat-42\n\n\
             {\"model\":\"gpt-4o-mini\",\"stream\":true,\"user\":\"alice@example.com\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        ),
        (
            "claude-code",
            "/v1/messages?beta=true\nanthropic-version: 2023-06-01\nx-claude-code-session-id: 0f1e2d3c\n\
             user-agent: claude-cli/2.0.0 (external, cli)\n\n\
             {\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\"metadata\":{\"user_id\":\"user_abc_account_def_session_123\"},\
             \"system\":[{\"type\":\"text\",\"text\":\"<env>\\nWorking directory: /home/alice/src\\nPlatform: linux\\n</env>\"}],\
             \"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}",
        ),
        ("models", "/v1/models\n\n"),
        (
            "not-json",
            "/v1/completions\ncontent-type: text/plain\n\nplain text",
        ),
    ];
    for (name, text) in requests {
        add("gateway_request", name, text.as_bytes().to_vec());
    }
    let headers: [(&str, &str); 3] = [
        (
            "openai",
            "\nx-ratelimit-limit-requests: 500\nx-ratelimit-remaining-requests: 499\nx-ratelimit-reset-requests: 1m3.5s\n\
             x-ratelimit-remaining-tokens: 1000\nx-ratelimit-reset-tokens: 250ms\nretry-after: 3\n",
        ),
        (
            "anthropic",
            "\nanthropic-ratelimit-requests-limit: 50\nanthropic-ratelimit-requests-remaining: 49\n\
             anthropic-ratelimit-requests-reset: 2026-11-30T23:00:00Z\n",
        ),
        (
            "subscription",
            "\nanthropic-ratelimit-unified-status: allowed\nanthropic-ratelimit-unified-5h-status: allowed\n\
             anthropic-ratelimit-unified-5h-utilization: 0.42\nanthropic-ratelimit-unified-5h-reset: 1796000000\n\
             anthropic-ratelimit-unified-7d-status: allowed_warning\nanthropic-ratelimit-unified-7d-utilization: 0.9\n",
        ),
    ];
    for (name, text) in headers {
        add("upstream_headers", name, text.as_bytes().to_vec());
    }
    add(
        "text_files",
        "keys",
        b"# gateway keys\nlaptop lmk_0123456789abcdef0123456789abcdef\n".to_vec(),
    );
    add(
        "text_files",
        "config",
        lendmesh_node::config::Config::default().to_toml().into_bytes(),
    );
    out
}
