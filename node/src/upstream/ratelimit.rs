//! Learning rate limits from response headers: OpenAI, Anthropic, the IETF RateLimit fields, Retry-After.
//!
//! LLM providers limit **requests** and **tokens** per window, and either can run out first. Each family is read
//! for both:
//!
//! | family | requests | other quotas |
//! |---|---|---|
//! | OpenAI | `x-ratelimit-{limit,remaining,reset}-requests` | `x-ratelimit-{limit,remaining,reset}-tokens` |
//! | Anthropic | `anthropic-ratelimit-requests-{limit,remaining,reset}` | `anthropic-ratelimit-{tokens,input-tokens,output-tokens}-*` |
//! | IETF structured | `RateLimit` items whose policy has `qu="requests"` or no `qu` | items whose `RateLimit-Policy` has another `qu` (`tokens`, `content-bytes`, …) and a `q` |
//! | IETF older drafts | `RateLimit-Limit` … or `RateLimit: limit=…` | none |
//!
//! **The headroom rule.** Headroom stays in request units ([`Headroom`]), so the attestation bucket needs no new
//! field. A quota in another unit (the tightest by fraction left, when a family sends several) is scaled to
//! requests: with a window of `capacity` requests (the learned request limit, else the configured budget) and a
//! fraction `f = remaining / limit` of the quota left, it allows `floor(capacity × f)` requests. The smaller of that
//! and the requests left is the headroom (a tie goes to requests), and its reset is the reset of that dimension.
//! Tokens at 10 % of their limit and requests at 80 % report 10 % of capacity, resetting when the tokens do; when
//! they do, the requests' 80 % holds until their own reset ([`Scaled::then`]). A quota count without its limit
//! (Azure sends `x-ratelimit-remaining-tokens` alone) tells nothing about the fraction and is ignored.

#[allow(unused_imports)]
use super::*;

/// Which header family a [`LearnedLimit`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitSource {
    /// `anthropic-ratelimit-requests-{limit,remaining,reset}` and `anthropic-ratelimit-{tokens,input-tokens,
    /// output-tokens}-*` (resets are RFC 3339 timestamps).
    Anthropic,
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets are Go-style durations such as `6m0s`).
    OpenAi,
    /// IETF httpapi current draft: `RateLimit: "name";r=..;t=..` with `RateLimit-Policy: "name";q=..;w=..;qu=..`.
    IetfStructured,
    /// IETF httpapi older draft, combined: `RateLimit: limit=100, remaining=50, reset=30`.
    IetfCombined,
    /// IETF httpapi older draft, separate: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    IetfSeparate,
    /// Only `Retry-After` was present.
    RetryAfter,
}

/// What a [`Quota`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaUnit {
    /// Tokens, input and output together (OpenAI `-tokens`, Anthropic `tokens`, IETF `qu="tokens"`).
    Tokens,
    /// Input tokens (Anthropic `input-tokens`).
    InputTokens,
    /// Output tokens (Anthropic `output-tokens`).
    OutputTokens,
    /// Another IETF quota unit (`content-bytes`, `concurrent-requests`, …).
    Other,
}

/// A limit counted in something other than requests, with both its limit and what is left (a count without
/// its limit says nothing about how close the upstream is to refusing, and is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// What it counts.
    pub unit: QuotaUnit,
    /// Units per window (more than 0).
    pub limit: u64,
    /// Units left (at most `limit`).
    pub remaining: u64,
    /// When it is full again.
    pub resets_at_ms: Option<u64>,
}

impl Quota {
    fn new(
        unit: QuotaUnit,
        limit: Option<u64>,
        remaining: Option<u64>,
        resets_at_ms: Option<u64>,
    ) -> Option<Self> {
        let limit = limit.filter(|&l| l > 0)?;
        Some(Quota {
            unit,
            limit,
            remaining: remaining?.min(limit),
            resets_at_ms,
        })
    }

