//! The two baselines, computed on the very demand trace the run used: every member alone (no sharing), and an
//! oracle that pools the whole group's capacity with perfect, instant information.
//!
//! With mixed upstreams a unit of capacity serves only the request kinds its upstream serves (the same
//! `protocol::capability` rule the run uses, evaluated once per upstream and kind into [`Pool::serves`]). Alone, a
//! request takes the first of its member's upstreams that serves it and has room; the oracle takes the member's own
//! first, then the serving upstream with the most room left in the group (greedy: with one `any` upstream per
//! member, as in every scenario without profiles, this is exactly "any unit left in the group").

use crate::net::{Ms, Network};
use crate::outcome::{RunResult, ratio};
use crate::workload::Request;

/// The group's upstreams as the baselines see them.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    /// `capacity[member][upstream]`: units per window.
    pub capacity: Vec<Vec<u32>>,
    /// `serves[member][upstream][need]`: whether that upstream serves that request kind.
    pub serves: Vec<Vec<Vec<bool>>>,
}

/// Fills the baseline fractions and bins of `out`.
pub fn fill(out: &mut RunResult, trace: &[Request], pool: &Pool, net: &Network, window_ms: Ms, bin_ms: Ms) {
    let (mut demand, mut alone, mut oracle) = (0u64, 0u64, 0u64);
    walk(trace, pool, net, window_ms, |r, by_self, by_oracle| {
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
pub fn oracle_served_at(trace: &[Request], pool: &Pool, net: &Network, window_ms: Ms) -> Vec<Ms> {
    let mut at = Vec::new();
    walk(trace, pool, net, window_ms, |r, _, by_oracle| {
        if by_oracle {
            at.push(r.t);
        }
    });
    at
}

/// Units used per upstream in the current window, reset as windows pass.
struct Used {
    window: u64,
    used: Vec<Vec<u32>>,
}

impl Used {
    fn new(pool: &Pool) -> Self {
        Used {
            window: u64::MAX,
            used: pool.capacity.iter().map(|c| vec![0; c.len()]).collect(),
        }
    }

    fn roll(&mut self, w: u64) {
        if self.window != w {
            self.window = w;
            self.used.iter_mut().flatten().for_each(|u| *u = 0);
        }
    }

    /// Room left on member `m`'s upstream `k` for `need`, if it serves it.
    fn room(&self, pool: &Pool, m: usize, k: usize, need: usize) -> Option<u32> {
        pool.serves[m][k]
            .get(need)
            .copied()
            .unwrap_or(false)
            .then(|| pool.capacity[m][k].saturating_sub(self.used[m][k]))
    }

    /// Takes a unit of the first of member `m`'s upstreams that serves `need` and has room.
    fn take_own(&mut self, pool: &Pool, m: usize, need: usize) -> bool {
        let k = (0..pool.capacity[m].len()).find(|&k| self.room(pool, m, k, need).is_some_and(|r| r > 0));
        if let Some(k) = k {
            self.used[m][k] += 1;
        }
        k.is_some()
    }

    /// Takes a unit of the serving upstream with the most room in the group (the first of equals).
    fn take_most_room(&mut self, pool: &Pool, need: usize) -> bool {
        let mut best: Option<(u32, usize, usize)> = None;
        for (m, ups) in pool.capacity.iter().enumerate() {
            for k in 0..ups.len() {
                if let Some(r) = self.room(pool, m, k, need)
                    && r > 0
                    && best.is_none_or(|(b, _, _)| r > b)
                {
                    best = Some((r, m, k));
                }
            }
        }
        if let Some((_, m, k)) = best {
            self.used[m][k] += 1;
        }
        best.is_some()
    }
}

/// Calls `f(request, served alone, served by the oracle)` for every request made while its member was up.
fn walk(
    trace: &[Request],
    pool: &Pool,
    net: &Network,
    window_ms: Ms,
    mut f: impl FnMut(&Request, bool, bool),
) {
    let mut own = Used::new(pool);
    let mut oracle = Used::new(pool);
    for r in trace {
        if net.is_down(r.member, r.t) {
            continue;
        }
        let w = r.t / window_ms.max(1);
        own.roll(w);
        oracle.roll(w);
        let need = usize::from(r.need);
        let alone = own.take_own(pool, r.member, need);
        let pooled = oracle.take_own(pool, r.member, need) || oracle.take_most_room(pool, need);
        f(r, alone, pooled);
    }
}
