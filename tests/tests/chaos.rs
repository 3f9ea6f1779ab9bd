//! Issue 15: the chaos harness's short mode (`lendmesh_tests::chaos`): five nodes, a 45 s borrow storm from every
//! gateway, an epoch switch, one fault of each kind and three more, then the invariants over the nodes' stores and APIs. The seed is
//! `LENDMESH_CHAOS_SEED` (default 1); a failure names it. Long runs: `lendmesh-chaos` (README "Reliability").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use lendmesh_tests::chaos::{Config, faketime, run};

#[test]
fn a_storm_under_faults_keeps_every_invariant() {
    let lib = faketime();
    if !lib.exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{} is missing: install Debian's `faketime` (.ci/run does) or name it in LENDMESH_FAKETIME",
                lib.display()
            );
        }
        eprintln!(
            "skipped: {} is missing (Debian's `faketime`; or set LENDMESH_FAKETIME)",
            lib.display()
        );
        return;
    }
    let seed = std::env::var("LENDMESH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let report = run(&Config::short(seed));
    eprintln!("{}", report.table());
    assert!(report.violations.is_empty(), "{}", report.table());
    assert!(report.served > 0, "the storm served nothing:\n{}", report.table());
    assert!(
        report.faults.len() >= 6,
        "every kind of fault was injected:\n{}",
        report.table()
    );
}
