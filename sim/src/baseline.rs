//! The two baselines, computed on the very demand trace the run used: every member alone (no sharing), and an
//! oracle that pools the whole group's capacity with perfect, instant information.

use std::collections::BTreeMap;

use crate::net::{Ms, Network};
use crate::outcome::{RunResult, ratio};
use crate::workload::Request;

/// Fills the baseline fractions and bins of `out`.
pub fn fill(out: &mut RunResult, trace: &[Request], caps: &[u32], net: &Network, window_ms: Ms, bin_ms: Ms) {
    let total: u64 = caps.iter().map(|&c| u64::from(c)).sum();
    let mut own: Vec<(u64, u32)> = vec![(u64::MAX, 0); caps.len()];
    let mut pool: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut demand, mut alone, mut oracle) = (0u64, 0u64, 0u64);
    for r in trace {
        if net.is_down(r.member, r.t) {
            continue;
        }
        demand += 1;
        let w = r.t / window_ms.max(1);
        let bin = (r.t / bin_ms.max(1)) as usize;
        let slot = &mut own[r.member];
        if slot.0 != w {
            *slot = (w, 0);
        }
        if slot.1 < caps[r.member] {
            slot.1 += 1;
            alone += 1;
            if let Some(b) = out.bins.get_mut(bin) {
                b.no_sharing += 1;
            }
        }
        let used = pool.entry(w).or_default();
        if *used < total {
            *used += 1;
            oracle += 1;
            if let Some(b) = out.bins.get_mut(bin) {
                b.oracle += 1;
            }
        }
    }
    out.no_sharing_fraction = ratio(alone as f64, demand as f64);
    out.oracle_fraction = ratio(oracle as f64, demand as f64);
}
