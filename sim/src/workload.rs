//! Demand and capacity: who shares which upstreams and asks for what ([`Layout`]), each upstream's capacity, and
//! each member's requests as a time-ordered trace, generated before the run from the seed alone, so every policy
//! and both baselines see exactly the same demand.

use lendmesh_protocol::capability::Need;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::net::{Ms, exp_from_unit, mix, unit};
use crate::scenario::{CapacityRange, Profile, Scenario, UpstreamSpec};

/// One request: at virtual time `t`, member `member` wants one unit of capacity of an upstream that serves
/// `Layout::needs[need]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    /// Virtual time.
    pub t: Ms,
    /// Member index.
    pub member: usize,
    /// Its kind: an index into [`Layout::needs`].
    pub need: u16,
}

/// Who shares what and asks for what: each member's profile, every distinct request kind with what it needs of an
/// upstream, and each profile's mix over them.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The profiles (the scenario's, or the implicit one: see [`Scenario::member_profiles`]).
    pub profiles: Vec<Profile>,
    /// Each member's profile, by index.
    pub profile_of: Vec<usize>,
    /// Every distinct request kind, in the order profiles first name it.
    pub needs: Vec<Need>,
    /// Per profile: `(need index, cumulative weight)`, the last weight being 1.
    mix: Vec<Vec<(u16, f64)>>,
}

impl Layout {
    /// Lays the scenario's members out by profile (a validated scenario: counts add up, at most
    /// `MAX_PROFILES × MAX_REQUEST_KINDS` kinds).
    pub fn new(s: &Scenario) -> Self {
        let profiles = s.member_profiles();
        let profile_of = profiles
            .iter()
            .enumerate()
            .flat_map(|(i, p)| std::iter::repeat_n(i, p.members))
            .collect();
        let mut needs: Vec<Need> = Vec::new();
        let mix = profiles
            .iter()
            .map(|p| {
                let total: f64 = p.requests.iter().map(|r| r.weight).sum();
                let mut acc = 0.0;
                p.requests
                    .iter()
                    .map(|r| {
                        let need = r.need();
                        let k = needs.iter().position(|n| *n == need).unwrap_or_else(|| {
                            needs.push(need);
                            needs.len() - 1
                        });
                        acc += r.weight / total;
                        (k as u16, acc)
                    })
                    .collect()
            })
            .collect();
        Layout {
            profiles,
            profile_of,
            needs,
            mix,
        }
    }

    /// Member `m`'s profile.
    pub fn profile(&self, m: usize) -> &Profile {
        &self.profiles[self.profile_of[m]]
    }

    /// Member `m`'s upstreams.
    pub fn upstreams(&self, m: usize) -> &[UpstreamSpec] {
        &self.profile(m).upstreams
    }

    /// The kind of member `m`'s request for a uniform draw `u` in `[0, 1)`.
    fn pick(&self, m: usize, u: f64) -> u16 {
        let mix = &self.mix[self.profile_of[m]];
        mix.iter()
            .find(|&&(_, acc)| u < acc)
            .or(mix.last())
            .map_or(0, |&(k, _)| k)
    }
}

/// Capacity per window of each member's upstreams: uniform in the upstream's range, or `[capacity]`'s.
pub fn capacities(s: &Scenario, layout: &Layout, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0xCA9A_C17E));
    let default = CapacityRange {
        min: s.capacity.min,
        max: s.capacity.max,
    };
    (0..s.members)
        .map(|m| {
            layout
                .upstreams(m)
                .iter()
                .map(|u| {
                    let c = u.capacity.unwrap_or(default);
                    let span = f64::from(c.max - c.min + 1);
                    c.min + ((unit(&mut rng) * span) as u32).min(c.max - c.min)
                })
                .collect()
        })
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

/// The whole group's demand over `[0, end)`, sorted by time then member. Each request's kind is drawn from its
/// member's profile mix with a stream of its own, so the times do not depend on the mix.
pub fn trace(s: &Scenario, layout: &Layout, seed: u64, end: Ms) -> Vec<Request> {
    let w = weights(s, seed);
    let d = &s.demand;
    let mut out = Vec::new();
    for (m, weight) in w.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(0xDE3A_0D00 + m as u64)));
        let mut kinds = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(0x4B1D_0000 + m as u64)));
        let base = d.mean_per_hour * weight * layout.profile(m).demand_factor / 3_600_000.0;
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
                let need = layout.pick(m, unit(&mut kinds));
                out.push(Request {
                    t: tm,
                    member: m,
                    need,
                });
            }
        }
    }
    out.sort_unstable();
    out
}
