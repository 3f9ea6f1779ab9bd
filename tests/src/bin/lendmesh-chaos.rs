//! The chaos harness over many seeds (issue 15; `lendmesh_tests::chaos`): prints each seed's table and a summary,
//! and exits non-zero on any violation, naming the seed.
//!
//!   cargo build -p lendmesh-tests --bins
//!   target/debug/lendmesh-chaos [--seeds 20] [--first 1] [--members 7] [--storm-secs 120] [--extra-faults 8]
//!
//! Needs libfaketime (Debian's `faketime`) for the clock faults, and `lendmesh-e2e` beside it (cargo builds both).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::{Duration, Instant};

use lendmesh_tests::chaos::{Config, run};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut first) = (20u64, 1u64);
    let mut cfg = Config {
        members: 7,
        storm: Duration::from_secs(120),
        extra_faults: 8,
        ..Config::short(0)
    };
    while let Some(a) = args.next() {
        let mut value = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--seeds" => seeds = value(),
            "--first" => first = value(),
            "--members" => cfg.members = value() as usize,
            "--storm-secs" => cfg.storm = Duration::from_secs(value()),
            "--extra-faults" => cfg.extra_faults = value() as usize,
            "--quota" => cfg.quota = value() as u32,
            _ => {
                eprintln!(
                    "usage: lendmesh-chaos [--seeds N] [--first SEED] [--members N] [--storm-secs S] \
                     [--extra-faults N] [--quota N]"
                );
                return std::process::ExitCode::from(2);
            }
        }
    }
    let began = Instant::now();
    let mut failed = Vec::new();
    let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
    for seed in first..first + seeds {
        let report = run(&Config { seed, ..cfg.clone() });
        println!("{}\n", report.table());
        for (k, v) in report.faults.iter().map(|(k, v)| (format!("fault: {k}"), v)) {
            *totals.entry(k).or_default() += v;
        }
        for (k, v) in [
            ("requests", report.requests),
            ("served", report.served),
            ("cut by a fault", report.cut_by_fault),
        ] {
            *totals.entry(k.to_string()).or_default() += v;
        }
        for (k, v) in &report.failed {
            *totals.entry(format!("failed: {k}")).or_default() += v;
        }
        for (k, v) in &report.tokens {
            *totals.entry(format!("tokens {k}")).or_default() += v;
        }
        *totals.entry("violations".into()).or_default() += report.violations.len() as u64;
        if !report.violations.is_empty() {
            failed.push(seed);
        }
    }
    println!(
        "## {seeds} seeds ({first}..{}), {} members + admin, {} s storms, {:.0} min in all\n\n| what | total |\n|---|---:|",
        first + seeds - 1,
        cfg.members,
        cfg.storm.as_secs(),
        began.elapsed().as_secs_f64() / 60.0
    );
    for (k, v) in &totals {
        println!("| {k} | {v} |");
    }
    if failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("violations with seeds {failed:?}");
        std::process::ExitCode::FAILURE
    }
}
