//! What a borrowed request may carry to a lender (docs/design.md §9.1): the rules that keep a tool's metadata — its
//! keys, ids, client fingerprint and the environment it writes into the prompt — on the member's node.
//!
//! A lender opens every request it serves; anything in it that is the same on each of one member's requests links
//! them, whatever the blind tokens hide. Tools add such things on their own: Claude Code sends its session id, a
//! stable per-machine `device_id` in `metadata.user_id`, eight `X-Stainless-*` headers and an environment block with
//! the working directory under the user's home; the OpenAI SDK's callers set `user`, `safety_identifier` and
//! `prompt_cache_key`. So a borrowed request is rebuilt here from what the upstream needs, not filtered by what is
//! known to leak:
//!
//! - **Headers by allowlist** ([`borrowed_headers`]): per [`ApiFamily`], only [`allowed_headers`], lower case, in
//!   that fixed order. Everything else stays home, credentials first among it.
//! - **Body fields that identify** ([`scrub_body`]): Anthropic `metadata.user_id` becomes a per-conversation random
//!   value (in Claude Code's own shape when it had that shape); OpenAI `user`, `safety_identifier` and `metadata` go,
//!   and `prompt_cache_key` becomes the per-conversation value. A body is parsed (after the gateway's size limit) and
//!   written again only when something changed; a body that is not JSON goes as it is, and says so.
//! - **Tool-injected environment** ([`redact_environment`]): in the text a tool writes (system prompts, `system` and
//!   `developer` messages, `<system-reminder>` and `<environment_context>` blocks) the working directory, paths
//!   under a home directory, platform, shell and OS version become [`WITHHELD`]. The user's own messages and what
//!   tools return are never touched: they are content.
//!
//! The per-conversation value comes from the caller (the node derives it from a per-process secret and the
//! conversation, see [`ConversationHint`]): the turns of one conversation carry the same value — their content links
//! them already — and two conversations never do.
//!
//! Pure functions, no I/O: the node's gateway applies them to every borrowed request, and the own-upstream path keeps
//! its passthrough minus [`CREDENTIAL_HEADERS`].

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What replaces withheld environment details.
pub const WITHHELD: &str = "[withheld]";

/// Which API a request speaks, from its path (and `anthropic-version` for paths of no known API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiFamily {
    /// Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`, `/v1/complete`).
    Anthropic,
    /// OpenAI's API and the many servers compatible with it (`/v1/chat/completions`, `/v1/responses`, …).
    OpenAi,
    /// Anything else: an HTTP upstream of no known API.
    Other,
}

/// Anthropic API paths (the path without its query, after any prefix).
const ANTHROPIC_PATHS: &[&str] = &["/v1/messages", "/v1/messages/count_tokens", "/v1/complete"];
/// OpenAI-compatible API paths.
const OPENAI_PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/models",
];

impl ApiFamily {
    /// The family of a request to `path_and_query` with `headers` (names compared without case).
    pub fn of(path_and_query: &str, headers: &[(String, Vec<u8>)]) -> ApiFamily {
        let path = path_and_query.split('?').next().unwrap_or("");
        let path = path.trim_end_matches('/');
        if ANTHROPIC_PATHS.iter().any(|p| path.ends_with(p)) {
            return ApiFamily::Anthropic;
        }
        if OPENAI_PATHS.iter().any(|p| path.ends_with(p)) || path.contains("/v1/models/") {
            return ApiFamily::OpenAi;
        }
        if headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("anthropic-version"))
        {
            return ApiFamily::Anthropic;
        }
        ApiFamily::Other
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ApiFamily::Anthropic => "anthropic",
            ApiFamily::OpenAi => "openai",
            ApiFamily::Other => "other",
        }
    }
}

/// Headers every borrowed request may carry.
const COMMON_HEADERS: &[&str] = &["content-type", "content-encoding", "accept"];
/// And per family, what its upstream needs to serve the request.
const ANTHROPIC_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta"];
const OPENAI_HEADERS: &[&str] = &["openai-beta"];

/// The one list of the headers a borrowed request of `family` may carry, in the order they are sent.
pub fn allowed_headers(family: ApiFamily) -> impl Iterator<Item = &'static str> {
    let own: &[&str] = match family {
        ApiFamily::Anthropic => ANTHROPIC_HEADERS,
        ApiFamily::OpenAi => OPENAI_HEADERS,
        ApiFamily::Other => &[],
    };
    COMMON_HEADERS.iter().chain(own).copied()
}

