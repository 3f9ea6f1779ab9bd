//! Issue 15: the fuzz targets (`lendmesh_tests::fuzz`) over their committed corpus (`fuzz/corpus/<target>/`),
//! and over seeded mutations of each entry, inside `cargo test`. A long campaign is `cargo fuzz` (fuzz/README.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use lendmesh_tests::fuzz::{TARGETS, Target, seeds};
use rand::{Rng, SeedableRng};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn entries(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target has a committed corpus)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// Runs `target` on `input`; on a panic, fails naming what was run and keeps the input for a reproduction.
fn run(name: &str, target: Target, input: &[u8], what: &str) {
    if std::panic::catch_unwind(|| target(input)).is_err() {
        let dir = std::env::temp_dir().join("lendmesh-fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}-{}", hex::encode(&input[..input.len().min(8)])));
        std::fs::write(&file, input).unwrap();
        panic!(
            "fuzz target {name} panicked on {what}; the input is in {} (replay: cargo fuzz run {name} {})",
            file.display(),
            file.display()
        );
    }
}

/// One seeded mutation: flips, inserted and removed bytes, a splice of interesting values, a truncation.
fn mutate(rng: &mut rand_chacha::ChaCha8Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.gen_range(0..v.len())
        };
        match rng.gen_range(0..6) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.gen_range(0..8),
            1 if !v.is_empty() => v[at] = rng.r#gen(),
            2 => v.insert(at, rng.r#gen()),
            3 if !v.is_empty() => drop(v.remove(at)),
            4 => {
                let special: [&[u8]; 5] = [
                    &[0xff; 4],
                    &[0; 4],
                    &[0x7f, 0xff, 0xff, 0xff],
                    b"\n\n",
                    b"\"\\u0000\"",
                ];
                let s = special[rng.gen_range(0..special.len())];
                v.splice(at..at, s.iter().copied());
            }
            _ => v.truncate(at),
        }
    }
    v
}

/// Mutations of each corpus entry per target in `cargo test` (about a second in all in a debug build).
const MUTATIONS: usize = 150;

#[test]
fn every_target_replays_its_corpus_and_survives_mutations() {
    for (name, target) in TARGETS {
        let corpus = entries(name);
        assert!(!corpus.is_empty(), "{name}: the committed corpus is empty");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x15);
        for (path, bytes) in &corpus {
            run(name, *target, bytes, &path.display().to_string());
            for i in 0..MUTATIONS {
                let m = mutate(&mut rng, bytes);
                run(name, *target, &m, &format!("mutation {i} of {}", path.display()));
            }
        }
    }
}

#[test]
fn every_target_has_a_fuzz_binary_and_the_corpus_holds_its_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        let bin = root.join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            text.contains(&format!("lendmesh_tests::fuzz::{name}(")),
            "{} does not run the target {name}",
            bin.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
    // The seeds are what `seeds()` makes now: a change of a format shows here first (regenerate with
    // `LENDMESH_WRITE_SEEDS=1 cargo test -p lendmesh-tests --test fuzz_corpus`).
    let write = std::env::var_os("LENDMESH_WRITE_SEEDS").is_some();
    for (target, file, bytes) in seeds() {
        let path = corpus_dir(target).join(&file);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            assert!(
                path.exists(),
                "{}: a seed is missing from the corpus (LENDMESH_WRITE_SEEDS=1 writes them)",
                path.display()
            );
        }
    }
}