    /// `remaining / limit` of `capacity`, rounded down.
    pub fn scaled(&self, capacity: u64) -> u64 {
        let scaled = u128::from(capacity) * u128::from(self.remaining) / u128::from(self.limit);
        u64::try_from(scaled).unwrap_or(u64::MAX)
    }

    /// The one with the smaller fraction left; on a tie, the one that resets later.
    fn tighter(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let (fa, fb) = (
                    u128::from(a.remaining) * u128::from(b.limit),
                    u128::from(b.remaining) * u128::from(a.limit),
                );
                Some(if fa < fb || (fa == fb && a.resets_at_ms >= b.resets_at_ms) {
                    a
                } else {
                    b
                })
            }
            (a, b) => a.or(b),
        }
    }
}

/// What one response's headers say about the upstream's rate limit. Instants are ms since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedLimit {
    /// The family the window fields came from (the first present of Anthropic, OpenAI, IETF structured, IETF
    /// combined, IETF separate).
    pub source: RateLimitSource,
    /// Requests per window.
    pub limit: Option<u64>,
    /// Requests left in the window.
    pub remaining: Option<u64>,
    /// When the request window resets.
    pub resets_at_ms: Option<u64>,
    /// The tightest quota in another unit (tokens), if the family has any with a limit.
    pub quota: Option<Quota>,
    /// `Retry-After`, as an instant.
    pub retry_after_ms: Option<u64>,
}

/// Which dimension binds a [`Scaled`] estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The request count.
    Requests,
    /// A quota in another unit, scaled to requests.
    Quota(QuotaUnit),
}

/// A [`LearnedLimit`] in request units: the tighter of requests and the quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scaled {
    /// Requests left, as far as the tighter dimension allows.
    pub remaining: Option<u64>,
    /// When the tighter dimension resets.
    pub resets_at_ms: Option<u64>,
    /// Which dimension that is.
    pub bound_by: Binding,
    /// The looser dimension `(remaining, resets_at_ms)` when it resets later than the tighter one: it binds once
    /// the tighter one is full again.
    pub then: Option<(u64, u64)>,
}

impl LearnedLimit {
    /// Expresses the headers in request units for a window of `capacity` requests (the learned request limit, or
    /// the configured budget): a quota with a fraction `f` left counts as `floor(capacity × f)` requests left, and
    /// the smaller of that and the requests left wins (a tie goes to requests), with its reset.
    pub fn in_requests(&self, capacity: u64) -> Scaled {
        let requests = Scaled {
            remaining: self.remaining,
            resets_at_ms: self.resets_at_ms,
            bound_by: Binding::Requests,
            then: None,
        };
        let Some(q) = self.quota else {
            return requests;
        };
        let quota = Scaled {
            remaining: Some(q.scaled(capacity)),
            resets_at_ms: q.resets_at_ms,
            bound_by: Binding::Quota(q.unit),
            then: None,
        };
        let Some(req_left) = self.remaining else {
            return quota;
        };
        let (tight, loose) = if quota.remaining < Some(req_left) {
            (quota, requests)
        } else {
            (requests, quota)
        };
        let then = match (tight.resets_at_ms, loose.remaining, loose.resets_at_ms) {
            (Some(t), Some(left), Some(l)) if l > t => Some((left, l)),
            _ => None,
        };
        Scaled { then, ..tight }
    }
}

/// The fields of one header family: its request window and its tightest other quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Family {
    requests: Window,
    quota: Option<Quota>,
}

impl Family {
    fn found(self) -> Option<Self> {
        (self.requests.found() || self.quota.is_some()).then_some(self)
    }
}

/// The request-window fields of one header family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Window {
    limit: Option<u64>,
    remaining: Option<u64>,
    resets_at_ms: Option<u64>,
}

impl Window {
    fn found(self) -> bool {
        self.limit.is_some() || self.remaining.is_some()
    }
}