/// The headers of a borrowed request: those of `headers` in [`allowed_headers`], lower case, in that order (the
/// values of a repeated header in the order they came). Nothing else leaves.
pub fn borrowed_headers(family: ApiFamily, headers: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in allowed_headers(family) {
        for (k, v) in headers {
            if k.eq_ignore_ascii_case(name) {
                out.push((name.to_string(), v.clone()));
            }
        }
    }
    out
}

/// Headers that carry a tool's credentials or the account they belong to: they never leave the member's node, on any
/// path (the upstream's key is the node's own, or the lender's).
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "openai-organization",
    "openai-project",
];

/// Whether `name` is one of [`CREDENTIAL_HEADERS`].
pub fn is_credential(name: &str) -> bool {
    CREDENTIAL_HEADERS.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// Headers with which tools name their own session: read to keep a conversation on one lender, never sent.
pub const TOOL_SESSION_HEADERS: &[&str] = &["x-claude-code-session-id", "session_id", "conversation_id"];

/// What names a conversation on the member's node, when the tool did not name it with `Lendmesh-Conversation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConversationHint {
    /// The tool's own session id header ([`TOOL_SESSION_HEADERS`]).
    ToolSession(Vec<u8>),
    /// SHA-256 of the conversation's start: the system prompt and the first message (as pooling proxies key a
    /// conversation). Later turns repeat that start, so they hash the same.
    Start([u8; 32]),
}

impl ConversationHint {
    /// Bytes to key the conversation on (hashed again, with a secret, by the caller).
    pub fn key(&self) -> Vec<u8> {
        match self {
            ConversationHint::ToolSession(v) => [b"session:".as_slice(), v].concat(),
            ConversationHint::Start(h) => [b"start:".as_slice(), h].concat(),
        }
    }
}

/// A request body, parsed at most once.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// No body.
    Empty,
    /// A body that is not a JSON object (or not JSON at all): it goes as it is.
    NotJson,
    /// A JSON object.
    Json(Map<String, Value>),
}

impl Body {
    /// Parses `bytes` (already within the gateway's size limit; `serde_json` bounds nesting at 128).
    pub fn parse(bytes: &[u8]) -> Body {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Body::Empty;
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Body::Json(m),
            _ => Body::NotJson,
        }
    }
}

/// How a conversation is named on the member's node: a tool's session header, else the start of the conversation in
/// a JSON body of a known API. `None` for a request of no known conversation.
pub fn conversation_hint(
    family: ApiFamily,
    headers: &[(String, Vec<u8>)],
    body: &Body,
) -> Option<ConversationHint> {
    for name in TOOL_SESSION_HEADERS {
        if let Some((_, v)) = headers
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_empty())
        {
            return Some(ConversationHint::ToolSession(v.clone()));
        }
    }
    let Body::Json(m) = body else { return None };
    let start: Vec<&Value> = match family {
        ApiFamily::Anthropic => {
            let first = m
                .get("messages")
                .and_then(|v| v.as_array())
                .and_then(|a| a.first());
            [m.get("system"), first].into_iter().flatten().collect()
        }
        ApiFamily::OpenAi => {
            let mut start: Vec<&Value> = m.get("instructions").into_iter().collect();
            let items = m
                .get("messages")
                .or_else(|| m.get("input"))
                .and_then(|v| v.as_array());
            // The leading system and developer messages and the first message after them.
            for item in items.into_iter().flatten() {
                start.push(item);
                let role = item.get("role").and_then(|r| r.as_str());
                if !matches!(role, Some("system" | "developer")) {
                    break;
                }
            }
            if let Some(s @ Value::String(_)) = m.get("input") {
                start.push(s);
            }
            start
        }
        ApiFamily::Other => Vec::new(),
    };
    if start.is_empty() {
        return None;
    }
    let mut h = Sha256::new();
    h.update(family.label().as_bytes());
    for v in start {
        h.update(v.to_string().as_bytes());
        h.update([0u8]);
    }
    Some(ConversationHint::Start(h.finalize().into()))
}

