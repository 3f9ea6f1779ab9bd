use super::*;
use crate::test_keys;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

#[test]
fn round_trip_all_variants() {
    let sk = test_keys::rsa_2048();
    let pk = sk.public_key();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for variant in [
        Variant::PSS_DETERMINISTIC,
        Variant::PSS_RANDOMIZED,
        Variant::PSSZERO_DETERMINISTIC,
        Variant::PSSZERO_RANDOMIZED,
    ] {
        let msg = prepare(variant, b"hello lendmesh", &mut rng);
        let (blinded, inv) = pk.blind(variant, &msg, &mut rng).unwrap();
        let blind_sig = sk.blind_sign(&blinded, &mut rng).unwrap();
        let sig = pk.finalize(variant, &msg, &blind_sig, &inv).unwrap();
        pk.verify(variant, &msg, &sig).unwrap();
        pk.verify_rsa_crate(variant, &msg, &sig).unwrap();
        assert_eq!(Variant::from_name(variant.name()), Some(variant));
    }
}

#[test]
fn blind_sign_rejects_bad_lengths_and_out_of_range() {
    let sk = test_keys::rsa_2048();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    assert_eq!(
        sk.blind_sign(&[1u8; 10], &mut rng),
        Err(BlindRsaError::WrongLength {
            expected: 256,
            got: 10
        })
    );
    assert_eq!(
        sk.blind_sign(&[0xffu8; 256], &mut rng),
        Err(BlindRsaError::OutOfRange)
    );
}

#[test]
fn key_sizes() {
    assert_eq!(KeySize::from_bits(3072).unwrap().bits(), 3072);
    assert_eq!(KeySize::default(), KeySize::Rsa3072);
    assert!(matches!(
        KeySize::from_bits(1024),
        Err(BlindRsaError::UnsupportedKeySize { bits: 1024 })
    ));
}

#[test]
fn pss_encoding_respects_em_bits() {
    // emBits = modBits - 1: the top bit of a 2048-bit encoding must be clear.
    let em = emsa_pss_encode(b"x", 2047, &[7u8; 48]).unwrap();
    assert_eq!(em.len(), 256);
    assert_eq!(em[0] & 0x80, 0);
    assert_eq!(*em.last().unwrap(), 0xbc);
    assert_eq!(
        emsa_pss_encode(b"x", 100, &[0u8; 48]),
        Err(BlindRsaError::Encoding)
    );
}
