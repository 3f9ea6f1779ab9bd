//! Mixed upstreams (docs/design.md §5.1): kinds of members (`[[profiles]]`), each sharing one or more upstreams of
//! an API and a list of models, and each asking for a weighted mix of request kinds (an API and a model, possibly
//! one nobody serves). Which upstream serves which request is `protocol::capability`'s rule, never the
//! simulator's: a request kind becomes a [`Need`] through [`Need::of`], from the path its API names and a JSON body
//! naming its model.
//!
//! A scenario without profiles has one implicit profile ([`Scenario::member_profiles`]): every member shares one
//! upstream of any API with `[capacity]`'s range and asks for requests of no known API — what every scenario did
//! before upstreams had an API, with the same results.

use lendmesh_protocol::capability::{self, Api, MAX_CAPABILITIES, Need};
use lendmesh_protocol::scrub::Body;
use serde::{Deserialize, Serialize};

use super::{Scenario, ScenarioError};

/// Profiles a scenario may have (each is a row of the report; a group has a few kinds of members, not dozens).
pub const MAX_PROFILES: usize = 32;

/// Request kinds one profile may ask for (each distinct kind is a row of the report).
pub const MAX_REQUEST_KINDS: usize = 16;

/// Longest profile name, in bytes (it labels report rows).
pub const MAX_PROFILE_NAME: usize = 64;

/// The largest rate multiplier of a profile (the same bound as a burst's).
pub const MAX_DEMAND_FACTOR: f64 = 100.0;

/// A kind of member: how many, what they share and what they ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name, for the report.
    pub name: String,
    /// Members of this kind (profiles take member indices in order: the first profile's members come first).
    pub members: usize,
    /// Their upstreams, in the order a member tries them (its own requests and its lends take the first that
    /// serves the request and has room), at most [`MAX_CAPABILITIES`].
    pub upstreams: Vec<UpstreamSpec>,
    /// What they ask for: request kinds with weights (relative; they need not add up to 1).
    pub requests: Vec<RequestKind>,
    /// Their rate of requests relative to `demand.mean_per_hour` (before skew, bursts and quiet hours).
    #[serde(default = "one")]
    pub demand_factor: f64,
}

fn one() -> f64 {
    1.0
}

/// One upstream a member shares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Its API: `openai-chat`, `openai-responses`, `anthropic-messages` or `any` (a generic upstream such as a local
    /// Ollama, which takes any request).
    pub api: Api,
    /// The models it serves (a trailing `*` matches a prefix); empty: any model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Its requests per window, uniform in `[min, max]` per member; absent: `[capacity]`'s range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityRange>,
}

/// A range of capacity per window (the window is `[capacity].window_minutes`, shared by every upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityRange {
    /// Smallest capacity per window.
    pub min: u32,
    /// Largest capacity per window.
    pub max: u32,
}

/// One kind of request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestKind {
    /// The API its path names (`openai-chat`: `/v1/chat/completions`, `openai-responses`: `/v1/responses`,
    /// `anthropic-messages`: `/v1/messages`), or `any` for a path no known API names (Ollama's `/api/generate`),
    /// which only a generic upstream serves.
    pub api: Api,
    /// The model its body names; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Its weight in the profile's mix.
    pub weight: f64,
}

impl RequestKind {
    /// The path a request of this kind goes to.
    pub fn path(&self) -> &'static str {
        match self.api {
            Api::OpenAiChat => "/v1/chat/completions",
            Api::OpenAiResponses => "/v1/responses",
            Api::AnthropicMessages => "/v1/messages",
            Api::Any => "/api/generate",
        }
    }

    /// What it needs of an upstream, as the node reads it from the request (`protocol::capability::Need::of`).
    pub fn need(&self) -> Need {
        let body = match &self.model {
            Some(m) => serde_json::json!({ "model": m }).to_string(),
            None => "{}".to_owned(),
        };
        Need::of(self.path(), &[], &Body::parse(body.as_bytes()))
    }
}