/// Reads rate-limit information from response headers (names case-insensitive; the first header of a name
/// counts). Returns `None` when no recognised header parses. Never panics, whatever the bytes.
pub fn parse_rate_limit(headers: &[(String, Vec<u8>)], now_ms: u64) -> Option<LearnedLimit> {
    let get = |name: &str| header_str(headers, name);
    let retry_after_ms = get("retry-after").and_then(|v| parse_retry_after(v, now_ms));
    let family = anthropic(&get)
        .map(|f| (RateLimitSource::Anthropic, f))
        .or_else(|| openai(&get, now_ms).map(|f| (RateLimitSource::OpenAi, f)))
        .or_else(|| ietf_ratelimit_field(&get, now_ms))
        .or_else(|| {
            ietf_separate(&get, now_ms).map(|requests| {
                let f = Family {
                    requests,
                    quota: None,
                };
                (RateLimitSource::IetfSeparate, f)
            })
        });
    match family {
        Some((source, f)) => Some(LearnedLimit {
            source,
            limit: f.requests.limit,
            remaining: f.requests.remaining,
            resets_at_ms: f.requests.resets_at_ms,
            quota: f.quota,
            retry_after_ms,
        }),
        None => retry_after_ms.map(|r| LearnedLimit {
            source: RateLimitSource::RetryAfter,
            limit: None,
            remaining: None,
            resets_at_ms: None,
            quota: None,
            retry_after_ms: Some(r),
        }),
    }
}

fn header_str<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    let (_, value) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
    std::str::from_utf8(value).ok().map(str::trim)
}

fn anthropic<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Option<Family> {
    let field = |dimension: &str, part: &str| get(&format!("anthropic-ratelimit-{dimension}-{part}"));
    let requests = Window {
        limit: field("requests", "limit").and_then(parse_u64),
        remaining: field("requests", "remaining").and_then(parse_u64),
        resets_at_ms: field("requests", "reset").and_then(parse_rfc3339_ms),
    };
    // `tokens` is the most restrictive token limit in effect; input and output tokens are limited separately.
    let dimensions = [
        ("tokens", QuotaUnit::Tokens),
        ("input-tokens", QuotaUnit::InputTokens),
        ("output-tokens", QuotaUnit::OutputTokens),
    ];
    let quota = dimensions.into_iter().fold(None, |tightest, (dimension, unit)| {
        let q = Quota::new(
            unit,
            field(dimension, "limit").and_then(parse_u64),
            field(dimension, "remaining").and_then(parse_u64),
            field(dimension, "reset").and_then(parse_rfc3339_ms),
        );
        Quota::tighter(tightest, q)
    });
    Family { requests, quota }.found()
}

fn openai<'a>(get: &impl Fn(&str) -> Option<&'a str>, now_ms: u64) -> Option<Family> {
    // OpenAI sends Go durations; some compatible servers send bare seconds.
    let reset = |v: &str| {
        parse_go_duration_ms(v)
            .or_else(|| parse_u64(v).map(|s| s.saturating_mul(1000)))
            .map(|d| now_ms.saturating_add(d))
    };
    let requests = Window {
        limit: get("x-ratelimit-limit-requests").and_then(parse_u64),
        remaining: get("x-ratelimit-remaining-requests").and_then(parse_u64),
        resets_at_ms: get("x-ratelimit-reset-requests").and_then(reset),
    };
    let quota = Quota::new(
        QuotaUnit::Tokens,
        get("x-ratelimit-limit-tokens").and_then(parse_u64),
        get("x-ratelimit-remaining-tokens").and_then(parse_u64),
        get("x-ratelimit-reset-tokens").and_then(reset),
    );
    Family { requests, quota }.found()
}

/// Older drafts allowed a list after the number (`100, 100;w=60`); the leading number is the one that
/// applies.
fn leading_u64(v: &str) -> Option<u64> {
    parse_u64(v.split([',', ';']).next()?)
}

/// A reset of delta-seconds; values of a billion or more (over 31 years) are taken as Unix timestamps, which
/// some servers send despite the draft.
fn reset_seconds_to_instant(secs: u64, now_ms: u64) -> u64 {
    if secs >= 1_000_000_000 {
        secs.saturating_mul(1000)
    } else {
        now_ms.saturating_add(secs.saturating_mul(1000))
    }
}

