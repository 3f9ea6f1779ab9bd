//! Mixed upstreams, measured: per request kind what was served and how, the requests refused at once because no
//! fresh lender serves them (`no_capable_lender`: no token taken, nothing sent), the attempts that reached a lender
//! none of whose upstreams serves them (misrouted), and how much of each member's upstreams of each API family was
//! used (drain). The decisions themselves are `protocol::capability`'s (see [`super::borrow`]).

use lendmesh_protocol::scrub::ApiFamily;

use super::Sim;
use crate::outcome::{DrainRow, KindRun, MixedRun};
use crate::upstream::family_name;
use crate::workload::Layout;

/// The families in report order.
const FAMILIES: [ApiFamily; 3] = [ApiFamily::OpenAi, ApiFamily::Anthropic, ApiFamily::Other];

/// What a run counts for mixed upstreams (kept for every scenario; reported only for scenarios with profiles).
#[derive(Debug)]
pub(super) struct MixTally {
    /// Per request kind (`Layout::needs`).
    kinds: Vec<KindRun>,
    /// Attempts answered `NotServed`.
    pub(super) misrouted: u64,
    /// Requests refused at once.
    nobody_serves: u64,
    /// `borrows[need][member]`: borrows the member started for that kind.
    borrows: Vec<Vec<u64>>,
}

impl MixTally {
    pub(super) fn new(layout: &Layout, n: usize) -> Self {
        MixTally {
            kinds: vec![KindRun::default(); layout.needs.len()],
            misrouted: 0,
            nobody_serves: 0,
            borrows: vec![vec![0; n]; layout.needs.len()],
        }
    }

    /// The counts of request kind `need`.
    pub(super) fn kind(&mut self, need: u16) -> &mut KindRun {
        &mut self.kinds[usize::from(need)]
    }

    /// Member `m` started a borrow for kind `need`.
    pub(super) fn note_borrow(&mut self, need: u16, m: usize) {
        self.borrows[usize::from(need)][m] += 1;
    }
}

