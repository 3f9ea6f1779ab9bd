//! Tests an adversary would write: every one of them must refuse something it could wrongly accept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use lendmesh_protocol::blind_rsa::{KeySize, PublicKey, SecretKey};
use lendmesh_protocol::issuer::{IssueError, Issuer};
use lendmesh_protocol::redeemer::{MemorySpentSet, RedeemError};
use lendmesh_protocol::test_keys;
use lendmesh_protocol::token::{BindingError, TokenInput};
use lendmesh_protocol::wallet::{Wallet, WalletError};
use lendmesh_protocol::wire::{IssueRequest, request_digest};

const DIGEST: [u8; 32] = [0xd1; 32];

#[test]
fn honest_spend_is_accepted_once() {
    let mut f = Fixture::new();
    let token = f.tokens_for(2, 1).remove(0);
    let redeemer = f.redeemer(3);
    let spent = MemorySpentSet::new();
    let spend = token.spend(peer(3), DIGEST, NOW);
    let r = redeemer.redeem(&spend, &DIGEST, NOW, &spent).unwrap();
    assert_eq!(r.token_hash, token.token.hash());
    assert_eq!(
        redeemer.redeem(&spend, &DIGEST, NOW, &spent),
        Err(RedeemError::DoubleSpend)
    );
    // A release (upstream refused before work) makes it spendable again, once.
    redeemer.release(&r, &spent).unwrap();
    assert!(redeemer.redeem(&spend, &DIGEST, NOW, &spent).is_ok());
    assert_eq!(
        redeemer.redeem(&spend, &DIGEST, NOW, &spent),
        Err(RedeemError::DoubleSpend)
    );
}

#[test]
fn every_flipped_bit_in_signature_or_input_is_refused() {
    let mut f = Fixture::new();
    let token = f.tokens_for(2, 1).remove(0);
    let redeemer = f.redeemer(3);
    let spend = token.spend(peer(3), DIGEST, NOW);
    for bit in 0..spend.token.signature.len() * 8 {
        let mut s = spend.clone();
        s.token.signature[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            redeemer.check(&s, &DIGEST, NOW),
            Err(RedeemError::BadSignature),
            "signature bit {bit}"
        );
    }
    let input = spend.token.input.to_bytes();
    for bit in 0..input.len() * 8 {
        let mut bytes = input;
        bytes[bit / 8] ^= 1 << (bit % 8);
        let mut s = spend.clone();
        s.token.input = TokenInput::from_bytes(&bytes).unwrap();
        let err = redeemer.check(&s, &DIGEST, NOW).unwrap_err();
        let expected = match bit / 8 {
            0..=1 => "wrong_token_type",
            2..=5 => "unknown_epoch",
            6..=37 => "wrong_key_id",
            _ => "bad_signature", // the spend key is under the issuer's signature
        };
        assert_eq!(err.label(), expected, "input bit {bit}: {err}");
    }
}

#[test]
fn signature_moved_to_another_token_is_refused() {
    let mut f = Fixture::new();
    let mut tokens = f.tokens_for(2, 2);
    let (a, mut b) = (tokens.remove(0), tokens.remove(0));
    b.token.signature = a.token.signature.clone();
    let spend = b.spend(peer(3), DIGEST, NOW);
    assert_eq!(
        f.redeemer(3).check(&spend, &DIGEST, NOW),
        Err(RedeemError::BadSignature)
    );
}

#[test]
fn wrong_key_key_id_epoch_and_type_are_refused() {
    let mut f = Fixture::new();
    let token = f.tokens_for(2, 1).remove(0);
    let spend = token.spend(peer(3), DIGEST, NOW);

    // The lender holds another issuer key for this epoch: the key id does not match.
    let other_key = test_keys::rsa_3072();
    let mut r = lendmesh_protocol::redeemer::Redeemer::new(peer(3));
    r.accept_epoch(EPOCH, other_key.public_key().clone());
    assert_eq!(r.check(&spend, &DIGEST, NOW), Err(RedeemError::WrongKeyId));
    // Even with the key id rewritten to the other key's, the signature does not verify under it.
    let mut rewritten = spend.clone();
    rewritten.token.input.key_id = other_key.public_key().key_id();
    assert_eq!(r.check(&rewritten, &DIGEST, NOW), Err(RedeemError::BadSignature));

    // An epoch the lender does not accept (retired or unknown).
    let mut retired = f.redeemer(3);
    retired.retire_epoch(EPOCH);
    assert_eq!(
        retired.check(&spend, &DIGEST, NOW),
        Err(RedeemError::UnknownEpoch { epoch: EPOCH })
    );

    // Another token type.
    let mut typed = spend.clone();
    typed.token.input.token_type = 0x0002;
    assert_eq!(
        f.redeemer(3).check(&typed, &DIGEST, NOW),
        Err(RedeemError::WrongTokenType { got: 2 })
    );
}

