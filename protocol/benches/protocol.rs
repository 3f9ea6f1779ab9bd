//! Criterion benchmarks of the protocol's hot operations: blind-signature steps at 2048 and 3072 bits, both
//! verifiers, attestation sign/verify, wire encode/decode. `cargo bench -p lendmesh-protocol --bench protocol`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use lendmesh_protocol::attestation::{
    AcceptorConfig, Attestation, AttestationAcceptor, AttestationBody, AttestationKey, HeadroomBucket,
};
use lendmesh_protocol::group::{Roster, RosterEntry};
use lendmesh_protocol::token::{SpendSecret, Token, TokenInput, WalletToken};
use lendmesh_protocol::wallet::TOKEN_VARIANT;
use lendmesh_protocol::wire::{self, InnerBorrowRequest, IssueRequest};
use lendmesh_protocol::{GroupId, PeerId, test_keys};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::hint::black_box;

fn blind_rsa(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for (bits, sk) in [(2048, test_keys::rsa_2048()), (3072, test_keys::rsa_3072())] {
        let pk = sk.public_key().clone();
        let msg = TokenInput::new(1, pk.key_id(), [7; 32]).to_bytes();
        let (blinded, inv) = pk.blind(TOKEN_VARIANT, &msg, &mut rng).unwrap();
        let blind_sig = sk.blind_sign(&blinded, &mut rng).unwrap();
        let sig = pk.finalize(TOKEN_VARIANT, &msg, &blind_sig, &inv).unwrap();
        let mut g = c.benchmark_group(format!("rsa{bits}"));
        g.bench_function("blind", |b| {
            b.iter(|| pk.blind(TOKEN_VARIANT, black_box(&msg), &mut rng).unwrap())
        });
        g.bench_function("blind_sign", |b| {
            b.iter(|| sk.blind_sign(black_box(&blinded), &mut rng).unwrap())
        });
        g.bench_function("finalize", |b| {
            b.iter(|| {
                pk.finalize(TOKEN_VARIANT, black_box(&msg), &blind_sig, &inv)
                    .unwrap()
            })
        });
        g.bench_function("verify_ring", |b| {
            b.iter(|| pk.verify_ring(black_box(&msg), &sig).unwrap())
        });
        g.bench_function("verify_rsa_crate", |b| {
            b.iter(|| pk.verify_rsa_crate(TOKEN_VARIANT, black_box(&msg), &sig).unwrap())
        });
        g.finish();
    }
}

fn attestation(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[3; 32]);
    let peer = PeerId::from_public_key(&key.verifying_key());
    let group = GroupId([1; 16]);
    let akey = AttestationKey::from_bytes([9; 32]);
    let roster = Roster {
        group_id: group,
        version: 1,
        admin: peer,
        members: vec![RosterEntry {
            peer,
            quota_per_epoch: 1,
            expires_at_ms: u64::MAX,
        }],
        removed: vec![],
    };
    let body = |seq| AttestationBody {
        group_id: group,
        peer_id: peer,
        seq,
        issued_at_ms: 1_000_000,
        headroom: HeadroomBucket::High,
        window_resets_at_ms: 1_060_000,
        ohttp_key_config: vec![0; 41],
        epoch_keys: vec![],
        capabilities: vec![],
    };
    let mut g = c.benchmark_group("attestation");
    g.bench_function("sign", |b| {
        b.iter(|| Attestation::create(body(1), &akey, &key).unwrap())
    });
    let mut acc = AttestationAcceptor::new(group, akey.clone(), AcceptorConfig::default());
    let mut seq = 0;
    g.bench_function("verify", |b| {
        b.iter_batched(
            || {
                seq += 1;
                Attestation::create(body(seq), &akey, &key).unwrap()
            },
            |att| acc.accept(&att, &roster, 1_000_000).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn wire_codec(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let secret = SpendSecret::generate(&mut rng);
    let lender = PeerId::from_public_key(&SigningKey::from_bytes(&[4; 32]).verifying_key());
    let wt = WalletToken {
        token: Token {
            input: TokenInput::new(1, [1; 32], secret.public_key()),
            signature: vec![5; 384],
        },
        spend_secret: secret,
    };
    let inner = InnerBorrowRequest {
        request_id: [1; 16],
        spend: wt.spend(lender, [2; 32], 1_000),
        http_request: vec![b'x'; 1024],
    };
    let issue = IssueRequest {
        request_id: [1; 16],
        epoch: 1,
        key_id: [2; 32],
        blinded: vec![vec![3; 384]; 16],
    };
    let mut g = c.benchmark_group("wire");
    let inner_bytes = wire::encode(&inner).unwrap();
    let issue_bytes = wire::encode(&issue).unwrap();
    g.bench_function("encode_inner_borrow_1k", |b| {
        b.iter(|| wire::encode(black_box(&inner)).unwrap())
    });
    g.bench_function("decode_inner_borrow_1k", |b| {
        b.iter(|| wire::decode::<InnerBorrowRequest>(black_box(&inner_bytes)).unwrap())
    });
    g.bench_function("encode_issue_16x3072", |b| {
        b.iter(|| wire::encode(black_box(&issue)).unwrap())
    });
    g.bench_function("decode_issue_16x3072", |b| {
        b.iter(|| wire::decode::<IssueRequest>(black_box(&issue_bytes)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, blind_rsa, attestation, wire_codec);
criterion_main!(benches);
