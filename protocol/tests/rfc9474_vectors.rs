//! Known-answer tests from RFC 9474 Appendix A (all four RSABSSA-SHA384 variants, 4096-bit key).
//! The vectors are a copy of the published ones in `tests/data/rfc9474.json`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lendmesh_protocol::blind_rsa::{BlindInverse, HASH_LEN, PREFIX_LEN, SecretKey, Variant};

/// Hex field, with or without a `0x` prefix, odd lengths left-padded.
fn h(v: &serde_json::Value, field: &str) -> Vec<u8> {
    let s = v[field].as_str().unwrap_or_else(|| panic!("missing {field}"));
    let s = s.strip_prefix("0x").unwrap_or(s);
    let s = if s.len() % 2 == 1 {
        format!("0{s}")
    } else {
        s.to_string()
    };
    hex::decode(s).unwrap()
}

#[test]
fn rfc9474_all_variants() {
    let vectors: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("data/rfc9474.json")).expect("vector file parses");
    assert_eq!(vectors.len(), 4);
    let mut seen = Vec::new();
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let variant = Variant::from_name(name).unwrap_or_else(|| panic!("unknown variant {name}"));
        seen.push(variant);
        let sk =
            SecretKey::from_components(&h(v, "n"), &h(v, "e"), &h(v, "d"), &h(v, "p"), &h(v, "q")).unwrap();
        let pk = sk.public_key();
        assert_eq!(pk.modulus_bits(), 4096);

        let msg = h(v, "msg");
        let input_msg = h(v, "input_msg");
        let salt = h(v, "salt");
        assert_eq!(salt.len(), variant.salt_len, "{name}: salt length");
        assert_eq!(salt.len(), if variant.salt_len == HASH_LEN { 48 } else { 0 });
        // Prepare: the randomized variants prefix 32 random bytes; the deterministic ones use msg as is.
        if variant.randomized {
            let prefix = h(v, "msg_prefix");
            assert_eq!(prefix.len(), PREFIX_LEN);
            assert_eq!(
                input_msg,
                [prefix, msg.clone()].concat(),
                "{name}: input_msg = prefix || msg"
            );
        } else {
            assert_eq!(input_msg, msg, "{name}: deterministic input_msg = msg");
        }

        let inv = BlindInverse::from_bytes(&h(v, "inv"));
        // Blind: PSS-encode with the published salt, blind with r = inv⁻¹.
        let blinded = pk.blind_with_inverse_for_test(&input_msg, &salt, &inv).unwrap();
        assert_eq!(
            hex::encode(&blinded),
            hex::encode(h(v, "blinded_msg")),
            "{name}: blinded_msg"
        );
        // BlindSign through the rsa crate's private operation (its own blinding must not change the result).
        let blind_sig = sk.blind_sign(&blinded, &mut rand_core::OsRng).unwrap();
        assert_eq!(
            hex::encode(&blind_sig),
            hex::encode(h(v, "blind_sig")),
            "{name}: blind_sig"
        );
        // Finalize (which verifies).
        let sig = pk.finalize(variant, &input_msg, &blind_sig, &inv).unwrap();
        assert_eq!(hex::encode(&sig), hex::encode(h(v, "sig")), "{name}: sig");
        // Independent verifiers.
        pk.verify_rsa_crate(variant, &input_msg, &sig).unwrap();
        if variant.salt_len == HASH_LEN {
            pk.verify_ring(&input_msg, &sig).unwrap();
        } else {
            // ring implements RSASSA-PSS only with salt length = hash length; PSSZERO is checked by the rsa crate.
            assert!(pk.verify_ring(&input_msg, &sig).is_err());
        }
        // And a corrupted signature fails.
        let mut bad = sig.clone();
        bad[100] ^= 1;
        assert!(pk.verify(variant, &input_msg, &bad).is_err());
    }
    assert!(
        seen.contains(&Variant::PSS_DETERMINISTIC),
        "the required variant is covered"
    );
}
