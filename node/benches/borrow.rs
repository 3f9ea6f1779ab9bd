//! Borrow overhead on loopback: gateway → relay → lender → back, against a direct call of the same zero-latency
//! mock from a gateway, in the same run; then borrows/s through one lender with concurrent clients.
//!
//! `cargo bench -p lendmesh-node --bench borrow` prints a markdown table. `LENDMESH_BENCH_N` (default 500) sets the
//! sequential sample size, `LENDMESH_BENCH_THROUGHPUT` (default 2000) the concurrent run, `LENDMESH_BENCH_CLIENTS`
//! (default 32) its concurrency.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::time::{Duration, Instant};

use lendmesh_node::demo::{start_group, wait_ready};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn timed(client: &reqwest::Client, url: &str, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = client
            .post(url)
            .body(format!("{{\"i\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        r.bytes().await.unwrap();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env("LENDMESH_BENCH_N", 500);
    let total = env("LENDMESH_BENCH_THROUGHPUT", 2000);
    let clients = env("LENDMESH_BENCH_CLIENTS", 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        // Node 0 is the admin (issuer), otherwise idle; node 1 borrows everything; node 2 relays; node 3 lends
        // from a big zero-latency mock. The borrower's quota is exactly what it is given up front, so no refill
        // (RSA signing) competes with the measurement.
        let need = (n + total + 64).div_ceil(64) as u32 * 64;
        let nodes = start_group(dir.path(), 4, need, shutdown.clone(), |i, c| {
            c.upstream.mock_latency = Duration::ZERO;
            c.upstream.mock_window = Duration::from_secs(3600);
            c.upstream.mock_capacity = if i == 3 { 1_000_000 } else { 0 };
            c.wallet.low_water = if i == 1 { need } else { 0 };
            c.wallet.batch = 64;
        })
        .await
        .unwrap();
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        eprintln!("filling the borrower's wallet with {need} tokens…");
        wait_ready(&client, &nodes, 0).await.unwrap();
        loop {
            let v = lendmesh_node::demo::get_json(&client, &nodes[1].api_addr, "/v1/node").await;
            if v["wallet_balance"].as_u64().unwrap_or(0) >= need as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let direct_url = format!("http://{}/v1/echo", nodes[3].gateway_addr);
        let borrow_url = format!("http://{}/v1/echo", nodes[1].gateway_addr);
        // Warm up both paths.
        timed(&client, &direct_url, 20).await;
        timed(&client, &borrow_url, 20).await;
        eprintln!("sequential: {n} direct, {n} borrowed…");
        let direct = timed(&client, &direct_url, n).await;
        let borrowed = timed(&client, &borrow_url, n).await;
        eprintln!("throughput: {total} borrows with {clients} concurrent clients…");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (client, url) = (client.clone(), borrow_url.clone());
            let share = total / clients + usize::from(c < total % clients);
            tasks.push(tokio::spawn(async move {
                let mut failed = 0;
                for _ in 0..share {
                    match client.post(&url).body("{}").send().await {
                        Ok(r) if r.status().is_success() => {
                            r.bytes().await.ok();
                        }
                        _ => failed += 1,
                    }
                }
                failed
            }));
        }
        let mut failed = 0;
        for t in tasks {
            failed += t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = (total - failed) as f64 / secs;
        let (d50, d99) = (pct(&direct, 0.5), pct(&direct, 0.99));
        let (b50, b99) = (pct(&borrowed, 0.5), pct(&borrowed, 0.99));
        println!("| measure | direct (own upstream) | borrowed (relay + lender) | overhead | target |");
        println!("|---------|----------------------:|--------------------------:|---------:|--------|");
        println!("| p50 latency | {d50:.2} ms | {b50:.2} ms | {:.2} ms | ≤ 3 ms {} |", b50 - d50, if b50 - d50 <= 3.0 { "✓" } else { "✗" });
        println!("| p99 latency | {d99:.2} ms | {b99:.2} ms | {:.2} ms | ≤ 15 ms {} |", b99 - d99, if b99 - d99 <= 15.0 { "✓" } else { "✗" });
        println!("| borrows/s, {clients} clients, one lender | | {rate:.0} ({failed} failed of {total}) | | ≥ 500 {} |", if rate >= 500.0 { "✓" } else { "✗" });
        shutdown.cancel();
        for node in nodes {
            if let Err(why) = node.join().await {
                eprintln!("a node stopped on its own during the bench: {why}");
            }
        }
    });
}
