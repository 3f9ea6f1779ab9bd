//! What a lender can serve (docs/design.md §5.1): per shared upstream, its API, the models it serves and its
//! headroom, carried in the attestation, so a borrower sends a request only to a lender that can serve it.
//!
//! A request **needs** ([`Need`]) an API — the one its path names (`/v1/chat/completions`, `/v1/responses`,
//! `/v1/messages`), else only the broad family of the path ([`ApiFamily`]) — and, when its JSON body names one, a
//! model. An upstream's [`Capability`] **serves** it when the APIs match (an upstream of [`Api::Any`] serves every
//! request; one of a known API serves its own path and the other paths of its family, such as `/v1/models`) and the
//! model is among its models (an empty list: any model; an entry ending in `*`: a prefix). Routing then looks only
//! at capable lenders, each with the headroom of its best capable upstream (`routing::candidates_for`); the node
//! and the simulator share this.
//!
//! Bounded: at most [`MAX_CAPABILITIES`] upstreams per lender, [`MAX_MODELS`] models each, [`MAX_MODEL_LEN`] bytes
//! per model name; [`check`] refuses more (an attestation that claims more is rejected as malformed).

use serde::{Deserialize, Serialize};

use crate::headroom::HeadroomBucket;
use crate::scrub::{ApiFamily, Body};

/// Upstreams one lender may advertise.
pub const MAX_CAPABILITIES: usize = 8;
/// Models one upstream may list.
pub const MAX_MODELS: usize = 64;
/// Longest model name, in bytes.
pub const MAX_MODEL_LEN: usize = 96;

/// The API an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Api {
    /// OpenAI Chat Completions (`/v1/chat/completions`) and the rest of an OpenAI-compatible server.
    #[serde(rename = "openai-chat")]
    OpenAiChat,
    /// OpenAI Responses (`/v1/responses`) and the rest of an OpenAI-compatible server.
    #[serde(rename = "openai-responses")]
    OpenAiResponses,
    /// Anthropic Messages (`/v1/messages`, `/v1/messages/count_tokens`).
    AnthropicMessages,
    /// Any HTTP request (a generic upstream; also what a node that names no API advertises).
    Any,
}

impl Api {
    /// All of them.
    pub const ALL: [Api; 4] = [
        Api::OpenAiChat,
        Api::OpenAiResponses,
        Api::AnthropicMessages,
        Api::Any,
    ];

    /// The configuration name (`openai-chat`, `openai-responses`, `anthropic-messages`, `any`).
    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai-chat",
            Api::OpenAiResponses => "openai-responses",
            Api::AnthropicMessages => "anthropic-messages",
            Api::Any => "any",
        }
    }

    /// The API a request path names, if one.
    pub fn of_path(path_and_query: &str) -> Option<Api> {
        let path = path_and_query
            .split('?')
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        if path.ends_with("/v1/chat/completions") {
            Some(Api::OpenAiChat)
        } else if path.ends_with("/v1/responses") {
            Some(Api::OpenAiResponses)
        } else if path.ends_with("/v1/messages") || path.ends_with("/v1/messages/count_tokens") {
            Some(Api::AnthropicMessages)
        } else {
            None
        }
    }

    /// The broad family: which other paths this API's server answers.
    pub fn family(self) -> ApiFamily {
        match self {
            Api::OpenAiChat | Api::OpenAiResponses => ApiFamily::OpenAi,
            Api::AnthropicMessages => ApiFamily::Anthropic,
            Api::Any => ApiFamily::Other,
        }
    }
}

impl std::str::FromStr for Api {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Api::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            format!("unknown API '{s}'; use openai-chat, openai-responses, anthropic-messages or any")
        })
    }
}

/// What a request needs of an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// The API its path names, if one.
    pub api: Option<Api>,
    /// Its path's broad family.
    pub family: ApiFamily,
    /// The model its JSON body names, if any.
    pub model: Option<String>,
}