/// What [`scrub_body`] changed, for the node's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Identifying fields removed or replaced.
    pub fields: u32,
    /// Tool-written texts with environment details withheld.
    pub environment: u32,
    /// The body was not JSON: it went as it was.
    pub not_json: bool,
}

/// Whether tool-injected environment is withheld (on by default for borrowed requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubSettings {
    /// Withhold the environment block tools write into the prompt ([`redact_environment`]).
    pub redact_environment: bool,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        ScrubSettings {
            redact_environment: true,
        }
    }
}

/// The body of a borrowed request: identifying fields replaced by `conversation` (a per-conversation random value,
/// at least 32 hex characters) or removed, tool-written environment withheld. The bytes are the original ones when
/// nothing changed (or the body is not JSON), else the rewritten JSON.
pub fn scrub_body(
    family: ApiFamily,
    original: &[u8],
    body: Body,
    conversation: &str,
    settings: ScrubSettings,
) -> (Vec<u8>, ScrubReport) {
    let mut report = ScrubReport::default();
    let mut m = match body {
        Body::Json(m) => m,
        Body::NotJson => {
            report.not_json = true;
            return (original.to_vec(), report);
        }
        Body::Empty => return (original.to_vec(), report),
    };
    match family {
        ApiFamily::Anthropic => scrub_anthropic(&mut m, conversation, settings, &mut report),
        ApiFamily::OpenAi => scrub_openai(&mut m, conversation, settings, &mut report),
        ApiFamily::Other => {}
    }
    if report.fields == 0 && report.environment == 0 {
        return (original.to_vec(), report);
    }
    let bytes = serde_json::to_vec(&Value::Object(m)).unwrap_or_else(|_| original.to_vec());
    (bytes, report)
}

fn scrub_anthropic(
    m: &mut Map<String, Value>,
    conversation: &str,
    settings: ScrubSettings,
    report: &mut ScrubReport,
) {
    if let Some(Value::Object(meta)) = m.get_mut("metadata")
        && let Some(user_id) = meta.get_mut("user_id")
    {
        *user_id = Value::String(replace_user_id(user_id, conversation));
        report.fields += 1;
    }
    if !settings.redact_environment {
        return;
    }
    if let Some(system) = m.get_mut("system") {
        redact_content(system, true, report);
    }
    for msg in m
        .get_mut("messages")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let tool_written = matches!(msg.get("role").and_then(Value::as_str), Some("system"));
        if let Some(content) = msg.get_mut("content") {
            redact_content(content, tool_written, report);
        }
    }
}

fn scrub_openai(
    m: &mut Map<String, Value>,
    conversation: &str,
    settings: ScrubSettings,
    report: &mut ScrubReport,
) {
    for field in ["user", "safety_identifier", "metadata"] {
        if m.remove(field).is_some() {
            report.fields += 1;
        }
    }
    if let Some(key) = m.get_mut("prompt_cache_key") {
        *key = Value::String(conversation.to_string());
        report.fields += 1;
    }
    if !settings.redact_environment {
        return;
    }
    if let Some(instructions) = m.get_mut("instructions") {
        redact_content(instructions, true, report);
    }
    for key in ["messages", "input"] {
        for msg in m.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten() {
            let tool_written = matches!(
                msg.get("role").and_then(Value::as_str),
                Some("system" | "developer")
            );
            if let Some(content) = msg.get_mut("content") {
                redact_content(content, tool_written, report);
            }
        }
    }
}

/// The replacement of an Anthropic `metadata.user_id`: Claude Code's JSON shape (`device_id`, `account_uuid`,
/// `session_id`) kept with values derived from the per-conversation one (a 64-hex device id and a UUID-shaped
/// session id, each its own SHA-256), anything else the per-conversation value itself.
fn replace_user_id(old: &Value, conversation: &str) -> String {
    let claude_code = old
        .as_str()
        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
        .filter(|o| o.contains_key("device_id"));
    let derived = |what: &str| hex::encode(Sha256::digest(format!("{what}:{conversation}")));
    match claude_code {
        Some(mut o) => {
            o.insert("device_id".into(), Value::String(derived("device")));
            if o.contains_key("account_uuid") {
                o.insert("account_uuid".into(), Value::String(String::new()));
            }
            if o.contains_key("session_id") {
                o.insert(
                    "session_id".into(),
                    Value::String(uuid_shape(&derived("session"))),
                );
            }
            Value::Object(o).to_string()
        }
        None => conversation.to_string(),
    }
}