impl Scenario {
    /// The profiles members are laid out by: the scenario's, or the implicit one of a scenario without (every
    /// member: one `any` upstream with `[capacity]`'s range, asking for requests of no known API).
    pub fn member_profiles(&self) -> Vec<Profile> {
        if !self.profiles.is_empty() {
            return self.profiles.clone();
        }
        vec![Profile {
            name: "member".into(),
            members: self.members,
            upstreams: vec![UpstreamSpec {
                api: Api::Any,
                models: vec![],
                capacity: None,
            }],
            requests: vec![RequestKind {
                api: Api::Any,
                model: None,
                weight: 1.0,
            }],
            demand_factor: 1.0,
        }]
    }

    /// The largest demand factor of any profile (1 without profiles), for the bound on expected requests.
    pub(super) fn max_demand_factor(&self) -> f64 {
        self.profiles.iter().map(|p| p.demand_factor).fold(1.0, f64::max)
    }

    /// Checks `[[profiles]]`: counts adding up to `members`, bounded lists, model names the protocol accepts,
    /// capacity ranges and weights.
    pub(super) fn validate_profiles(&self) -> Result<(), ScenarioError> {
        if self.profiles.is_empty() {
            return Ok(());
        }
        if self.profiles.len() > MAX_PROFILES {
            return Err(bad(
                "profiles",
                format!("{} profiles; at most {MAX_PROFILES}", self.profiles.len()),
            ));
        }
        let total: usize = self.profiles.iter().map(|p| p.members).sum();
        if total != self.members {
            return Err(bad(
                "profiles",
                format!(
                    "the profiles' members add up to {total} but `members` is {}; make them equal (with profiles, \
                     --members cannot change the group size)",
                    self.members
                ),
            ));
        }
        for (i, p) in self.profiles.iter().enumerate() {
            if p.name.is_empty() || p.name.len() > MAX_PROFILE_NAME {
                return Err(bad(
                    "profiles.name",
                    format!("profile {i}: a name of 1 to {MAX_PROFILE_NAME} bytes"),
                ));
            }
            if self.profiles[..i].iter().any(|q| q.name == p.name) {
                return Err(bad(
                    "profiles.name",
                    format!("two profiles are named '{}'; names must differ", p.name),
                ));
            }
            p.validate()?;
        }
        Ok(())
    }
}

impl Profile {
    fn validate(&self) -> Result<(), ScenarioError> {
        let name = &self.name;
        if self.members == 0 {
            return Err(bad(
                "profiles.members",
                format!("profile '{name}' has no members; remove it or give it at least 1"),
            ));
        }
        if !(self.demand_factor.is_finite() && (0.0..=MAX_DEMAND_FACTOR).contains(&self.demand_factor)) {
            return Err(bad(
                "profiles.demand_factor",
                format!("profile '{name}': must be in [0, {MAX_DEMAND_FACTOR}]"),
            ));
        }
        if !(1..=MAX_CAPABILITIES).contains(&self.upstreams.len()) {
            return Err(bad(
                "profiles.upstreams",
                format!(
                    "profile '{name}' has {} upstreams; a member shares 1 to {MAX_CAPABILITIES} (the attestation's \
                     limit)",
                    self.upstreams.len()
                ),
            ));
        }
        for (k, u) in self.upstreams.iter().enumerate() {
            capability::check_models(&u.models).map_err(|e| {
                bad(
                    "profiles.upstreams.models",
                    format!("profile '{name}', upstream {k}: {e}"),
                )
            })?;
            if let Some(c) = u.capacity
                && (c.min == 0 || c.max < c.min || c.max > 1_000_000)
            {
                return Err(bad(
                    "profiles.upstreams.capacity",
                    format!("profile '{name}', upstream {k}: need 1 <= min <= max <= 1000000"),
                ));
            }
        }
        if !(1..=MAX_REQUEST_KINDS).contains(&self.requests.len()) {
            return Err(bad(
                "profiles.requests",
                format!(
                    "profile '{name}' has {} request kinds; give 1 to {MAX_REQUEST_KINDS}",
                    self.requests.len()
                ),
            ));
        }
        for (k, r) in self.requests.iter().enumerate() {
            if !(r.weight.is_finite() && r.weight > 0.0) {
                return Err(bad(
                    "profiles.requests.weight",
                    format!("profile '{name}', request {k}: must be finite and above 0"),
                ));
            }
            if let Some(m) = &r.model {
                capability::check_models(std::slice::from_ref(m)).map_err(|e| {
                    bad(
                        "profiles.requests.model",
                        format!("profile '{name}', request {k}: {e}"),
                    )
                })?;
            }
        }
        Ok(())
    }
}