#[test]
fn spend_bound_to_another_lender_or_request_is_refused() {
    let mut f = Fixture::new();
    let token = f.tokens_for(2, 1).remove(0);
    let spend = token.spend(peer(3), DIGEST, NOW);
    // Lender 4 receives a spend bound to lender 3 (e.g. lender 3 trying to spend what it was handed).
    assert_eq!(
        f.redeemer(4).check(&spend, &DIGEST, NOW),
        Err(RedeemError::Binding(BindingError::WrongLender))
    );
    // Lender 3 rebinds it to lender 4 without the spend key: signature fails at lender 4.
    let mut rebound = spend.clone();
    rebound.lender = peer(4);
    assert_eq!(
        f.redeemer(4).check(&rebound, &DIGEST, NOW),
        Err(RedeemError::Binding(BindingError::BadSignature))
    );
    // Bound to another request.
    let other = request_digest(b"GET /other");
    assert_eq!(
        f.redeemer(3).check(&spend, &other, NOW),
        Err(RedeemError::Binding(BindingError::WrongRequest))
    );
    // Replayed much later.
    assert!(matches!(
        f.redeemer(3).check(&spend, &DIGEST, NOW + 3_600_000),
        Err(RedeemError::Binding(BindingError::TimeSkew { .. }))
    ));
}

#[test]
fn two_threads_racing_on_one_spent_set_spend_each_token_once() {
    let mut f = Fixture::new();
    let tokens = f.tokens_for(2, 20);
    let redeemer = f.redeemer(3);
    let spent = MemorySpentSet::new();
    let spends: Vec<_> = tokens.iter().map(|t| t.spend(peer(3), DIGEST, NOW)).collect();
    let wins = std::sync::atomic::AtomicUsize::new(0);
    let double = std::sync::atomic::AtomicUsize::new(0);
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                barrier.wait();
                for spend in &spends {
                    match redeemer.redeem(spend, &DIGEST, NOW, &spent) {
                        Ok(_) => wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                        Err(RedeemError::DoubleSpend) => {
                            double.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                        }
                        Err(e) => panic!("unexpected {e}"),
                    };
                }
            });
        }
    });
    assert_eq!(wins.into_inner(), 20, "each token spent exactly once");
    assert_eq!(double.into_inner(), 20, "each second attempt refused");
    assert_eq!(spent.len_in(EPOCH), 20);
}

