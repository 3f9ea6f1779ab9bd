//! Per-member rate limits (docs/design.md §9.3): every member holds the group keys, so every member can send
//! requests; none may send so many that it stalls the others.
//!
//! Each member has a token bucket per [`Surface`] (issue requests, claims, borrow and relay streams, gossip
//! messages by author). A request that finds its bucket empty is refused (throttled) and counts a *strike*;
//! [`Limits::strikes`] strikes within [`Limits::strike_window_ms`] disconnect the member for
//! [`Limits::ban_ms`] — long enough that flooding costs the flooder, short enough that an honest member caught by a
//! burst comes back by itself. Default rates are far above what a 100-member group needs in honest use (see each
//! field) and are settings of the node (`[limits]`).
//!
//! Pure and bounded: no clock (times are parameters), at most [`MAX_TRACKED`] members tracked (the least recently
//! seen is forgotten first).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::PeerId;

/// Members tracked at most (a roster holds at most a few hundred).
pub const MAX_TRACKED: usize = 1024;

/// What a member asks of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Surface {
    /// Issue (refill) requests, at the issuer.
    Issue,
    /// Claims (and releases), at a replica.
    Claim,
    /// Sealed borrow streams from a relay, at a lender.
    Borrow,
    /// Relay streams from a borrower, at a relay.
    Relay,
    /// Gossip messages (attestations; the admin's announcements), by their author.
    Gossip,
}

impl Surface {
    /// Every surface.
    pub const ALL: [Surface; 5] = [
        Surface::Issue,
        Surface::Claim,
        Surface::Borrow,
        Surface::Relay,
        Surface::Gossip,
    ];

    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Surface::Issue => "issue",
            Surface::Claim => "claim",
            Surface::Borrow => "borrow",
            Surface::Relay => "relay",
            Surface::Gossip => "gossip",
        }
    }
}

/// A token bucket's rate: `per_s` requests a second on average, bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_s: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

/// The limits, per member (the node's `[limits]` section).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Issue requests: a member refills a batch of up to 64 tokens when its wallet runs low, so a few a minute at
    /// most; 2/s, bursts of 20.
    pub issue: Rate,
    /// Claims and releases a member (as lender) sends one replica: one per lend of a token the replica holds. A lender
    /// serves at most what its upstreams allow — 50/s is a 3 000 requests-per-minute API key lent whole; 200/s,
    /// bursts of 1 000.
    pub claim: Rate,
    /// Borrow streams a member (as relay) brings one lender: every borrower's requests through that relay; 200/s,
    /// bursts of 1 000.
    pub borrow: Rate,
    /// Relay streams a member (as borrower) sends one relay: its own borrows; 100/s, bursts of 500.
    pub relay: Rate,
    /// Gossip messages by one author: an attestation per attestation period (10 s by default, 1 s at the least),
    /// and now and then a roster or epoch announcement from the admin; 2/s, bursts of 20.
    pub gossip: Rate,
    /// Connections one member may hold with a node at once (two nodes dialling each other at once make two; a
    /// restart briefly another).
    pub connections: u32,
    /// Relay streams, and as many borrow streams, one member may hold open at a node at once, whatever their state
    /// (half of a node's relay slots, all of its lend slots).
    pub open_streams: u32,
    /// Throttled requests within `strike_window_ms` that disconnect the member.
    pub strikes: u32,
    /// The window strikes are counted in.
    pub strike_window_ms: u64,
    /// How long a disconnected member is refused.
    pub ban_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            issue: Rate {
                per_s: 2.0,
                burst: 20,
            },
            claim: Rate {
                per_s: 200.0,
                burst: 1000,
            },
            borrow: Rate {
                per_s: 200.0,
                burst: 1000,
            },
            relay: Rate {
                per_s: 100.0,
                burst: 500,
            },
            gossip: Rate {
                per_s: 2.0,
                burst: 20,
            },
            connections: 4,
            open_streams: 64,
            strikes: 100,
            strike_window_ms: 10_000,
            ban_ms: 60_000,
        }
    }
}

impl Limits {
    /// The rate of `s`.
    pub fn rate(&self, s: Surface) -> Rate {
        match s {
            Surface::Issue => self.issue,
            Surface::Claim => self.claim,
            Surface::Borrow => self.borrow,
            Surface::Relay => self.relay,
            Surface::Gossip => self.gossip,
        }
    }