fn bad(field: &'static str, reason: String) -> ScenarioError {
    ScenarioError::Invalid { field, reason }
}

#[cfg(test)]
mod tests {
    use lendmesh_protocol::scrub::ApiFamily;

    use super::*;

    fn mixed() -> String {
        std::fs::read_to_string(format!("{}/scenarios/mixed.toml", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn request_kinds_need_what_the_node_reads_from_the_request() {
        let kind = |api, model: Option<&str>| RequestKind {
            api,
            model: model.map(str::to_owned),
            weight: 1.0,
        };
        let n = kind(Api::AnthropicMessages, Some("claude-opus-4-1")).need();
        assert_eq!(n.api, Some(Api::AnthropicMessages));
        assert_eq!(n.model.as_deref(), Some("claude-opus-4-1"));
        let n = kind(Api::Any, None).need();
        assert_eq!((n.api, n.family, n.model), (None, ApiFamily::Other, None));
        assert_eq!(
            kind(Api::OpenAiResponses, Some("gpt-4o")).need().api,
            Some(Api::OpenAiResponses)
        );
    }

    #[test]
    fn the_mixed_scenario_parses_and_a_plain_one_has_the_implicit_profile() {
        let s = Scenario::from_toml(&mixed()).unwrap();
        assert_eq!(s.profiles.iter().map(|p| p.members).sum::<usize>(), s.members);
        assert!(s.profiles.iter().any(|p| p.upstreams.len() > 1));
        let small = std::fs::read_to_string(format!(
            "{}/scenarios/small-team.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let s = Scenario::from_toml(&small).unwrap();
        let p = s.member_profiles();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].members, p[0].upstreams[0].api), (5, Api::Any));
        assert!(
            !serde_json::to_string(&s).unwrap().contains("profiles"),
            "a scenario without profiles serializes as before"
        );
    }

    #[test]
    fn bad_profiles_are_clear_errors() {
        let good = mixed();
        for (from, to, says) in [
            ("members = 12", "members = 13", "add up to 12"),
            ("name = \"openai\"", "name = \"anthropic\"", "two profiles"),
            ("name = \"openai\"", "name = \"\"", "a name of 1 to"),
            (
                "api = \"openai-chat\"",
                "api = \"openai-chatty\"",
                "unknown variant",
            ),
            ("\"gpt-4o-mini\"]", "\"gpt 4o\"]", "not visible ASCII"),
            ("min = 40, max = 60", "min = 60, max = 40", "min <= max"),
            ("min = 40, max = 60", "min = 0, max = 40", "min <= max"),
            ("weight = 0.02", "weight = 0.0", "above 0"),
            ("weight = 0.02", "weight = nan", "above 0"),
            ("demand_factor = 0.6", "demand_factor = -1.0", "[0, 100]"),
            (
                "demand_factor = 0.6",
                "demand_factor = 0.6\nsurprise = 1",
                "unknown field",
            ),
        ] {
            let text = good.replacen(from, to, 1);
            assert_ne!(text, good, "{from}");
            let err = Scenario::from_toml(&text).expect_err(to).to_string();
            assert!(err.contains(says), "{to}: {err}");
        }
        let no_upstreams = good.replacen(
            "upstreams = [{ api = \"openai-chat\"",
            "upstreams = []\nx = [{ api = \"openai-chat\"",
            1,
        );
        assert!(Scenario::from_toml(&no_upstreams).is_err());
        let mut s = Scenario::from_toml(&good).unwrap();
        s.profiles[0].upstreams = vec![s.profiles[0].upstreams[0].clone(); MAX_CAPABILITIES + 1];
        assert!(s.validate().unwrap_err().to_string().contains("1 to 8"));
        let mut s = Scenario::from_toml(&good).unwrap();
        s.profiles[0].requests = vec![s.profiles[0].requests[0].clone(); MAX_REQUEST_KINDS + 1];
        assert!(s.validate().is_err());
        let mut s = Scenario::from_toml(&good).unwrap();
        s.profiles[0].requests[0].model = Some("m".repeat(97));
        assert!(s.validate().unwrap_err().to_string().contains("97 bytes"));
    }
}