#[test]
fn issuance_refuses_unknown_expired_over_quota_and_malformed() {
    let f = Fixture::new();
    let pk = f.key.public_key().clone();
    let mut rng = rng(5);
    let mut roster = roster(4);
    roster.members[2].expires_at_ms = NOW - 1; // peer 3 expired
    roster.removed.push(peer(4));
    let mut issuer = Issuer::new(EPOCH, f.key.clone(), roster);
    let (req, _) = Wallet::prepare_batch(&pk, EPOCH, 2, &mut rng).unwrap();

    assert_eq!(
        issuer.issue(&peer(9), &req, NOW, &mut rng).unwrap_err(),
        IssueError::UnknownMember
    );
    assert_eq!(
        issuer.issue(&peer(4), &req, NOW, &mut rng).unwrap_err(),
        IssueError::UnknownMember,
        "removed"
    );
    assert!(matches!(
        issuer.issue(&peer(3), &req, NOW, &mut rng),
        Err(IssueError::MemberExpired { .. })
    ));

    let wrong_epoch = IssueRequest {
        epoch: EPOCH + 1,
        ..req.clone()
    };
    assert!(matches!(
        issuer.issue(&peer(2), &wrong_epoch, NOW, &mut rng),
        Err(IssueError::WrongEpoch { .. })
    ));
    let wrong_key = IssueRequest {
        key_id: [0; 32],
        ..req.clone()
    };
    assert_eq!(
        issuer.issue(&peer(2), &wrong_key, NOW, &mut rng).unwrap_err(),
        IssueError::WrongKey
    );
    let empty = IssueRequest {
        blinded: vec![],
        ..req.clone()
    };
    assert_eq!(
        issuer.issue(&peer(2), &empty, NOW, &mut rng).unwrap_err(),
        IssueError::EmptyBatch
    );
    let short = IssueRequest {
        blinded: vec![vec![1; 10]],
        ..req.clone()
    };
    assert_eq!(
        issuer.issue(&peer(2), &short, NOW, &mut rng).unwrap_err(),
        IssueError::MalformedBlindedMessage { index: 0 }
    );
    let too_big = IssueRequest {
        blinded: vec![vec![0xff; 256]],
        ..req.clone()
    };
    assert_eq!(
        issuer.issue(&peer(2), &too_big, NOW, &mut rng).unwrap_err(),
        IssueError::MalformedBlindedMessage { index: 0 }
    );
    assert_eq!(issuer.used(&peer(2), EPOCH), 0, "refusals charge nothing");

    // Quota 20: 2 now, then 18 more, then over quota.
    let g = issuer.issue(&peer(2), &req, NOW, &mut rng).unwrap();
    assert!(g.charged);
    assert_eq!(g.record.used, 2);
    let (req18, _) = Wallet::prepare_batch(&pk, EPOCH, 18, &mut rng).unwrap();
    assert_eq!(
        issuer.issue(&peer(2), &req18, NOW, &mut rng).unwrap().record.used,
        20
    );
    let (req1, _) = Wallet::prepare_batch(&pk, EPOCH, 1, &mut rng).unwrap();
    assert_eq!(
        issuer.issue(&peer(2), &req1, NOW, &mut rng).unwrap_err(),
        IssueError::OverQuota {
            requested: 1,
            remaining: 0
        }
    );
}

#[test]
fn issuance_retry_is_idempotent_and_survives_restart() {
    let f = Fixture::new();
    let pk = f.key.public_key().clone();
    let mut rng = rng(6);
    let mut issuer = Issuer::new(EPOCH, f.key.clone(), roster(4));
    let (req, batch) = Wallet::prepare_batch(&pk, EPOCH, 5, &mut rng).unwrap();
    let first = issuer.issue(&peer(2), &req, NOW, &mut rng).unwrap();
    // The issuer "restarts" from its persisted record.
    let mut restarted = Issuer::new(EPOCH, f.key.clone(), roster(4));
    restarted.restore(first.record.clone());
    let again = restarted.issue(&peer(2), &req, NOW, &mut rng).unwrap();
    assert!(!again.charged);
    assert_eq!(again.record.used, 5);
    assert_eq!(
        again.blind_signatures, first.blind_signatures,
        "RSA signing is deterministic"
    );
    // Reusing the id for other messages is refused.
    let (other, _) = Wallet::prepare_batch(&pk, EPOCH, 5, &mut rng).unwrap();
    let reused = IssueRequest {
        request_id: req.request_id,
        ..other
    };
    assert_eq!(
        restarted.issue(&peer(2), &reused, NOW, &mut rng).unwrap_err(),
        IssueError::RequestIdReused
    );
    // The member finalizes both answers: no token twice.
    let mut wallet = Wallet::new();
    assert_eq!(wallet.finalize(&pk, &batch, &first.blind_signatures).unwrap(), 5);
    assert_eq!(wallet.finalize(&pk, &batch, &again.blind_signatures).unwrap(), 0);
    assert_eq!(wallet.balance(), 5);
    // Restored records of another epoch are ignored.
    let mut other_epoch = Issuer::new(EPOCH + 1, f.key.clone(), roster(4));
    other_epoch.restore(first.record);
    assert_eq!(other_epoch.used(&peer(2), EPOCH + 1), 0);
    assert_eq!(other_epoch.used(&peer(2), EPOCH), 0);
}