fn ietf_separate<'a>(get: &impl Fn(&str) -> Option<&'a str>, now_ms: u64) -> Option<Window> {
    let w = Window {
        limit: get("ratelimit-limit").and_then(leading_u64),
        remaining: get("ratelimit-remaining").and_then(leading_u64),
        resets_at_ms: get("ratelimit-reset")
            .and_then(leading_u64)
            .map(|s| reset_seconds_to_instant(s, now_ms)),
    };
    w.found().then_some(w)
}

/// The `RateLimit` field, in either the older combined form or the current structured form.
fn ietf_ratelimit_field<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    now_ms: u64,
) -> Option<(RateLimitSource, Family)> {
    let field = get("ratelimit")?;
    let members = parse_sf_list(field);
    let combined = members.iter().any(|m| {
        m.params.is_empty()
            && m.name.split_once('=').is_some_and(|(k, _)| {
                ["limit", "remaining", "reset"]
                    .iter()
                    .any(|n| k.trim().eq_ignore_ascii_case(n))
            })
    });
    if combined {
        let mut w = Window::default();
        for m in &members {
            let Some((k, v)) = m.name.split_once('=') else {
                continue;
            };
            let k = k.trim().to_ascii_lowercase();
            let Some(v) = parse_u64(v) else { continue };
            match k.as_str() {
                "limit" => w.limit = w.limit.or(Some(v)),
                "remaining" => w.remaining = w.remaining.or(Some(v)),
                "reset" => w.resets_at_ms = w.resets_at_ms.or(Some(reset_seconds_to_instant(v, now_ms))),
                _ => {}
            }
        }
        let f = Family {
            requests: w,
            quota: None,
        };
        return f.found().map(|f| (RateLimitSource::IetfCombined, f));
    }
    ietf_structured(&members, get("ratelimit-policy"), now_ms).map(|f| (RateLimitSource::IetfStructured, f))
}

/// The current draft's structured form. Each `RateLimit` item names a policy of `RateLimit-Policy`, whose `qu`
/// parameter is its quota unit (`requests` when absent). Among the request policies the most restrictive (fewest
/// remaining, then latest reset) is the request window; a policy in any other unit (`tokens`, `content-bytes`) is a
/// quota, and the tightest of those by fraction left is the family's quota.
fn ietf_structured(members: &[SfMember<'_>], policy: Option<&str>, now_ms: u64) -> Option<Family> {
    let policies = policy.map(parse_sf_list).unwrap_or_default();
    let mut requests: Option<(u64, Option<u64>, Option<u64>)> = None;
    let mut quota = None;
    for m in members {
        let Some(r) = m.param("r").and_then(parse_u64) else {
            continue;
        };
        let reset = m
            .param("t")
            .and_then(parse_u64)
            .map(|t| now_ms.saturating_add(t.saturating_mul(1000)));
        let policy = policies.iter().find(|p| p.name == m.name);
        let q = policy.and_then(|p| p.param("q")).and_then(parse_u64);
        let unit = policy.and_then(|p| p.param("qu")).unwrap_or("requests");
        if unit.eq_ignore_ascii_case("requests") {
            let tighter = requests.is_none_or(|(best_r, _, best_reset)| {
                (r, std::cmp::Reverse(reset)) < (best_r, std::cmp::Reverse(best_reset))
            });
            if tighter {
                requests = Some((r, q, reset));
            }
        } else {
            let unit = match unit.to_ascii_lowercase().as_str() {
                "tokens" => QuotaUnit::Tokens,
                "input-tokens" => QuotaUnit::InputTokens,
                "output-tokens" => QuotaUnit::OutputTokens,
                _ => QuotaUnit::Other,
            };
            quota = Quota::tighter(quota, Quota::new(unit, q, Some(r), reset));
        }
    }
    let requests = requests.map_or_else(Window::default, |(r, q, reset)| Window {
        limit: q,
        remaining: Some(r),
        resets_at_ms: reset,
    });
    Family { requests, quota }.found()
}

/// A list member of a (tolerantly parsed) structured field: `name;key=value;...`.
struct SfMember<'a> {
    /// The bare item with quotes removed (or the raw `key=value` text of older drafts).
    name: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

impl<'a> SfMember<'a> {
    fn param(&self, key: &str) -> Option<&'a str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|&(_, v)| v)
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

fn parse_sf_list(field: &str) -> Vec<SfMember<'_>> {
    split_outside_quotes(field, ',')
        .into_iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let mut parts = split_outside_quotes(m, ';').into_iter();
            let name = unquote(parts.next().unwrap_or_default());
            let params = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim(), unquote(v)))
                .collect();
            SfMember { name, params }
        })
        .collect()
}

