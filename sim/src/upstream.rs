//! A member's shared upstreams as the simulator models them (docs/design.md §5.1): each speaks an API, serves some
//! models and has a capacity per window. Which requests it serves is `protocol::capability`'s rule
//! ([`Capability::serves_with`]), as in the node; the simulated upstream itself is capacity only.
//!
//! As in the node's `UpstreamSet`: the member's own request takes a unit of the first upstream that serves it and
//! has room; a lend, of the first that serves it and has room beyond the reserve (`protocol::lend::headroom`), or is
//! refused `NotServed` when none serves it. Each upstream is attested as one [`Capability`] with its own bucket.

use lendmesh_protocol::attestation::HeadroomBucket;
use lendmesh_protocol::capability::{Api, Capability, Need};
use lendmesh_protocol::scrub::ApiFamily;

/// One upstream a member shares.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Its API.
    pub api: Api,
    /// The models it serves; empty: any.
    pub models: Vec<String>,
    /// Requests per window.
    pub capacity: u32,
    /// Used in the current window (own requests and lends).
    pub used: u32,
    /// Own requests it served over the run (statistics).
    pub own_total: u64,
    /// Lends it served over the run (statistics).
    pub lent_total: u64,
}

impl Upstream {
    /// A fresh upstream of `api` serving `models`, with `capacity` per window.
    pub fn new(api: Api, models: Vec<String>, capacity: u32) -> Self {
        Upstream {
            api,
            models,
            capacity,
            used: 0,
            own_total: 0,
            lent_total: 0,
        }
    }

    /// Whether it serves `need` (`protocol::capability`'s rule).
    pub fn serves(&self, need: &Need) -> bool {
        Capability::serves_with(self.api, &self.models, need)
    }

    /// Capacity left in the current window.
    pub fn remaining(&self) -> u32 {
        self.capacity.saturating_sub(self.used)
    }

    /// What it can lend, as a bucket (the simulator models no reserve, so all that is left).
    pub fn bucket(&self) -> HeadroomBucket {
        HeadroomBucket::from_remaining(u64::from(self.remaining()), u64::from(self.capacity))
    }

    /// The broad family of its API (a generic upstream: [`ApiFamily::Other`]).
    pub fn family(&self) -> ApiFamily {
        self.api.family()
    }
}

/// A short name of an API family for reports: `openai`, `anthropic`, `generic`.
pub fn family_name(f: ApiFamily) -> &'static str {
    match f {
        ApiFamily::OpenAi => "openai",
        ApiFamily::Anthropic => "anthropic",
        ApiFamily::Other => "generic",
    }
}

/// The capabilities a member attests for `upstreams` whose buckets were `buckets` (one per upstream, in order),
/// with the window's reset.
pub fn capabilities(
    upstreams: &[Upstream],
    buckets: &[HeadroomBucket],
    resets_at_ms: u64,
) -> Vec<Capability> {
    upstreams
        .iter()
        .zip(buckets)
        .map(|(u, &headroom)| Capability {
            api: u.api,
            models: u.models.clone(),
            headroom,
            resets_at_ms,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use lendmesh_protocol::scrub::Body;

    use super::*;

    #[test]
    fn an_upstream_serves_by_the_protocols_rule_and_attests_its_own_bucket() {
        let mut u = Upstream::new(Api::AnthropicMessages, vec!["claude-sonnet-*".into()], 4);
        let need = |path: &str, body: &str| Need::of(path, &[], &Body::parse(body.as_bytes()));
        assert!(u.serves(&need("/v1/messages", r#"{"model":"claude-sonnet-4-5"}"#)));
        assert!(!u.serves(&need("/v1/messages", r#"{"model":"claude-opus-4-1"}"#)));
        assert!(!u.serves(&need("/v1/chat/completions", r#"{"model":"claude-sonnet-4-5"}"#)));
        assert_eq!(u.bucket(), HeadroomBucket::High);
        u.used = 4;
        assert_eq!((u.remaining(), u.bucket()), (0, HeadroomBucket::None));
        let caps = capabilities(&[u], &[HeadroomBucket::Low], 9);
        assert_eq!(caps.len(), 1);
        assert_eq!(
            (caps[0].api, caps[0].headroom, caps[0].resets_at_ms),
            (Api::AnthropicMessages, HeadroomBucket::Low, 9)
        );
        assert_eq!(family_name(Api::Any.family()), "generic");
    }
}
