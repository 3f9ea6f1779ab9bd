//! Linkage attackers: a lender, a relay and the admin, each alone, name the borrower of every borrow from what
//! their role observes; scored against chance. (The replicas' attackers, with claims on, are in
//! [`super::claims`].)

use lendmesh_protocol::routing;
use lendmesh_protocol::token::TokenSpend;
use rand_chacha::ChaCha8Rng;

use super::Sim;
use crate::member::Publication;
use crate::net::Ms;

/// How many of a member's latest publications the timing attacker looks back through (an hour at the office's
/// 10 s period).
const FALL_LOOKBACK: usize = 360;

impl Sim<'_> {
    pub(super) fn score_linkage(
        &mut self,
        t: Ms,
        l: usize,
        relay: Option<usize>,
        spend: &TokenSpend,
        truth: usize,
    ) {
        let n = self.n;
        // Relay: sees the borrower's connection directly (by design, docs/design.md §6), never the token or content.
        if relay.is_some() {
            self.out
                .linkage
                .entry("relay".into())
                .or_default()
                .record(true, n - 2);
        }
        // Lender: its own view of everyone's attestations; the lowest headroom is the likely borrower.
        let keyed = self.headroom_keys(l, &[], t);
        let bucketed = self.guess_min(keyed.iter().map(|&(p, b, _)| (p, b)).collect());
        let exact = self.guess_min(keyed.iter().map(|&(p, _, e)| (p, e)).collect());
        self.out
            .linkage
            .entry("lender".into())
            .or_default()
            .record(bucketed == Some(truth), n - 1);
        self.out
            .linkage
            .entry("lender-exact".into())
            .or_default()
            .record(exact == Some(truth), n - 1);
        // Lender, timing: the member whose attested headroom fell most recently (a borrow tends to follow the
        // attestation that shows a member running out).
        let fell: Vec<(usize, f64)> = (0..n)
            .filter(|&p| p != l)
            .map(|p| {
                (
                    p,
                    self.last_fall(p, l, t).map_or(f64::INFINITY, |at| -(at as f64)),
                )
            })
            .collect();
        let timing = self.guess_min(fell);
        self.out
            .linkage
            .entry("lender-timing".into())
            .or_default()
            .record(timing == Some(truth), n - 1);
        // Admin: holds every blind signature it made; a token links only if its signature is one of them.
        let plausible: Vec<usize> = (0..n)
            .filter(|&i| self.first_issued[i].is_some_and(|f| f <= t))
            .collect();
        let guess = match self.admin_sigs.get(&spend.token.signature) {
            Some(&m) => Some(m),
            None if plausible.is_empty() => None,
            None => Some(plausible[routing::uniform_index(&mut self.adv_rng, plausible.len())]),
        };
        self.out
            .linkage
            .entry("admin".into())
            .or_default()
            .record(guess == Some(truth), plausible.len());
        // Admin, base rate: no linking at all, just the member who has drawn the most tokens so far. Refill volume
        // tracks borrowing volume, so this beats 1 / plausible without learning anything about this borrow.
        let most = plausible.iter().map(|&i| self.issued[i]).max().unwrap_or(0);
        let heaviest: Vec<(usize, f64)> = plausible
            .iter()
            .filter(|&&i| self.issued[i] == most)
            .map(|&i| (i, 0.0))
            .collect();
        let volume = self.guess_min(heaviest);
        self.out
            .linkage
            .entry("admin-volume".into())
            .or_default()
            .record(volume == Some(truth), plausible.len());
        // Admin, timing: the member it signed a batch for most recently (on demand, a refill follows spending).
        let recent: Vec<(usize, f64)> = plausible
            .iter()
            .map(|&i| (i, self.last_issued[i].map_or(f64::INFINITY, |at| -(at as f64))))
            .collect();
        let timing = self.guess_min(recent);
        self.out
            .linkage
            .entry("admin-timing".into())
            .or_default()
            .record(timing == Some(truth), plausible.len());
    }

    /// When the attested headroom of `p` last fell, among the attestations gossip brought `observer` by `t` (looking
    /// back [`FALL_LOOKBACK`] publications at most).
    fn last_fall(&self, p: usize, observer: usize, t: Ms) -> Option<Ms> {
        let list = &self.pubs[p];
        let hi = list.partition_point(|q| q.t <= t);
        let seen: Vec<_> = list[hi.saturating_sub(FALL_LOOKBACK)..hi]
            .iter()
            .filter(|q| self.net.gossip_delivered(p, observer, q.seq, q.t, t))
            .collect();
        seen.windows(2)
            .rev()
            .find(|w| w[1].headroom < w[0].headroom)
            .map(|w| w[1].t)
    }

    /// What `observer` makes of everyone's headroom at `t` from the attestations gossip brought it, for each member
    /// but itself and `exclude`: `(member, bucketed key, exact key)`, the likeliest borrower lowest.
    pub(super) fn headroom_keys(&self, observer: usize, exclude: &[usize], t: Ms) -> Vec<(usize, f64, f64)> {
        let views: Vec<(usize, Publication)> = (0..self.n)
            .filter(|&p| p != observer && !exclude.contains(&p))
            .filter_map(|p| self.latest_delivered(p, observer, t).map(|x| (p, x)))
            .collect();
        // Bucketed: the lowest bucket first, and within it the member that reached it earliest in its window (a
        // member that ran dry, or low, early is a heavy user, likely still borrowing). Exact: the count of uses in
        // the window is known, so each member's rate of use r is too; score r · P(at least `left` uses since the
        // attestation), i.e. how likely it is exhausted now times how much it asks.
        let window_ms = self.window_ms;
        views
            .iter()
            .map(|&(p, x)| {
                let start = x
                    .resets_at_ms
                    .saturating_sub(crate::net::EPOCH_START_MS + window_ms);
                let list = &self.pubs[p];
                let lo = list.partition_point(|q| q.t < start);
                let hi = list.partition_point(|q| q.t <= x.t);
                // Only what gossip brought the observer.
                let in_window: Vec<&Publication> = list[lo..hi]
                    .iter()
                    .filter(|q| self.net.gossip_delivered(p, observer, q.seq, q.t, t))
                    .collect();
                let since = |q: &&Publication| q.t.saturating_sub(start);
                // Within a bucket, the member that reached it earliest in its window uses the most.
                let reached = in_window
                    .iter()
                    .find(|q| q.headroom <= x.headroom)
                    .map_or(window_ms, since);
                let bucketed =
                    x.headroom as u64 as f64 + 0.5 * reached.min(window_ms) as f64 / window_ms.max(1) as f64;
                let first_zero = in_window.iter().find(|q| q.exact == 0).map(since);
                let cap = in_window.first().map_or(0, |q| q.exact);
                let used = f64::from(cap.saturating_sub(x.exact));
                let rate = match first_zero {
                    Some(z) => f64::from(cap) / z.max(1) as f64,
                    None => used / x.t.saturating_sub(start).max(1) as f64,
                };
                let exhausted = poisson_at_least(rate * t.saturating_sub(x.t) as f64, x.exact);
                (p, bucketed, -rate * exhausted)
            })
            .collect()
    }

    pub(super) fn guess_min(&mut self, keyed: Vec<(usize, f64)>) -> Option<usize> {
        guess_min_in(&mut self.adv_rng, keyed)
    }
}

/// The member with the lowest key, ties broken at random with `rng`.
pub(super) fn guess_min_in(rng: &mut ChaCha8Rng, keyed: Vec<(usize, f64)>) -> Option<usize> {
    let best = keyed.iter().map(|&(_, k)| k).min_by(f64::total_cmp)?;
    let tied: Vec<usize> = keyed
        .iter()
        .filter(|&&(_, k)| k == best)
        .map(|&(p, _)| p)
        .collect();
    Some(tied[routing::uniform_index(rng, tied.len())])
}

/// P(N ≥ k) for N ~ Poisson(mu).
fn poisson_at_least(mu: f64, k: u32) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > 60 {
        return 0.0;
    }
    let mut term = (-mu).exp();
    let mut below = 0.0;
    for j in 0..k {
        below += term;
        term *= mu / f64::from(j + 1);
    }
    (1.0 - below).max(0.0)
}
