//! Exponential backoff with jitter: how long to wait before trying something that failed again (redialling a
//! peer, asking the issuer). Pure: the caller passes the time and an RNG.
//!
//! The n-th consecutive failure waits a uniformly random time in `[d/2, d]` with `d = min(max, base · 2ⁿ)`: the
//! jitter keeps a group that restarted together from retrying in lock step, the cap keeps a long outage from
//! pushing the next try out of reach.

use rand_core::RngCore;

/// Backoff state for one thing being retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    failures: u32,
    next_at_ms: u64,
}

impl Backoff {
    /// A backoff that starts at `base_ms` and never waits longer than `max_ms`; ready at once.
    pub fn new(base_ms: u64, max_ms: u64) -> Self {
        Backoff {
            base_ms: base_ms.max(1),
            max_ms: max_ms.max(base_ms.max(1)),
            failures: 0,
            next_at_ms: 0,
        }
    }

    /// Whether the next try is due.
    pub fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.next_at_ms
    }

    /// When the next try is due.
    pub fn next_at_ms(&self) -> u64 {
        self.next_at_ms
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure at `now`; returns the wait before the next try.
    pub fn failed(&mut self, now_ms: u64, rng: &mut impl RngCore) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << self.failures.min(40))
            .min(self.max_ms);
        let floor = ceiling / 2;
        let wait = floor + rng.next_u64() % (ceiling - floor + 1);
        self.failures = self.failures.saturating_add(1);
        self.next_at_ms = now_ms.saturating_add(wait);
        wait
    }

    /// Records a success: the next failure starts from the base again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.next_at_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut b = Backoff::new(500, 60_000);
        assert!(b.ready(0));
        let mut ceiling = 500;
        for _ in 0..12 {
            let w = b.failed(1_000, &mut rng);
            assert!(
                w >= ceiling / 2 && w <= ceiling,
                "{w} not in [{}, {ceiling}]",
                ceiling / 2
            );
            assert!(!b.ready(1_000 + w - 1) && b.ready(1_000 + w));
            ceiling = (ceiling * 2).min(60_000);
        }
        assert_eq!(b.failures(), 12);
        b.succeeded();
        assert!(b.ready(0));
        assert!(b.failed(0, &mut rng) <= 500);
    }

    #[test]
    fn jitter_spreads_nodes_that_fail_together() {
        let waits: std::collections::BTreeSet<u64> = (0..20)
            .map(|seed| {
                let mut b = Backoff::new(1_000, 60_000);
                b.failed(0, &mut ChaCha20Rng::seed_from_u64(seed));
                b.failed(0, &mut ChaCha20Rng::seed_from_u64(seed + 100))
            })
            .collect();
        assert!(waits.len() > 10, "20 nodes pick different waits: {waits:?}");
    }
}