    /// Refuses rates that are not positive and finite, bursts of 0, and a strike rule that never or always fires.
    pub fn check(&self) -> Result<(), String> {
        for s in Surface::ALL {
            let r = self.rate(s);
            if !(r.per_s.is_finite() && r.per_s > 0.0 && r.per_s <= 1e6) || r.burst == 0 {
                return Err(format!(
                    "{}: per_s must be above 0 (at most 1000000) and burst at least 1",
                    s.label()
                ));
            }
        }
        if self.strikes == 0 || self.strike_window_ms == 0 || self.ban_ms > 24 * 3_600_000 {
            return Err("strikes and strike_window_ms must be above 0, ban_ms at most a day".into());
        }
        if !(1..=64).contains(&self.connections) || !(1..=4096).contains(&self.open_streams) {
            return Err("connections must be from 1 to 64, open_streams from 1 to 4096".into());
        }
        Ok(())
    }
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Admit,
    /// Refuse it (its bucket is empty); the member stays connected.
    Throttle,
    /// Refuse it and disconnect the member until `until_ms` (too many strikes, or still banned).
    Disconnect {
        /// Refused until then.
        until_ms: u64,
    },
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

#[derive(Clone, Debug)]
struct Member {
    buckets: [Option<Bucket>; 5],
    strikes: Vec<u64>,
    banned_until_ms: u64,
    seen_ms: u64,
    throttled: [u64; 5],
    disconnects: u64,
}

impl Member {
    fn new(now_ms: u64) -> Member {
        Member {
            buckets: Default::default(),
            strikes: Vec::new(),
            banned_until_ms: 0,
            seen_ms: now_ms,
            throttled: [0; 5],
            disconnects: 0,
        }
    }
}

fn index(s: Surface) -> usize {
    match s {
        Surface::Issue => 0,
        Surface::Claim => 1,
        Surface::Borrow => 2,
        Surface::Relay => 3,
        Surface::Gossip => 4,
    }
}

/// What the limiter has done to one member (for `/v1/peers` and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemberStats {
    /// Throttled requests by surface label.
    pub throttled: Vec<(&'static str, u64)>,
    /// Times it was disconnected for too many strikes.
    pub disconnects: u64,
    /// Refused until then (ms since the Unix epoch), if banned now.
    pub banned_until_ms: Option<u64>,
}

/// The per-member limiter.
#[derive(Clone, Debug)]
pub struct PeerLimiter {
    limits: Limits,
    members: HashMap<PeerId, Member>,
}

impl PeerLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: Limits) -> PeerLimiter {
        PeerLimiter {
            limits,
            members: HashMap::new(),
        }
    }

    /// Its settings.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes one request of `surface` from `peer` at `now_ms`.
    pub fn admit(&mut self, peer: &PeerId, surface: Surface, now_ms: u64) -> Verdict {
        if !self.members.contains_key(peer) && self.members.len() >= MAX_TRACKED {
            self.forget_oldest();
        }
        let limits = self.limits;
        let m = self.members.entry(*peer).or_insert_with(|| Member::new(now_ms));
        m.seen_ms = now_ms;
        if m.banned_until_ms > now_ms {
            return Verdict::Disconnect {
                until_ms: m.banned_until_ms,
            };
        }
        let rate = limits.rate(surface);
        let b = m.buckets[index(surface)].get_or_insert(Bucket {
            tokens: f64::from(rate.burst),
            at_ms: now_ms,
        });
        let elapsed_s = now_ms.saturating_sub(b.at_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed_s * rate.per_s).min(f64::from(rate.burst));
        b.at_ms = now_ms.max(b.at_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Admit;
        }
        m.throttled[index(surface)] += 1;
        m.strikes
            .retain(|t| now_ms.saturating_sub(*t) < limits.strike_window_ms);
        m.strikes.push(now_ms);
        if m.strikes.len() >= limits.strikes as usize {
            m.strikes.clear();
            m.disconnects += 1;
            m.banned_until_ms = now_ms.saturating_add(limits.ban_ms);
            return Verdict::Disconnect {
                until_ms: m.banned_until_ms,
            };
        }
        Verdict::Throttle
    }

    /// Whether `peer` is refused now (a connection from it is closed at once).
    pub fn banned(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.members.get(peer).is_some_and(|m| m.banned_until_ms > now_ms)
    }

    /// What the limiter has done to `peer`.
    pub fn stats(&self, peer: &PeerId, now_ms: u64) -> MemberStats {
        let Some(m) = self.members.get(peer) else {
            return MemberStats::default();
        };
        MemberStats {
            throttled: Surface::ALL
                .iter()
                .map(|s| (s.label(), m.throttled[index(*s)]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            disconnects: m.disconnects,
            banned_until_ms: (m.banned_until_ms > now_ms).then_some(m.banned_until_ms),
        }
    }

    /// Members tracked now.
    pub fn tracked(&self) -> usize {
        self.members.len()
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self
            .members
            .iter()
            .min_by_key(|(_, m)| m.seen_ms)
            .map(|(p, _)| *p)
        {
            self.members.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(seed: u8) -> PeerId {
        PeerId::from_public_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    #[test]
    fn a_burst_is_admitted_then_the_rate_and_a_flood_disconnects_for_a_while() {
        let limits = Limits {
            claim: Rate {
                per_s: 10.0,
                burst: 5,
            },
            strikes: 3,
            strike_window_ms: 1_000,
            ban_ms: 5_000,
            ..Limits::default()
        };
        let mut l = PeerLimiter::new(limits);
        let (a, b) = (pid(1), pid(2));
        for _ in 0..5 {
            assert_eq!(l.admit(&a, Surface::Claim, 0), Verdict::Admit);
        }
        assert_eq!(l.admit(&a, Surface::Claim, 0), Verdict::Throttle);
        // Each surface and each member has its own bucket.
        assert_eq!(l.admit(&a, Surface::Issue, 0), Verdict::Admit);
        assert_eq!(l.admit(&b, Surface::Claim, 0), Verdict::Admit);
        // 100 ms refills one.
        assert_eq!(l.admit(&a, Surface::Claim, 100), Verdict::Admit);
        assert_eq!(l.admit(&a, Surface::Claim, 100), Verdict::Throttle);
        // The third strike within a second disconnects, and the ban holds for every surface until it ends.
        assert_eq!(
            l.admit(&a, Surface::Claim, 100),
            Verdict::Disconnect { until_ms: 5_100 }
        );
        assert!(l.banned(&a, 5_000) && !l.banned(&b, 5_000));
        assert_eq!(
            l.admit(&a, Surface::Issue, 200),
            Verdict::Disconnect { until_ms: 5_100 }
        );
        let s = l.stats(&a, 200);
        assert_eq!(s.throttled, vec![("claim", 3)]);
        assert_eq!((s.disconnects, s.banned_until_ms), (1, Some(5_100)));
        // After the ban the member is back, with a full bucket.
        assert!(!l.banned(&a, 5_100));
        assert_eq!(l.admit(&a, Surface::Claim, 5_100), Verdict::Admit);
    }

    #[test]
    fn strikes_spread_out_never_disconnect_and_memory_is_bounded() {
        let limits = Limits {
            issue: Rate { per_s: 1.0, burst: 1 },
            strikes: 3,
            strike_window_ms: 1_000,
            ..Limits::default()
        };
        let mut l = PeerLimiter::new(limits);
        let a = pid(1);
        for i in 0..20u64 {
            // Two requests a second apart: the second is throttled, and strikes never pile up in the window.
            assert_eq!(l.admit(&a, Surface::Issue, i * 1_000), Verdict::Admit);
            assert_eq!(l.admit(&a, Surface::Issue, i * 1_000 + 10), Verdict::Throttle);
        }
        assert_eq!(l.stats(&a, 0).disconnects, 0);
        let mut l = PeerLimiter::new(Limits::default());
        for i in 0..(MAX_TRACKED + 50) {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let p = PeerId::from_public_key(&ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key());
            l.admit(&p, Surface::Relay, i as u64);
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
    }

    #[test]
    fn the_defaults_hold_and_bad_settings_are_refused() {
        assert_eq!(Limits::default().check(), Ok(()));
        let bad = Limits {
            relay: Rate {
                per_s: f64::NAN,
                burst: 1,
            },
            ..Limits::default()
        };
        assert!(bad.check().unwrap_err().contains("relay"));
        assert!(
            Limits {
                strikes: 0,
                ..Limits::default()
            }
            .check()
            .is_err()
        );
    }
}