/// Splits on `sep` except inside double quotes (with backslash escapes).
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut in_quotes, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(s.get(start..i).unwrap_or_default());
            start = i + c.len_utf8();
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

/// A non-negative decimal integer: ASCII digits only (no sign), surrounding whitespace allowed.
fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `Retry-After`: delta-seconds or an HTTP-date, as an instant.
fn parse_retry_after(v: &str, now_ms: u64) -> Option<u64> {
    match parse_u64(v) {
        Some(secs) => Some(now_ms.saturating_add(secs.saturating_mul(1000))),
        None => httpdate::parse_http_date(v).ok().map(system_time_ms),
    }
}

/// A Go `time.Duration` string (`1s`, `6m0s`, `20ms`, `1h2m3.5s`, `0`) in milliseconds, rounded up.
pub fn parse_go_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    let digits_end = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut total_ns: u128 = 0;
    let mut i = 0;
    while i < b.len() {
        let int_end = digits_end(i);
        let int_part = s.get(i..int_end)?;
        let mut frac = "";
        i = int_end;
        if b.get(i) == Some(&b'.') {
            let frac_end = digits_end(i + 1);
            frac = s.get(i + 1..frac_end)?;
            i = frac_end;
        }
        if int_part.is_empty() && frac.is_empty() {
            return None;
        }
        let unit_start = i;
        while b.get(i).is_some_and(|c| !c.is_ascii_digit() && *c != b'.') {
            i += 1;
        }
        let unit_ns: u128 = match s.get(unit_start..i)? {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        if int_part.len() > 20 {
            return None;
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let frac = frac.get(..frac.len().min(9))?;
        let frac_val: u128 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
        let frac_ns = frac_val.checked_mul(unit_ns)? / 10u128.pow(u32::try_from(frac.len()).ok()?);
        total_ns = total_ns
            .checked_add(int.checked_mul(unit_ns)?)?
            .checked_add(frac_ns)?;
    }
    u64::try_from(total_ns.div_ceil(1_000_000)).ok()
}

/// An RFC 3339 timestamp (`2024-01-01T00:00:30Z`, `...30.25+02:00`) in ms since the Unix epoch; `None` for
/// anything malformed or before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let d = b.get(from..to)?;
        (!d.is_empty() && d.iter().all(u8::is_ascii_digit))
            .then(|| d.iter().fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0')))
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut millis = 0;
    if at(i, b".") {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let ms_digits = b.get(start..(start + 3).min(i))?;
        millis = ms_digits
            .iter()
            .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'));
        millis *= 10i64.pow(3 - u32::try_from(ms_digits.len()).ok()?);
    }
    let offset_secs = if at(i, b"Zz") && b.len() == i + 1 {
        0
    } else if at(i, b"+-") && at(i + 3, b":") && b.len() == i + 6 {
        let (oh, om) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
        if oh > 23 || om > 59 {
            return None;
        }
        let sign = if at(i, b"-") { -1 } else { 1 };
        sign * (oh * 3600 + om * 60)
    } else {
        return None;
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    u64::try_from(secs.checked_mul(1000)?.checked_add(millis)?).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
