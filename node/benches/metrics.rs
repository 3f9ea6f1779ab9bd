//! `/metrics` encoding with 100 peers' worth of state: the lendmesh families filled as a 100-member group fills
//! them (per-peer RTT and attestation age, every outcome and reason label, latency samples) plus libp2p-metrics fed
//! swarm events for 100 connections. Prints p50 / p99 of the encode over 1 000 scrapes.
//!
//! `cargo bench -p lendmesh-node --bench metrics`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::time::Instant;

use lendmesh_node::metrics::{NodeMetrics, PeerLabel};
use prometheus_client::registry::Registry;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let counters = NodeMetrics::default();
    let mut registry = Registry::default();
    counters.register(&mut registry);
    let _libp2p = libp2p::metrics::Metrics::new(&mut registry);
    for i in 0..100 {
        let label = PeerLabel {
            peer: format!("peer{i:04}"),
        };
        counters.peer_rtt.get_or_create(&label).set(0.001 * i as f64);
        counters.peer_attestation_age.get_or_create(&label).set(i as f64);
    }
    for o in [
        "ok",
        "no_lender_available",
        "no_relay_available",
        "wallet_empty",
        "lender_timeout",
        "borrow_failed",
    ] {
        NodeMetrics::outcome(&counters.borrows, o);
    }
    for o in [
        "served",
        "no_headroom",
        "token_rejected",
        "upstream_refused",
        "upstream_failed",
        "stale_key_config",
    ] {
        NodeMetrics::outcome(&counters.lends, o);
    }
    for i in 0..10_000 {
        counters.borrow_latency.observe(0.001 * (i % 500) as f64);
    }
    for s in [Some(200), Some(429), Some(503), None] {
        counters.upstream_call(s);
    }
    let mut times = Vec::with_capacity(1000);
    let mut size = 0;
    for _ in 0..1000 {
        let t = Instant::now();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = out.len();
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!("| scrape (encode), 100 peers | p50 | p99 | bytes | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| /metrics | {:.3} ms | {:.3} ms | {size} | p99 < 10 ms {} |",
        p(0.5),
        p(0.99),
        if p(0.99) < 10.0 { "✓" } else { "✗" }
    );
}