/// The first 32 hex digits of `hex` laid out as a UUID (8-4-4-4-12).
fn uuid_shape(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Withholds environment details in a `content` (a string, or an array of blocks with `text`): every text when
/// `tool_written`, else only the blocks a tool injects into a user's turn (`<system-reminder>`,
/// `<environment_context>`).
fn redact_content(content: &mut Value, tool_written: bool, report: &mut ScrubReport) {
    match content {
        Value::String(s) => redact_text(s, tool_written, report),
        Value::Array(blocks) => {
            for b in blocks {
                match b {
                    Value::String(s) => redact_text(s, tool_written, report),
                    Value::Object(o) => {
                        if let Some(Value::String(s)) = o.get_mut("text") {
                            redact_text(s, tool_written, report);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Blocks a tool writes into a user's turn.
const INJECTED_PREFIXES: &[&str] = &["<system-reminder>", "<environment_context>"];

fn redact_text(s: &mut String, tool_written: bool, report: &mut ScrubReport) {
    let injected = INJECTED_PREFIXES.iter().any(|p| s.trim_start().starts_with(p));
    if !(tool_written || injected) {
        return;
    }
    if let Some(r) = redact_environment(s) {
        *s = r;
        report.environment += 1;
    }
}

/// Lines whose value is the environment (after optional `- ` and spaces): withheld whole.
const ENVIRONMENT_KEYS: &[&str] = &[
    "Primary working directory:",
    "Working directory:",
    "Additional working directories:",
    "Platform:",
    "Shell:",
    "OS Version:",
    "OS:",
    "My operating system is:",
    "I'm currently working in the directory:",
];
/// XML-style elements whose content is the environment (Codex's `<environment_context>`).
const ENVIRONMENT_ELEMENTS: &[&str] = &["cwd", "shell"];
/// Where home directories start: a path token beginning with one of these names a user.
const HOME_PREFIXES: &[&str] = &["/home/", "/Users/", "C:\\Users\\", "C:/Users/", "/root/"];

/// `text` with its environment withheld: the value of each [`ENVIRONMENT_KEYS`] line and [`ENVIRONMENT_ELEMENTS`]
/// element, and every path token under a home directory ([`HOME_PREFIXES`]; a token runs to whitespace, a quote, a
/// backtick or a bracket) become [`WITHHELD`]. `None` when there is nothing to withhold.
pub fn redact_environment(text: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let body = line.trim_start_matches([' ', '\t', '-', '*']).trim_start();
        let indent = &line[..line.len() - body.len()];
        if let Some(key) = ENVIRONMENT_KEYS.iter().find(|k| body.starts_with(**k)) {
            let withheld = format!("{indent}{key} {WITHHELD}");
            changed |= withheld != line;
            out.push_str(&withheld);
            continue;
        }
        let line = withhold_elements(line, &mut changed);
        out.push_str(&withhold_home_paths(&line, &mut changed));
    }
    changed.then_some(out)
}

fn withhold_elements(line: &str, changed: &mut bool) -> String {
    let mut line = line.to_string();
    for name in ENVIRONMENT_ELEMENTS {
        let (open, close) = (format!("<{name}>"), format!("</{name}>"));
        let mut from = 0;
        while let Some(start) = line[from..].find(&open).map(|i| from + i + open.len()) {
            let Some(end) = line[start..].find(&close).map(|i| start + i) else {
                break;
            };
            if &line[start..end] != WITHHELD {
                line.replace_range(start..end, WITHHELD);
                *changed = true;
            }
            from = start + WITHHELD.len() + close.len();
        }
    }
    line
}

fn withhold_home_paths(line: &str, changed: &mut bool) -> String {
    let ends = |c: char| c.is_whitespace() || "\"'`()[]{}<>,;".contains(c);
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some((at, _)) = HOME_PREFIXES
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p)))
        .min_by_key(|(i, _)| *i)
    {
        out.push_str(&rest[..at]);
        let token_len = rest[at..].find(ends).unwrap_or(rest.len() - at);
        out.push_str(WITHHELD);
        *changed = true;
        rest = &rest[at + token_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
