//! The two baselines, computed on the very demand trace the run used: every member alone (no sharing), and an
//! oracle that pools the whole group's capacity with perfect, instant information.

use std::collections::BTreeMap;

use crate::net::{Ms, Network};
use crate::outcome::{RunResult, ratio};
use crate::workload::Request;

/// Fills the baseline fractions and bins of `out`.
pub fn fill(out: &mut RunResult, trace: &[Request], caps: &[u32], net: &Network, window_ms: Ms, bin_ms: Ms) {
    let (mut demand, mut alone, mut oracle) = (0u64, 0u64, 0u64);
    walk(trace, caps, net, window_ms, |r, by_self, by_oracle| {
        demand += 1;
        let bin = (r.t / bin_ms.max(1)) as usize;
        if by_self {
            alone += 1;
            if let Some(b) = out.bins.get_mut(bin) {
                b.no_sharing += 1;
            }
        }
        if by_oracle {
            oracle += 1;
            if let Some(b) = out.bins.get_mut(bin) {
                b.oracle += 1;
            }
        }
    });
    out.no_sharing_fraction = ratio(alone as f64, demand as f64);
    out.oracle_fraction = ratio(oracle as f64, demand as f64);
}

/// The times of the requests the oracle pool serves, in order.
pub fn oracle_served_at(trace: &[Request], caps: &[u32], net: &Network, window_ms: Ms) -> Vec<Ms> {
    let mut at = Vec::new();
    walk(trace, caps, net, window_ms, |r, _, by_oracle| {
        if by_oracle {
            at.push(r.t);
        }
    });
    at
}

/// Calls `f(request, served alone, served by the oracle)` for every request made while its member was up.
fn walk(
    trace: &[Request],
    caps: &[u32],
    net: &Network,
    window_ms: Ms,
    mut f: impl FnMut(&Request, bool, bool),
) {
    let total: u64 = caps.iter().map(|&c| u64::from(c)).sum();
    let mut own: Vec<(u64, u32)> = vec![(u64::MAX, 0); caps.len()];
    let mut pool: BTreeMap<u64, u64> = BTreeMap::new();
    for r in trace {
        if net.is_down(r.member, r.t) {
            continue;
        }
        let w = r.t / window_ms.max(1);
        let slot = &mut own[r.member];
        if slot.0 != w {
            *slot = (w, 0);
        }
        let alone = slot.1 < caps[r.member];
        if alone {
            slot.1 += 1;
        }
        let used = pool.entry(w).or_default();
        let oracle = *used < total;
        if oracle {
            *used += 1;
        }
        f(r, alone, oracle);
    }
}
