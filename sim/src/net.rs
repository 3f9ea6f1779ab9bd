//! The simulated network: per-link latency, jitter, loss, partitions, crashes and clock skew.
//!
//! Point-to-point messages draw jitter and loss from the run's network RNG in event order (deterministic). Gossip
//! (attestations, delivered to every member) is evaluated lazily, only when a member needs its peer table, so its
//! delay and loss come from a keyed hash of `(seed, publisher, receiver, seq)` instead: the same answer whatever
//! order the simulator asks in.

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use crate::scenario::Scenario;

/// Virtual time, ms since the start of the run.
pub type Ms = u64;

/// SplitMix64: a keyed hash good enough to derive independent streams and per-message coins.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) from a hash.
pub fn hash_unit(key: u64) -> f64 {
    (mix(key) >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential with `mean` from a uniform `u` in [0, 1).
pub fn exp_from_unit(u: f64, mean: f64) -> f64 {
    -(1.0 - u).ln() * mean
}

/// Uniform in [0, 1) from an RNG.
pub fn unit(rng: &mut impl RngCore) -> f64 {
    lendmesh_protocol::routing::unit_f64(rng)
}

/// A half-open interval of virtual time.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: Ms,
    end: Ms,
}

/// Everything about the network that the scenario fixes. Endpoint `members` (one past the last member) is the
/// admin's issuer, which never crashes or partitions.
#[derive(Debug)]
pub struct Network {
    seed: u64,
    members: usize,
    latency_ms: f64,
    jitter_ms: f64,
    loss: f64,
    gossip_ms: f64,
    skew_ms: Vec<i64>,
    partitions: Vec<(Span, Vec<bool>)>,
    downs: Vec<Vec<Span>>,
    /// Faults apply only before this instant (the liveness phase heals them).
    faults_until: Ms,
    rng: ChaCha8Rng,
}

/// Member `i`'s down spells under `churn` before `until`: up and down spells alternate, each exponential (down with
/// the churn's mean, up with the mean that gives its uptime), starting up or down as the long-run shares say, so the
/// member is up an `uptime` share of the time from the start. Drawn from a keyed hash of (seed, member, spell), not
/// the network's stream, so churn moves no other random choice.
fn churn_spans(churn: &crate::scenario::Churn, seed: u64, i: usize, until: Ms) -> Vec<Span> {
    let minute = 60_000.0;
    let (down_ms, up_ms) = (churn.mean_down_minutes * minute, churn.mean_up_minutes() * minute);
    let draw = |k: u64| hash_unit(seed ^ mix(0x4348_5552_4E00_0000 ^ ((i as u64) << 24) ^ k));
    let mut spans = Vec::new();
    if churn.uptime >= 1.0 {
        return spans;
    }
    let mut up = draw(0) < churn.uptime;
    let (mut at, mut k) = (0.0_f64, 1);
    while at < until as f64 {
        let length = exp_from_unit(draw(k), if up { up_ms } else { down_ms });
        k += 1;
        if !up {
            let (start, end) = (at as Ms, ((at + length) as Ms).min(until));
            if end > start {
                spans.push(Span { start, end });
            }
        }
        at += length;
        up = !up;
    }
    spans
}

/// The Unix time (ms) at which every run starts, so protocol timestamps look like real ones.
pub const EPOCH_START_MS: u64 = 1_700_000_000_000;

impl Network {
    /// Builds the network for one run.
    pub fn new(s: &Scenario, seed: u64, rng: ChaCha8Rng, faults_until: Ms) -> Self {
        let minute = 60_000.0;
        let mut skew_ms: Vec<i64> = (0..s.members)
            .map(|i| {
                let u = hash_unit(seed ^ mix(0x5345_5745 ^ i as u64));
                ((u * 2.0 - 1.0) * s.network.clock_skew_ms) as i64
            })
            .collect();
        for c in &s.faults.clock_skews {
            if let Some(k) = skew_ms.get_mut(c.member) {
                *k = k.saturating_add(c.skew_ms);
            }
        }
        let partitions = s
            .faults
            .partitions
            .iter()
            .map(|p| {
                let mut side = vec![false; s.members + 1];
                for &m in &p.members {
                    side[m] = true;
                }
                let span = Span {
                    start: (p.start_min * minute) as Ms,
                    end: (p.end_min * minute) as Ms,
                };
                (span, side)
            })
            .collect();
        let mut downs = vec![Vec::new(); s.members + 1];
        for c in &s.faults.crashes {
            downs[c.member].push(Span {
                start: (c.at_min * minute) as Ms,
                end: (c.restart_min * minute) as Ms,
            });
        }
        if let Some(churn) = &s.faults.churn {
            for (i, d) in downs.iter_mut().take(s.members).enumerate() {
                d.extend(churn_spans(churn, seed, i, faults_until));
            }
        }
        Network {
            seed,
            members: s.members,
            latency_ms: s.network.latency_ms,
            jitter_ms: s.network.jitter_ms,
            loss: s.network.loss,
            gossip_ms: s.network.gossip_delay_ms,
            skew_ms,
            partitions,
            downs,
            faults_until,
            rng,
        }
    }

    /// The admin's endpoint index.
    pub fn admin(&self) -> usize {
        self.members
    }

    /// Node `i`'s clock (Unix ms) at virtual time `t`.
    pub fn local_ms(&self, i: usize, t: Ms) -> u64 {
        let skew = self.skew_ms.get(i).copied().unwrap_or(0);
        (EPOCH_START_MS as i64 + t as i64 + skew).max(0) as u64
    }

    /// Whether node `i` is down at `t`.
    pub fn is_down(&self, i: usize, t: Ms) -> bool {
        t < self.faults_until
            && self
                .downs
                .get(i)
                .is_some_and(|d| d.iter().any(|s| s.start <= t && t < s.end))
    }

    /// The crash spans of node `i` (start, end), for scheduling.
    pub fn crash_spans(&self, i: usize) -> Vec<(Ms, Ms)> {
        self.downs
            .get(i)
            .map_or_else(Vec::new, |d| d.iter().map(|s| (s.start, s.end)).collect())
    }

    /// When node `i` last came up at or before `t` (0 if never down).
    pub fn up_since(&self, i: usize, t: Ms) -> Ms {
        self.downs.get(i).map_or(0, |d| {
            d.iter().filter(|s| s.end <= t).map(|s| s.end).max().unwrap_or(0)
        })
    }

    /// Whether a partition separates `a` and `b` at `t`.
    pub fn partitioned(&self, a: usize, b: usize, t: Ms) -> bool {
        t < self.faults_until
            && self
                .partitions
                .iter()
                .any(|(s, side)| s.start <= t && t < s.end && side[a] != side[b])
    }

    fn base_ms(&self, a: usize, b: usize) -> f64 {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let u = hash_unit(self.seed ^ mix(((lo as u64) << 32) | hi as u64));
        self.latency_ms * (0.5 + u)
    }

    /// Sends one message `from → to` at `t`: its delay, or `None` if lost (loss, partition, either end down).
    pub fn send(&mut self, from: usize, to: usize, t: Ms) -> Option<Ms> {
        let lost = unit(&mut self.rng) < self.loss;
        let jitter = exp_from_unit(unit(&mut self.rng), self.jitter_ms);
        if lost || self.partitioned(from, to, t) || self.is_down(from, t) {
            return None;
        }
        let delay = (self.base_ms(from, to) + jitter).round().max(1.0) as Ms;
        if self.is_down(to, t + delay) {
            return None;
        }
        Some(delay)
    }

    /// When an epoch announcement batch the admin published at `t` reaches member `to`. The admin re-sends it until
    /// it is through (no loss), a partition holds it back until it heals, and it takes one gossip delay from the
    /// admin (keyed hash: order-independent). A member that is down takes it when it is next up.
    pub fn announcement_arrival(&self, to: usize, batch: u64, t: Ms) -> Ms {
        let from = self.members;
        let key = self.seed ^ mix(0x4550_4F43 ^ ((to as u64) << 32) ^ batch);
        let delay = (self.base_ms(from, to) + exp_from_unit(hash_unit(key), self.gossip_ms)) as Ms;
        let mut at = t;
        // Each step moves past one partition's end, so this ends after at most `partitions.len()` steps.
        for _ in 0..=self.partitions.len() {
            let Some(end) = self
                .partitions
                .iter()
                .filter(|(s, side)| {
                    s.start <= at && at < s.end && at < self.faults_until && side[from] != side[to]
                })
                .map(|(s, _)| s.end.min(self.faults_until))
                .max()
            else {
                break;
            };
            at = end;
        }
        at + delay
    }

    /// Whether publication `seq` of `from`, made at `t`, reached `to` by `now` (lazy, order-independent).
    pub fn gossip_delivered(&self, from: usize, to: usize, seq: u64, t: Ms, now: Ms) -> bool {
        let key = self.seed ^ mix(((from as u64) << 44) ^ ((to as u64) << 24) ^ seq);
        if hash_unit(key ^ 0x4C4F_5353) < self.loss || self.partitioned(from, to, t) {
            return false;
        }
        let delay = (self.base_ms(from, to) + exp_from_unit(hash_unit(key), self.gossip_ms)) as Ms;
        let arrive = t + delay;
        arrive <= now && self.up_since(to, now) <= t && !self.is_down(to, arrive)
    }
}
