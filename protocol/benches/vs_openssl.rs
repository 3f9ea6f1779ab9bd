//! Blind signing and verification against `openssl speed` on the same machine, in the same run.
//!
//! `cargo bench -p lendmesh-protocol --bench vs_openssl` alternates short rounds of `openssl speed rsa2048 rsa3072`
//! with rounds of our `blind_sign` and both verifiers, so both see the same machine state (shared 2-core VMs drift
//! by 2× within minutes). Each round yields a ratio; the table shows the medians over rounds, checked against the
//! targets (verify ≥ 0.6× OpenSSL, blind_sign ≥ 0.3× at 3072 bits). `LENDMESH_BENCH_ROUNDS` (default 5) and
//! `LENDMESH_BENCH_SECONDS` (per measurement, default 1) tune it. `--check` exits non-zero when a target is missed.
// A bench binary, not the pure library: it may read the clock and run processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    missing_docs
)]

use std::process::Command;
use std::time::{Duration, Instant};

use lendmesh_protocol::blind_rsa::SecretKey;
use lendmesh_protocol::test_keys;
use lendmesh_protocol::token::TokenInput;
use lendmesh_protocol::wallet::TOKEN_VARIANT;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// (bits, sign/s, verify/s) as OpenSSL reports them.
fn openssl_speed(seconds: u64) -> Option<Vec<(usize, f64, f64)>> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", &seconds.to_string(), "rsa2048", "rsa3072"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<_> = text
        .lines()
        .filter_map(|l| {
            // "rsa 2048 bits 0.001227s 0.000027s    815.1  37372.3"
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 7 && f[0] == "rsa" && f[2] == "bits" {
                Some((f[1].parse().ok()?, f[5].parse().ok()?, f[6].parse().ok()?))
            } else {
                None
            }
        })
        .collect();
    (rows.len() == 2).then_some(rows)
}

fn ops_per_sec(seconds: u64, mut op: impl FnMut()) -> f64 {
    // Warm up briefly, then count whole operations for the period.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        op();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        op();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Ours {
    blind_sign: f64,
    verify_ring: f64,
    verify_rsa: f64,
}

fn measure(bits: usize, sk: &SecretKey, seconds: u64) -> Ours {
    let mut rng = ChaCha20Rng::seed_from_u64(bits as u64);
    let pk = sk.public_key().clone();
    let msg = TokenInput::new(1, pk.key_id(), [7; 32]).to_bytes();
    let (blinded, inv) = pk.blind(TOKEN_VARIANT, &msg, &mut rng).unwrap();
    let blind_sig = sk.blind_sign(&blinded, &mut rng).unwrap();
    let sig = pk.finalize(TOKEN_VARIANT, &msg, &blind_sig, &inv).unwrap();
    Ours {
        blind_sign: ops_per_sec(seconds, || {
            std::hint::black_box(sk.blind_sign(&blinded, &mut rng).unwrap());
        }),
        verify_ring: ops_per_sec(seconds, || {
            pk.verify_ring(std::hint::black_box(&msg), &sig).unwrap()
        }),
        verify_rsa: ops_per_sec(seconds, || {
            pk.verify_rsa_crate(TOKEN_VARIANT, std::hint::black_box(&msg), &sig)
                .unwrap()
        }),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        // `cargo bench -- --list` / `cargo test --benches` probe: nothing to list.
        return;
    }
    let check = args.iter().any(|a| a == "--check");
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let seconds = env("LENDMESH_BENCH_SECONDS", 1).max(1);
    let rounds = env("LENDMESH_BENCH_ROUNDS", 5).max(1);
    let keys = [(2048, test_keys::rsa_2048()), (3072, test_keys::rsa_3072())];

    // rows[(bits, op)] = per-round (ours, openssl)
    let ops = [
        "blind_sign (rsa crate, blinded + CRT check)",
        "verify (ring)",
        "verify (rsa crate)",
    ];
    type Samples<'a> = Vec<((usize, &'a str), Vec<(f64, Option<f64>)>)>;
    let mut samples: Samples<'_> = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}…");
        let ossl = openssl_speed(seconds);
        for (bits, sk) in &keys {
            let o = measure(*bits, sk, seconds);
            let theirs = ossl
                .as_ref()
                .and_then(|v| v.iter().find(|r| r.0 == *bits).copied());
            let values = [
                (o.blind_sign, theirs.map(|r| r.1)),
                (o.verify_ring, theirs.map(|r| r.2)),
                (o.verify_rsa, theirs.map(|r| r.2)),
            ];
            for (op, v) in ops.iter().zip(values) {
                match samples.iter_mut().find(|(k, _)| *k == (*bits, *op)) {
                    Some((_, list)) => list.push(v),
                    None => samples.push(((*bits, *op), vec![v])),
                }
            }
        }
    }

    println!("| bits | operation | lendmesh ops/s | OpenSSL ops/s | ratio (median of {rounds}) | target |");
    println!("|------|-----------|---------------:|--------------:|------:|--------|");
    let mut missed = Vec::new();
    let mut have_openssl = true;
    for ((bits, op), list) in &samples {
        let ours = median(list.iter().map(|v| v.0).collect());
        let target = match *op {
            "verify (ring)" => 0.6,
            "verify (rsa crate)" => 0.0,
            _ => 0.3,
        };
        let gated = *bits == 3072 && target > 0.0;
        if list.iter().any(|v| v.1.is_none()) {
            have_openssl = false;
            println!("| {bits} | {op} | {ours:.0} | n/a | n/a | — |");
            continue;
        }
        let theirs = median(list.iter().filter_map(|v| v.1).collect());
        let ratio = median(list.iter().map(|v| v.0 / v.1.unwrap_or(f64::NAN)).collect());
        let target_s = if gated {
            if ratio < target {
                missed.push(format!("{op} at {bits} bits: {ratio:.2}× < {target}×"));
            }
            format!("≥ {target}× {}", if ratio >= target { "✓" } else { "✗" })
        } else {
            "—".into()
        };
        println!("| {bits} | {op} | {ours:.0} | {theirs:.0} | {ratio:.2}× | {target_s} |");
    }
    if !have_openssl {
        println!("\n`openssl speed` was not available; install openssl to get ratios.");
    }
    if !missed.is_empty() {
        println!("\nMissed targets: {}", missed.join("; "));
        if check {
            std::process::exit(1);
        }
    }
}
