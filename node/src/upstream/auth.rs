//! How the key reaches the upstream ([`AuthStyle`]) and the fixed headers sent with every request, both checked
//! once when the settings are read so a bad name or value fails the start with a sentence, not a request later.

use std::str::FromStr;

use super::*;

/// Headers the HTTP client itself sets or that frame the message: never an auth header, never an extra header.
const RESERVED: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// Credentials a caller may send that are never forwarded upstream, whatever the auth style: the upstream is
/// the lender's account, and a borrower's (or a tool's placeholder) key has no business there. The one list, in
/// `protocol` (the gateway drops the same headers before a request leaves the member's node at all).
pub(super) use lendmesh_protocol::scrub::CREDENTIAL_HEADERS as CALLER_CREDENTIALS;

/// How the API key is sent to the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>` (OpenAI and most OpenAI-compatible servers). Written `bearer`.
    #[default]
    Bearer,
    /// `x-api-key: <key>` (Anthropic). Written `x-api-key`.
    XApiKey,
    /// `<name>: <key>` for any header name, e.g. `api-key` (Azure OpenAI). Written `header:<name>`; the name is
    /// stored lower-case.
    Header(String),
}

impl AuthStyle {
    /// The header that carries the key.
    pub fn header_name(&self) -> HeaderName {
        match self {
            AuthStyle::Bearer => reqwest::header::AUTHORIZATION,
            AuthStyle::XApiKey => HeaderName::from_static("x-api-key"),
            // Checked when parsed and by `check`; an unchecked bad name falls back to a header no server reads.
            AuthStyle::Header(name) => HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|_| HeaderName::from_static("x-lendmesh-invalid-auth-header")),
        }
    }

    /// Refuses a `Header` name that is not valid HTTP or that the client sets itself (a style built in code
    /// rather than parsed).
    pub fn check(&self) -> Result<(), String> {
        if let AuthStyle::Header(name) = self {
            check_header_name(name, "the auth header")?;
        }
        Ok(())
    }

    /// The header value for `key`, marked sensitive (never printed by `Debug`, kept out of HPACK tables).
    pub(super) fn header_value(&self, key: &str) -> Option<HeaderValue> {
        let text = match self {
            AuthStyle::Bearer => format!("Bearer {key}"),
            AuthStyle::XApiKey | AuthStyle::Header(_) => key.to_owned(),
        };
        let mut value = HeaderValue::try_from(text).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Display for AuthStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthStyle::Bearer => f.write_str("bearer"),
            AuthStyle::XApiKey => f.write_str("x-api-key"),
            AuthStyle::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl FromStr for AuthStyle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("bearer") {
            return Ok(AuthStyle::Bearer);
        }
        if s.eq_ignore_ascii_case("x-api-key") {
            return Ok(AuthStyle::XApiKey);
        }
        let Some(name) = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("header:"))
            .and(s.get(7..))
        else {
            return Err(format!(
                "auth {s:?} is not known; use \"bearer\" (Authorization: Bearer <key>), \"x-api-key\" \
                 (Anthropic) or \"header:<name>\" (e.g. \"header:api-key\" for Azure)"
            ));
        };
        let name = check_header_name(name.trim(), "the auth header")?;
        Ok(if name == "x-api-key" {
            AuthStyle::XApiKey
        } else {
            AuthStyle::Header(name.as_str().to_owned())
        })
    }
}

impl serde::Serialize for AuthStyle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for AuthStyle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A header name the upstream may be sent: valid HTTP and not one the client sets itself.
fn check_header_name(name: &str, what: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!(
            "{what} name {name:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only, \
             no spaces or colons)"
        )
    })?;
    if RESERVED.contains(&parsed.as_str()) || parsed.as_str().starts_with("proxy-") {
        return Err(format!(
            "{what} cannot be {name:?}: the HTTP client sets that header itself"
        ));
    }
    Ok(parsed)
}

/// Checks one extra header: a valid name the client does not set itself, and a value of visible ASCII (tabs and
/// spaces allowed, no control characters or newlines).
pub fn check_extra_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = check_header_name(name.trim(), "extra header")?;
    let v = HeaderValue::from_str(value.trim()).map_err(|_| {
        format!(
            "value of extra header {name:?} contains characters that cannot be sent in an HTTP header \
             (control characters, newlines or non-ASCII)"
        )
    })?;
    Ok((n, v))
}

/// Checks the extra headers together with the auth style: the style's header name valid, each extra header valid, none twice (names are case-insensitive),
/// none the auth header itself (the key goes in `key_env`, never in the config).
pub fn check_extra_headers<'a>(
    auth: &AuthStyle,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<HeaderMap, String> {
    auth.check()?;
    let auth_name = auth.header_name();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let (n, v) = check_extra_header(name, value)?;
        if n == auth_name {
            return Err(format!(
                "extra header {name:?} is the auth header (auth = \"{auth}\"); the key comes from key_env, \
                 never from the config"
            ));
        }
        if map.contains_key(&n) {
            return Err(format!(
                "extra header {name:?} is set twice (names are case-insensitive)"
            ));
        }
        map.insert(n, v);
    }
    Ok(map)
}

/// Parses `--upstream-header NAME=VALUE`.
pub fn parse_header_flag(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE (e.g. anthropic-version=2023-06-01)"))?;
    let (n, _) = check_extra_header(name, value)?;
    Ok((n.as_str().to_owned(), value.trim().to_owned()))
}
