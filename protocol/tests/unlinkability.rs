//! Two-member unlinkability: everything the issuer saw during issuance carries no information about which
//! finalized token is whose.
//!
//! Each trial issues one token to member A and one to member B, records the issuer's complete view (member,
//! blinded message, blind signature), then shows a linking adversary one of the two finalized tokens at random and
//! asks it to name the owner. Over many trials a strategy at chance scores ½. A control run with blinding disabled
//! (r = 1) shows the same strategies *can* link when the scheme leaks — so the test is able to fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use lendmesh_protocol::blind_rsa::{BlindInverse, PublicKey, SecretKey};
use lendmesh_protocol::token::{SpendSecret, TokenInput};
use lendmesh_protocol::wallet::{TOKEN_VARIANT, Wallet};
use lendmesh_protocol::{PeerId, test_keys};
use num_bigint::BigUint;
use rand_core::RngCore;
use rsa::traits::PublicKeyParts;

/// The issuer's view of one issuance.
struct IssuerRecord {
    member: PeerId,
    blinded: Vec<u8>,
    blind_sig: Vec<u8>,
}

/// A finalized token as a lender sees it at spend time.
struct SeenToken {
    input: Vec<u8>,
    signature: Vec<u8>,
}

struct Params {
    n: BigUint,
    e: BigUint,
}

fn params(pk: &PublicKey) -> Params {
    use rsa::pkcs8::DecodePublicKey;
    let k = rsa::RsaPublicKey::from_public_key_der(pk.spki_der()).unwrap();
    Params {
        n: BigUint::from_bytes_be(&k.n().to_bytes_be()),
        e: BigUint::from_bytes_be(&k.e().to_bytes_be()),
    }
}

