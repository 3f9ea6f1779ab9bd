//! The node's per-member limits (`protocol::limits`, its default settings) run over the honest traffic of a run, to
//! show that honest use never reaches them (docs/design.md §9.3): each receiving member has its own `PeerLimiter`,
//! as each node does, and every issue request, claim, relay and borrow message and attestation of an honest member
//! passes it. Nothing is refused here — the run goes on as before; what the limiters *would* throttle is counted,
//! with the busiest second of any sender at any receiver per surface.
//!
//! Gossip is counted at one receiver (the admin): every member receives every attestation, so the rate per author
//! is the same at all of them.

use std::collections::{BTreeMap, HashMap};

use lendmesh_protocol::PeerId;
use lendmesh_protocol::limits::{Limits, PeerLimiter, Surface, Verdict};

use super::Sim;
use crate::net::Ms;

/// The audit's state for one run.
#[derive(Debug)]
pub(super) struct LimitsAudit {
    limiters: Vec<PeerLimiter>,
    admitted: BTreeMap<&'static str, u64>,
    throttled: BTreeMap<&'static str, u64>,
    /// (receiver, sender, surface) → (the second, requests in it).
    second: HashMap<(usize, usize, Surface), (u64, u64)>,
    busiest: BTreeMap<&'static str, u64>,
}

impl LimitsAudit {
    pub(super) fn new(members: usize) -> LimitsAudit {
        LimitsAudit {
            limiters: (0..members)
                .map(|_| PeerLimiter::new(Limits::default()))
                .collect(),
            admitted: BTreeMap::new(),
            throttled: BTreeMap::new(),
            second: HashMap::new(),
            busiest: BTreeMap::new(),
        }
    }

    /// What the run showed: requests admitted and throttled, and the busiest second, per surface.
    pub(super) fn result(&self) -> crate::outcome::LimitsRun {
        crate::outcome::LimitsRun {
            admitted: self.admitted.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            throttled: self.throttled.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            busiest_second: self.busiest.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }
}

impl Sim<'_> {
    /// One request of `surface` from member `from` reaches member `to` at `t`.
    pub(super) fn audit_limits(&mut self, to: usize, from: usize, surface: Surface, t: Ms) {
        let sender: PeerId = self.members[from].id;
        let a = &mut self.limits;
        let label = surface.label();
        match a.limiters[to].admit(&sender, surface, t) {
            Verdict::Admit => *a.admitted.entry(label).or_default() += 1,
            Verdict::Throttle | Verdict::Disconnect { .. } => *a.throttled.entry(label).or_default() += 1,
        }
        let now_s = t / 1000;
        let (s, n) = a.second.entry((to, from, surface)).or_insert((now_s, 0));
        if *s != now_s {
            (*s, *n) = (now_s, 0);
        }
        *n += 1;
        let top = a.busiest.entry(label).or_default();
        *top = (*top).max(*n);
    }
}
