//! Demand and capacity: each member's requests as a time-ordered trace, generated before the run from the seed
//! alone, so every policy and both baselines see exactly the same demand.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::net::{Ms, exp_from_unit, mix, unit};
use crate::scenario::Scenario;

/// One request: at virtual time `t`, member `member` wants one unit of capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    /// Virtual time.
    pub t: Ms,
    /// Member index.
    pub member: usize,
}

/// Capacity per window of each member: uniform in `[min, max]`.
pub fn capacities(s: &Scenario, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0xCA9A_C17E));
    let span = f64::from(s.capacity.max - s.capacity.min + 1);
    (0..s.members)
        .map(|_| s.capacity.min + ((unit(&mut rng) * span) as u32).min(s.capacity.max - s.capacity.min))
        .collect()
}

/// Relative demand weight of each member: Zipf(`skew`) over a seeded random ranking, normalised to mean 1.
pub fn weights(s: &Scenario, seed: u64) -> Vec<f64> {
    let n = s.members;
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0x5EED_0F5C));
    let mut ranks: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = lendmesh_protocol::routing::uniform_index(&mut rng, i + 1);
        ranks.swap(i, j);
    }
    let raw: Vec<f64> = ranks
        .iter()
        .map(|&r| ((r + 1) as f64).powf(-s.demand.skew))
        .collect();
    let mean = raw.iter().sum::<f64>() / n as f64;
    raw.iter().map(|w| w / mean).collect()
}

fn quiet(s: &Scenario, t: Ms) -> bool {
    let Some([a, b]) = s.demand.quiet_hours else {
        return false;
    };
    let hour = (t as f64 / 3_600_000.0) % 24.0;
    if a <= b {
        a <= hour && hour < b
    } else {
        hour >= a || hour < b
    }
}

/// The whole group's demand over `[0, end)`, sorted by time then member.
pub fn trace(s: &Scenario, seed: u64, end: Ms) -> Vec<Request> {
    let w = weights(s, seed);
    let d = &s.demand;
    let mut out = Vec::new();
    for (m, weight) in w.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(0xDE3A_0D00 + m as u64)));
        let base = d.mean_per_hour * weight / 3_600_000.0;
        if base <= 0.0 {
            continue;
        }
        // Bursts: a Poisson process of burst starts.
        let mut bursts = Vec::new();
        if d.bursts_per_hour > 0.0 {
            let mut t = 0.0;
            loop {
                t += exp_from_unit(unit(&mut rng), 3_600_000.0 / d.bursts_per_hour);
                if t >= end as f64 {
                    break;
                }
                bursts.push((t as Ms, (t + d.burst_minutes * 60_000.0) as Ms));
            }
        }
        // Thinning against the peak rate.
        let peak = base * d.burst_factor.max(1.0);
        let mut t = 0.0;
        loop {
            t += exp_from_unit(unit(&mut rng), 1.0 / peak);
            if t >= end as f64 {
                break;
            }
            let tm = t as Ms;
            let mut rate = base;
            if bursts.iter().any(|&(a, b)| a <= tm && tm < b) {
                rate *= d.burst_factor;
            }
            if quiet(s, tm) {
                rate *= d.quiet_factor;
            }
            if unit(&mut rng) < rate / peak {
                out.push(Request { t: tm, member: m });
            }
        }
    }
    out.sort_unstable();
    out
}
