//! The upstreams a member shares (docs/design.md §5.1): each with a name, the API it speaks and the models it
//! serves (`protocol::capability`), and what of it the member keeps for itself.
//!
//! A request goes to the first upstream that serves it (its path's API and its body's model) and has room: for the
//! member's own requests everything left counts; a lend must leave the **kept** part — the larger of the upstream's
//! `reserve` (units) and its `keep_share` of the window (a subscription at 70 % utilization with a keep share of
//! 0.3 lends nothing more, while the member's own requests still use the last 30 %). Each upstream is advertised in
//! the attestation as a [`Capability`] with the bucket of what it can lend.

use std::sync::Arc;

use lendmesh_protocol::attestation::HeadroomBucket;
use lendmesh_protocol::capability::{Api, Capability, Need};

use super::{Headroom, Permit, Upstream};

/// One shared upstream.
pub struct Shared {
    /// Its name (`config.toml`), for logs, metrics and `/v1/node`.
    pub name: String,
    /// The API it speaks.
    pub api: Api,
    /// The models it serves; empty: any.
    pub models: Vec<String>,
    /// Units of each window never lent.
    pub reserve: u64,
    /// Share of each window never lent (0 to 1).
    pub keep_share: f64,
    /// The upstream.
    pub upstream: Arc<dyn Upstream>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("api", &self.api)
            .field("models", &self.models.len())
            .field("reserve", &self.reserve)
            .field("keep_share", &self.keep_share)
            .field("kind", &self.upstream.kind())
            .finish()
    }
}

impl Shared {
    /// Whether it serves `need`.
    pub fn serves(&self, need: &Need) -> bool {
        Capability::serves_with(self.api, &self.models, need)
    }

    /// Units of `h` the member keeps: the larger of the reserve and the keep share of the window (rounded up).
    pub fn kept(&self, h: &Headroom) -> u64 {
        lendmesh_protocol::capability::kept(h.capacity, self.reserve, self.keep_share)
    }

    /// What it can lend for `model` at `now`: its headroom less what the member keeps (nothing when the upstream
    /// may not be lent at all).
    pub fn lendable(&self, now: u64, model: Option<&str>) -> (u64, Headroom) {
        let h = self.upstream.headroom_for(now, model);
        if !self.upstream.may_lend() {
            return (0, h);
        }
        (h.remaining.saturating_sub(self.kept(&h)), h)
    }

    /// Its capability as advertised at `now`.
    pub fn capability(&self, now: u64) -> Capability {
        let (lendable, h) = self.lendable(now, None);
        Capability {
            api: self.api,
            models: self.models.clone(),
            headroom: HeadroomBucket::from_remaining(lendable, h.capacity.saturating_sub(self.kept(&h))),
            resets_at_ms: h.resets_at_ms,
        }
    }
}

/// Why a lend found no upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoUpstream {
    /// None of this member's upstreams serves the request.
    NotServed,
    /// Those that serve it have nothing to lend; the earliest reset among them.
    NoHeadroom {
        /// When the first of them resets (ms since the Unix epoch).
        resets_at_ms: u64,
    },
}

/// Every upstream a member shares, in the configured order.
#[derive(Debug)]
pub struct UpstreamSet {
    shared: Vec<Shared>,
}

impl UpstreamSet {
    /// A set of `shared` (at least one; the node's config guarantees it).
    pub fn new(shared: Vec<Shared>) -> Self {
        UpstreamSet { shared }
    }

    /// One upstream of any API and model, keeping `reserve` units: what a node without `[[upstreams]]` shares.
    pub fn single(upstream: Arc<dyn Upstream>, reserve: u64) -> Self {
        UpstreamSet::new(vec![Shared {
            name: "default".into(),
            api: Api::Any,
            models: vec![],
            reserve,
            keep_share: 0.0,
            upstream,
        }])
    }

    /// The upstreams.
    pub fn iter(&self) -> impl Iterator<Item = &Shared> {
        self.shared.iter()
    }

    /// The first upstream (the one `[upstream]` and the command-line flags configure).
    pub fn primary(&self) -> Option<&Shared> {
        self.shared.first()
    }

    /// Each upstream's capability at `now`, but for upstreams of no capacity at all (a member that shares nothing,
    /// such as a mock with a capacity of 0): those are not advertised.
    pub fn capabilities(&self, now: u64) -> Vec<Capability> {
        self.shared
            .iter()
            .filter(|s| s.upstream.headroom(now).capacity > 0)
            .map(|s| s.capability(now))
            .collect()
    }

    /// The best bucket among `caps` and the earliest reset among those with it (the attestation's summary).
    pub fn summary(caps: &[Capability]) -> (HeadroomBucket, u64) {
        let best = caps
            .iter()
            .map(|c| c.headroom)
            .max()
            .unwrap_or(HeadroomBucket::None);
        let resets = caps
            .iter()
            .filter(|c| c.headroom == best)
            .map(|c| c.resets_at_ms)
            .min()
            .unwrap_or(0);
        (best, resets)
    }

    /// The share of capacity left on the best upstream that serves `need` and has room (`None`: none has), as
    /// `protocol::exposure::Exposure::route` takes it.
    pub fn own_left(&self, need: &Need, now: u64) -> Option<f64> {
        self.shared
            .iter()
            .filter(|s| s.serves(need))
            .map(|s| s.upstream.headroom_for(now, need.model.as_deref()))
            .filter(|h| h.remaining > 0 && h.capacity > 0)
            .map(|h| h.remaining as f64 / h.capacity as f64)
            .max_by(f64::total_cmp)
    }

    /// A permit for the member's own request: the first upstream that serves it and has any room.
    pub fn acquire_own(&self, need: &Need, now: u64) -> Option<(&Shared, Permit)> {
        self.shared.iter().filter(|s| s.serves(need)).find_map(|s| {
            s.upstream
                .try_acquire_for(now, 0, need.model.as_deref())
                .map(|p| (s, p))
        })
    }

    /// A permit for a lend: the first upstream that serves it and has room beyond what the member keeps.
    pub fn acquire_lend(&self, need: &Need, now: u64) -> Result<(&Shared, Permit), NoUpstream> {
        let mut resets: Option<u64> = None;
        let mut serving = false;
        for s in self.shared.iter().filter(|s| s.serves(need)) {
            serving = true;
            let (lendable, h) = s.lendable(now, need.model.as_deref());
            if lendable > 0
                && let Some(p) = s.upstream.try_acquire_for(now, s.kept(&h), need.model.as_deref())
            {
                return Ok((s, p));
            }
            resets = Some(resets.map_or(h.resets_at_ms, |r| r.min(h.resets_at_ms)));
        }
        if !serving {
            return Err(NoUpstream::NotServed);
        }
        Err(NoUpstream::NoHeadroom {
            resets_at_ms: resets.unwrap_or(now),
        })
    }
}