/// Issues one token to `member`; `blinding` false uses r = 1 (the broken control).
fn issue_one(
    sk: &SecretKey,
    member: PeerId,
    blinding: bool,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> (IssuerRecord, SeenToken) {
    let pk = sk.public_key();
    if blinding {
        let (req, batch) = Wallet::prepare_batch(pk, EPOCH, 1, rng).unwrap();
        let blind_sig = sk.blind_sign(&req.blinded[0], rng).unwrap();
        let mut w = Wallet::new();
        w.finalize(pk, &batch, std::slice::from_ref(&blind_sig)).unwrap();
        let t = w.take(|_| true).unwrap();
        let record = IssuerRecord {
            member,
            blinded: req.blinded[0].clone(),
            blind_sig,
        };
        (
            record,
            SeenToken {
                input: t.token.input.to_bytes().to_vec(),
                signature: t.token.signature,
            },
        )
    } else {
        let secret = SpendSecret::generate(rng);
        let input = TokenInput::new(EPOCH, pk.key_id(), secret.public_key()).to_bytes();
        let mut salt = [0u8; 48];
        rng.fill_bytes(&mut salt);
        let one = BlindInverse::from_bytes(&[1]);
        let blinded = pk.blind_with_inverse_for_test(&input, &salt, &one).unwrap();
        let blind_sig = sk.blind_sign(&blinded, rng).unwrap();
        let signature = pk.finalize(TOKEN_VARIANT, &input, &blind_sig, &one).unwrap();
        (
            IssuerRecord {
                member,
                blinded,
                blind_sig,
            },
            SeenToken {
                input: input.to_vec(),
                signature,
            },
        )
    }
}

type Strategy = fn(&Params, &[IssuerRecord], &SeenToken) -> PeerId;

/// Names the member whose blind signature equals the token's signature (links perfectly without blinding).
fn equal_signature(_: &Params, records: &[IssuerRecord], t: &SeenToken) -> PeerId {
    records
        .iter()
        .find(|r| r.blind_sig == t.signature)
        .unwrap_or(&records[0])
        .member
}

/// Names the member whose blinded message is closest in Hamming distance to the token's encoded message.
fn hamming(p: &Params, records: &[IssuerRecord], t: &SeenToken) -> PeerId {
    let em = BigUint::from_bytes_be(&t.signature)
        .modpow(&p.e, &p.n)
        .to_bytes_be();
    let dist = |r: &IssuerRecord| -> u32 {
        let off = r.blinded.len() - em.len();
        r.blinded[off..]
            .iter()
            .zip(&em)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum()
    };
    records.iter().min_by_key(|r| dist(r)).unwrap().member
}

/// Whether a record is consistent with a token: is there an r with blinded = EM·rᵉ and blind_sig = sig·r?
/// (r = blind_sig / sig; then EM·rᵉ = sigᵉ·blind_sigᵉ/sigᵉ = blind_sigᵉ = blinded, for *any* pairing.)
fn consistent(p: &Params, r: &IssuerRecord, t: &SeenToken) -> bool {
    let s = BigUint::from_bytes_be(&t.signature);
    let Some(s_inv) = s.modinv(&p.n) else { return false };
    let rr = (BigUint::from_bytes_be(&r.blind_sig) * s_inv) % &p.n;
    let em = s.modpow(&p.e, &p.n);
    (em * rr.modpow(&p.e, &p.n)) % &p.n == BigUint::from_bytes_be(&r.blinded)
}

/// Names the first member whose record is consistent with the token.
fn first_consistent(p: &Params, records: &[IssuerRecord], t: &SeenToken) -> PeerId {
    records
        .iter()
        .find(|r| consistent(p, r, t))
        .unwrap_or(&records[0])
        .member
}

const STRATEGIES: [(&str, Strategy); 3] = [
    ("equal_signature", equal_signature),
    ("hamming", hamming),
    ("first_consistent", first_consistent),
];

/// Runs `trials` trials; returns each strategy's accuracy and whether every pairing was consistent.
fn run(blinding: bool, trials: usize, seed: u64) -> (Vec<(&'static str, f64)>, bool) {
    let sk = test_keys::rsa_2048();
    let p = params(sk.public_key());
    let mut rng = rng(seed);
    let (a, b) = (peer(2), peer(3));
    let mut correct = [0usize; 3];
    let mut all_consistent = true;
    for _ in 0..trials {
        let (ra, ta) = issue_one(&sk, a, blinding, &mut rng);
        let (rb, tb) = issue_one(&sk, b, blinding, &mut rng);
        let records = [ra, rb];
        for r in &records {
            all_consistent &= consistent(&p, r, &ta) && consistent(&p, r, &tb);
        }
        let (owner, token) = if rng.next_u32() & 1 == 0 {
            (a, &ta)
        } else {
            (b, &tb)
        };
        // What the adversary is shown is a real, valid token.
        sk.public_key()
            .verify_ring(&token.input, &token.signature)
            .unwrap();
        for (i, (_, strategy)) in STRATEGIES.iter().enumerate() {
            if strategy(&p, &records, token) == owner {
                correct[i] += 1;
            }
        }
    }
    let acc = STRATEGIES
        .iter()
        .zip(correct)
        .map(|((name, _), c)| (*name, c as f64 / trials as f64))
        .collect();
    (acc, all_consistent)
}

#[test]
fn issuer_view_links_at_chance() {
    const TRIALS: usize = 300;
    let (accuracy, all_consistent) = run(true, TRIALS, 2024);
    // Chance is 1/2; the standard error at 300 trials is 0.029, so ±0.1 is about 3.5 standard errors.
    for (name, acc) in &accuracy {
        assert!(
            (acc - 0.5).abs() <= 0.1,
            "{name}: accuracy {acc:.3} is not at chance (0.5)"
        );
    }
    assert!(
        all_consistent,
        "every issuance record is consistent with every token: no information to link"
    );
}

#[test]
fn control_without_blinding_links_perfectly() {
    let (accuracy, _) = run(false, 50, 7);
    let eq = accuracy.iter().find(|(n, _)| *n == "equal_signature").unwrap().1;
    let ham = accuracy.iter().find(|(n, _)| *n == "hamming").unwrap().1;
    assert_eq!(eq, 1.0, "without blinding the issuer sees the signature itself");
    assert_eq!(
        ham, 1.0,
        "without blinding the blinded message is the encoded message"
    );
}

#[test]
fn fresh_blinding_of_one_token_gives_unrelated_messages() {
    let sk = test_keys::rsa_2048();
    let pk = sk.public_key();
    let mut rng = rng(11);
    let input = TokenInput::new(EPOCH, pk.key_id(), [5; 32]).to_bytes();
    let blinded: Vec<Vec<u8>> = (0..40)
        .map(|_| pk.blind(TOKEN_VARIANT, &input, &mut rng).unwrap().0)
        .collect();
    let bits = (blinded[0].len() * 8) as f64;
    for i in 0..blinded.len() {
        for j in i + 1..blinded.len() {
            assert_ne!(blinded[i], blinded[j]);
            let d: u32 = blinded[i]
                .iter()
                .zip(&blinded[j])
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            let frac = d as f64 / bits;
            // Unrelated uniform values differ in about half their bits (sd ≈ 1.1 % at 2048 bits).
            assert!(
                (0.44..0.56).contains(&frac),
                "blindings {i},{j} share structure: {frac:.3}"
            );
        }
    }
}