impl Need {
    /// What a request to `path_and_query` with `headers` and `body` needs.
    pub fn of(path_and_query: &str, headers: &[(String, Vec<u8>)], body: &Body) -> Need {
        let model = match body {
            Body::Json(m) => m.get("model").and_then(|v| v.as_str()).map(str::to_string),
            _ => None,
        };
        Need {
            api: Api::of_path(path_and_query),
            family: ApiFamily::of(path_and_query, headers),
            model,
        }
    }

    /// A short description for errors: `model m (anthropic-messages)`, `openai-chat`, `any request`.
    pub fn describe(&self) -> String {
        let api = self.api.map(Api::name).unwrap_or(match self.family {
            ApiFamily::Anthropic => "an Anthropic API path",
            ApiFamily::OpenAi => "an OpenAI API path",
            ApiFamily::Other => "a request of no known API",
        });
        match &self.model {
            Some(m) => format!("model {m} ({api})"),
            None => api.to_string(),
        }
    }
}

/// One upstream a lender shares, as its attestation says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Its API.
    pub api: Api,
    /// The models it serves; empty: any. An entry ending in `*` matches by prefix.
    pub models: Vec<String>,
    /// What it can lend.
    pub headroom: HeadroomBucket,
    /// When its window resets (ms since the Unix epoch).
    pub resets_at_ms: u64,
}

/// Whether `pattern` (a model name, or a prefix ending in `*`) matches `model` (ASCII case ignored).
pub fn model_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(model),
    }
}

impl Capability {
    /// Whether this upstream's API can serve `need` (models aside).
    pub fn speaks(api: Api, need: &Need) -> bool {
        match (api, need.api) {
            (Api::Any, _) => true,
            (a, Some(n)) => a == n,
            (a, None) => need.family != ApiFamily::Other && a.family() == need.family,
        }
    }

    /// Whether this upstream serves `need`.
    pub fn serves(&self, need: &Need) -> bool {
        Self::serves_with(self.api, &self.models, need)
    }

    /// Whether an upstream of `api` serving `models` serves `need`.
    pub fn serves_with(api: Api, models: &[String], need: &Need) -> bool {
        Self::speaks(api, need)
            && (models.is_empty()
                || need
                    .model
                    .as_deref()
                    .is_none_or(|m| models.iter().any(|p| model_matches(p, m))))
    }
}

/// Why a list of capabilities is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    /// More upstreams than [`MAX_CAPABILITIES`].
    #[error("{0} upstreams advertised, over the limit of {MAX_CAPABILITIES}")]
    TooManyUpstreams(usize),
    /// More models than [`MAX_MODELS`] on one upstream.
    #[error("{0} models on one upstream, over the limit of {MAX_MODELS}")]
    TooManyModels(usize),
    /// A model name that is empty, longer than [`MAX_MODEL_LEN`] or not visible ASCII.
    #[error("model name of {0} bytes is empty, over {MAX_MODEL_LEN} bytes, or not visible ASCII")]
    BadModel(usize),
}

/// Checks the bounds of a lender's capabilities.
pub fn check(caps: &[Capability]) -> Result<(), CapabilityError> {
    if caps.len() > MAX_CAPABILITIES {
        return Err(CapabilityError::TooManyUpstreams(caps.len()));
    }
    for c in caps {
        check_models(&c.models)?;
    }
    Ok(())
}

/// Checks one upstream's model list.
pub fn check_models(models: &[String]) -> Result<(), CapabilityError> {
    if models.len() > MAX_MODELS {
        return Err(CapabilityError::TooManyModels(models.len()));
    }
    if let Some(m) = models
        .iter()
        .find(|m| m.is_empty() || m.len() > MAX_MODEL_LEN || !m.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(CapabilityError::BadModel(m.len()));
    }
    Ok(())
}