#[test]
fn wallet_refuses_bad_issuer_answers_all_or_none() {
    let f = Fixture::new();
    let pk = f.key.public_key().clone();
    let mut rng = rng(7);
    let mut issuer = Issuer::new(EPOCH, f.key.clone(), roster(4));
    let (req, batch) = Wallet::prepare_batch(&pk, EPOCH, 3, &mut rng).unwrap();
    let grant = issuer.issue(&peer(2), &req, NOW, &mut rng).unwrap();
    let mut wallet = Wallet::new();
    let mut sigs = grant.blind_signatures.clone();
    sigs[2][5] ^= 1;
    assert!(matches!(
        wallet.finalize(&pk, &batch, &sigs),
        Err(WalletError::BadIssuerSignature { index: 2, .. })
    ));
    assert_eq!(wallet.balance(), 0, "nothing added when any signature is bad");
    assert!(matches!(
        wallet.finalize(&pk, &batch, &grant.blind_signatures[..2]),
        Err(WalletError::CountMismatch { expected: 3, got: 2 })
    ));
    let other = test_keys::rsa_3072();
    assert_eq!(
        wallet.finalize(other.public_key(), &batch, &grant.blind_signatures),
        Err(WalletError::WrongKey)
    );
    assert_eq!(wallet.finalize(&pk, &batch, &grant.blind_signatures).unwrap(), 3);
}

#[test]
fn wallet_take_and_put_back() {
    let mut f = Fixture::new();
    let tokens = f.tokens_for(2, 3);
    let mut wallet = Wallet::new();
    for t in tokens.clone() {
        wallet.insert(t);
    }
    let first = wallet.take(|_| true).unwrap();
    assert_eq!(first, tokens[0]);
    assert_eq!(wallet.balance(), 2);
    wallet.put_back(first.clone());
    assert_eq!(
        wallet.take(|_| true).unwrap(),
        first,
        "a put-back token is spent first"
    );
    assert!(wallet.take(|e| e != EPOCH).is_none(), "epoch filter");
    // Serializable (the node persists it) and Debug hides spend secrets.
    let bytes = postcard::to_allocvec(&wallet).unwrap();
    let back: Wallet = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, wallet);
    assert!(format!("{wallet:?}").contains("<redacted>"));
    assert_eq!(wallet.prune_before(EPOCH + 1), 2);
    assert_eq!(wallet.balance(), 0);
}

#[test]
fn finalized_tokens_verify_under_two_independent_verifiers() {
    let mut f = Fixture::new();
    let pk = f.key.public_key().clone();
    for t in f.tokens_for(2, 10) {
        let msg = t.token.input.to_bytes();
        pk.verify_ring(&msg, &t.token.signature).unwrap();
        pk.verify_rsa_crate(lendmesh_protocol::wallet::TOKEN_VARIANT, &msg, &t.token.signature)
            .unwrap();
        // And they agree on rejection.
        let mut bad = t.token.signature.clone();
        bad[0] ^= 0x80;
        assert!(pk.verify_ring(&msg, &bad).is_err());
        assert!(
            pk.verify_rsa_crate(lendmesh_protocol::wallet::TOKEN_VARIANT, &msg, &bad)
                .is_err()
        );
    }
}

#[test]
fn keys_export_import_and_still_verify() {
    let mut f = Fixture::new();
    let token = f.tokens_for(2, 1).remove(0);
    let msg = token.token.input.to_bytes();
    let pk = f.key.public_key();
    let from_der = PublicKey::from_spki_der(pk.spki_der()).unwrap();
    let from_pem = PublicKey::from_pem(&pk.to_pem().unwrap()).unwrap();
    for k in [&from_der, &from_pem] {
        assert_eq!(k.key_id(), pk.key_id());
        k.verify_ring(&msg, &token.token.signature).unwrap();
    }
    let sk_der = SecretKey::from_pkcs8_der(&f.key.to_pkcs8_der().unwrap()).unwrap();
    let sk_pem = SecretKey::from_pkcs8_pem(&f.key.to_pkcs8_pem().unwrap()).unwrap();
    for sk in [&sk_der, &sk_pem] {
        assert_eq!(sk.public_key(), pk);
        assert!(!format!("{sk:?}").contains("BEGIN"));
    }
    assert!(PublicKey::from_spki_der(&[0x30, 0x03, 1, 2, 3]).is_err());
    assert!(
        SecretKey::from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err()
    );
}

#[test]
fn generated_2048_key_works_end_to_end() {
    let mut rng = rng(8);
    let sk = SecretKey::generate(KeySize::Rsa2048, &mut rng).unwrap();
    assert_eq!(sk.public_key().modulus_bits(), 2048);
    let (req, batch) = Wallet::prepare_batch(sk.public_key(), 1, 1, &mut rng).unwrap();
    let sig = sk.blind_sign(&req.blinded[0], &mut rng).unwrap();
    let mut w = Wallet::new();
    assert_eq!(w.finalize(sk.public_key(), &batch, &[sig]).unwrap(), 1);
}