impl Sim<'_> {
    /// A request of kind `need` that no fresh lender serves: refused at once, its own outcome.
    pub(super) fn refuse_unserved(&mut self, need: u16) {
        *self
            .out
            .failures
            .entry("no_capable_lender".to_owned())
            .or_default() += 1;
        self.mix.nobody_serves += 1;
        self.mix.kind(need).nobody_serves += 1;
    }

    /// The run's mixed-upstreams counts (scenarios with profiles only).
    pub(super) fn finish_mixed(&mut self) -> Option<MixedRun> {
        if self.s.profiles.is_empty() {
            return None;
        }
        let windows = self.end.div_ceil(self.window_ms.max(1));
        let needs = &self.layout.needs;
        let mut drain = Vec::new();
        for (m, me) in self.members.iter().enumerate() {
            for family in FAMILIES {
                let ups: Vec<_> = me.upstreams.iter().filter(|u| u.family() == family).collect();
                if ups.is_empty() {
                    continue;
                }
                let wanted = (0..needs.len())
                    .filter(|&k| ups.iter().any(|u| u.serves(&needs[k])))
                    .map(|k| {
                        let by = &self.mix.borrows[k];
                        by.iter().sum::<u64>() - by[m]
                    })
                    .sum();
                drain.push(DrainRow {
                    member: m,
                    profile: self.layout.profile(m).name.clone(),
                    family: family_name(family).to_owned(),
                    capacity: ups.iter().map(|u| u64::from(u.capacity)).sum::<u64>() * windows,
                    own: ups.iter().map(|u| u.own_total).sum(),
                    lent: ups.iter().map(|u| u.lent_total).sum(),
                    wanted,
                });
            }
        }
        let mut kinds = std::mem::take(&mut self.mix.kinds);
        for (k, kind) in kinds.iter_mut().enumerate() {
            kind.servable = self
                .members
                .iter()
                .any(|me| me.upstreams.iter().any(|u| u.serves(&needs[k])));
        }
        Some(MixedRun {
            kinds: needs.iter().map(|n| n.describe()).zip(kinds).collect(),
            misrouted: self.mix.misrouted,
            nobody_serves: self.mix.nobody_serves,
            drain,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;

    use lendmesh_protocol::attestation::HeadroomBucket;

    use super::super::lend::Lent;
    use super::super::tests::issue_one;
    use super::*;
    use crate::member::{Answer, PeerView};
    use crate::net::Ms;
    use crate::scenario::Scenario;

    fn mixed() -> Scenario {
        let path = format!("{}/scenarios/mixed.toml", env!("CARGO_MANIFEST_DIR"));
        Scenario::from_file(std::path::Path::new(&path)).unwrap()
    }

    /// The index of the request kind naming `model`.
    fn kind_of(sim: &Sim<'_>, model: &str) -> u16 {
        let k = sim
            .layout
            .needs
            .iter()
            .position(|n| n.model.as_deref() == Some(model));
        k.unwrap() as u16
    }

    /// Member `m`'s table holds every other member's real capabilities, all with headroom, attested at `t`.
    fn see_everyone(sim: &mut Sim<'_>, m: usize, t: Ms) {
        for p in (0..sim.n).filter(|&p| p != m) {
            let issued_at_ms = sim.local(p, t);
            let buckets = [HeadroomBucket::High; lendmesh_protocol::capability::MAX_CAPABILITIES];
            let capabilities =
                crate::upstream::capabilities(&sim.members[p].upstreams, &buckets, issued_at_ms);
            sim.members[m].table[p] = Some(PeerView {
                headroom: HeadroomBucket::High,
                issued_at_ms,
                capabilities,
            });
        }
    }

    #[test]
    fn a_lender_refuses_what_none_of_its_upstreams_serves_before_any_claim() {
        let s = mixed();
        let mut sim = Sim::new(&s, 1).unwrap();
        let token = issue_one(&mut sim, 6);
        let hash = token.token.hash();
        let claude = sim.layout.needs[usize::from(kind_of(&sim, "claude-sonnet-4-5"))].clone();
        let t = 1_000;
        let local = sim.local(6, t);
        // Member 0 shares only an OpenAI Chat upstream: refused before the token is claimed.
        let spend = token.spend(sim.members[0].id, [3; 32], local);
        assert_eq!(
            sim.lend(t, 0, [1; 16], &spend, Some(2), &claude),
            Lent::Now(Answer::NotServed)
        );
        assert!(!sim.members[0].spent.contains(0, &hash), "nothing claimed");
        // Member 7 shares both: it lends from its Anthropic upstream (the second), not its first.
        let spend = token.spend(sim.members[7].id, [3; 32], local);
        assert_eq!(
            sim.lend(t, 7, [2; 16], &spend, Some(2), &claude),
            Lent::Now(Answer::Served)
        );
        let lent: Vec<u64> = sim.members[7].upstreams.iter().map(|u| u.lent_total).collect();
        assert_eq!(lent, [0, 1]);
        // With that upstream full, it refuses for lack of headroom, though its OpenAI upstream has room.
        let u = &mut sim.members[7].upstreams[1];
        u.used = u.capacity;
        let other = issue_one(&mut sim, 6);
        let spend = other.spend(sim.members[7].id, [4; 32], local);
        assert!(matches!(
            sim.lend(t, 7, [3; 16], &spend, Some(2), &claude),
            Lent::Now(Answer::NoHeadroom { .. })
        ));
        assert!(sim.out.violations.is_empty(), "{:?}", sim.out.violations);
    }

    #[test]
    fn a_request_no_fresh_lender_serves_is_refused_at_once_and_others_go_only_to_capable_lenders() {
        let s = mixed();
        let mut sim = Sim::new(&s, 2).unwrap();
        let token = issue_one(&mut sim, 0);
        sim.members[0].wallet.put_back(token);
        let t = 1_000;
        see_everyone(&mut sim, 0, t);
        // A model nobody shares: refused at once, the token stays in the wallet, nothing is sent.
        sim.start_borrow(t, 0, kind_of(&sim, "gemini-2.5-pro"));
        assert!(sim.queue.is_empty() && sim.borrows.is_empty());
        assert_eq!(sim.members[0].wallet.balance(), 1);
        assert_eq!(sim.out.failures.get("no_capable_lender"), Some(&1));
        // A Claude request goes only to a member with an Anthropic upstream (3–9), never to one without.
        sim.start_borrow(t, 0, kind_of(&sim, "claude-opus-4-1"));
        while let Some(Reverse(item)) = sim.queue.pop() {
            sim.handle(item.t, item.ev);
        }
        assert_eq!(sim.out.served_borrowed, 1, "{:?}", sim.out.failures);
        assert_eq!(sim.mix.misrouted, 0);
        let lent = |p: usize| sim.members[p].upstreams.iter().map(|u| u.lent_total).sum::<u64>();
        assert_eq!((3..=9).map(lent).sum::<u64>(), 1);
        assert!(sim.out.violations.is_empty(), "{:?}", sim.out.violations);
    }
}