/// Units of a window of `capacity` that its member keeps (never lent): the larger of `reserve` units and
/// `keep_share` (clamped to 0..=1) of the window, rounded up. Lending stops when only that is left; the member's own
/// requests may use it.
pub fn kept(capacity: u64, reserve: u64, keep_share: f64) -> u64 {
    let share = (capacity as f64 * keep_share.clamp(0.0, 1.0)).ceil();
    reserve.max(share as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(path: &str, body: &str) -> Need {
        Need::of(path, &[], &Body::parse(body.as_bytes()))
    }

    fn cap(api: Api, models: &[&str], headroom: HeadroomBucket) -> Capability {
        Capability {
            api,
            models: models.iter().map(|m| m.to_string()).collect(),
            headroom,
            resets_at_ms: 1_000,
        }
    }

    #[test]
    fn a_request_needs_its_paths_api_and_its_model() {
        let n = need(
            "/v1/messages?beta=true",
            r#"{"model":"claude-sonnet-4-5","messages":[]}"#,
        );
        assert_eq!(n.api, Some(Api::AnthropicMessages));
        assert_eq!(n.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(n.describe(), "model claude-sonnet-4-5 (anthropic-messages)");
        assert_eq!(need("/v1/responses", "{}").api, Some(Api::OpenAiResponses));
        let models = need("/v1/models", "");
        assert_eq!((models.api, models.family), (None, ApiFamily::OpenAi));
        assert_eq!(need("/v1/echo", "not json").model, None);
    }

    #[test]
    fn upstreams_serve_their_api_and_models() {
        let anthropic = need("/v1/messages", r#"{"model":"claude-sonnet-4-5"}"#);
        let chat = need("/v1/chat/completions", r#"{"model":"gpt-4o"}"#);
        let list = need("/v1/models", "");
        let other = need("/api/generate", r#"{"model":"llama3"}"#);
        let openai = cap(Api::OpenAiChat, &[], HeadroomBucket::High);
        assert!(!openai.serves(&anthropic) && openai.serves(&chat) && openai.serves(&list));
        assert!(
            !openai.serves(&other),
            "a path of no known API goes only to a generic upstream"
        );
        let any = cap(Api::Any, &[], HeadroomBucket::High);
        assert!([&anthropic, &chat, &list, &other].iter().all(|n| any.serves(n)));
        let claude = cap(
            Api::AnthropicMessages,
            &["claude-sonnet-*", "claude-opus-4-1"],
            HeadroomBucket::High,
        );
        assert!(claude.serves(&anthropic));
        assert!(claude.serves(&need("/v1/messages", r#"{"model":"CLAUDE-OPUS-4-1"}"#)));
        assert!(!claude.serves(&need("/v1/messages", r#"{"model":"claude-haiku-4-5"}"#)));
        assert!(
            claude.serves(&need("/v1/messages/count_tokens", "{}")),
            "no model named: any"
        );
        let responses = cap(Api::OpenAiResponses, &[], HeadroomBucket::High);
        assert!(
            !responses.serves(&chat),
            "chat completions and responses are told apart"
        );
    }

    #[test]
    fn the_member_keeps_the_larger_of_its_reserve_and_its_share() {
        assert_eq!(kept(60, 0, 0.3), 18);
        assert_eq!(kept(10, 5, 0.3), 5);
        assert_eq!(kept(7, 0, 0.3), 3, "rounded up");
        assert_eq!(kept(10, 0, 2.0), 10, "clamped");
        assert_eq!(kept(10, 0, f64::NAN), 0);
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(
            check(&vec![cap(Api::Any, &[], HeadroomBucket::High); 9]),
            Err(CapabilityError::TooManyUpstreams(9))
        );
        let many: Vec<String> = (0..65).map(|i| format!("m{i}")).collect();
        assert_eq!(check_models(&many), Err(CapabilityError::TooManyModels(65)));
        assert_eq!(
            check_models(&["x".repeat(97)]),
            Err(CapabilityError::BadModel(97))
        );
        assert_eq!(check_models(&["a b".into()]), Err(CapabilityError::BadModel(3)));
        assert_eq!(check_models(&[String::new()]), Err(CapabilityError::BadModel(0)));
        assert!(check(&vec![cap(Api::Any, &["gpt-*"], HeadroomBucket::High); 8]).is_ok());
        assert_eq!("anthropic-messages".parse::<Api>(), Ok(Api::AnthropicMessages));
        assert!("claude".parse::<Api>().is_err());
    }
}
