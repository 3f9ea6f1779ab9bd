//! What a subscription's rate-limit windows allow: a member may share a Claude (or ChatGPT/Codex) subscription
//! through a local proxy that holds the login. Such an upstream gives no request counts; it answers with the state
//! of a few rate-limit *windows* instead, and this module turns those headers into "how much headroom is there for
//! a request for model M".
//!
//! ## The headers
//! - Anthropic's `anthropic-ratelimit-unified-<w>-{status,utilization,reset,surpassed-threshold}` per window `<w>`
//!   (`5h`, `7d`, `7d_sonnet`, `7d_oi`, … — any name is parsed), utilization a fraction that may pass 1.0, resets
//!   in Unix epoch seconds; and the summary `anthropic-ratelimit-unified-{status,reset,representative-claim,
//!   fallback,overage-status,overage-reset}`. `overage` is a summary field, never a window.
//! - Codex's `x-codex-{primary,secondary}-{used-percent,window-minutes,reset-at}`: windows `primary` and
//!   `secondary`, utilization = percent / 100, rejected from 100 % on.
//!
//! Values that are not what they should be (not a number, negative, not finite, too large, over
//! [`MAX_VALUE_LEN`] bytes, past [`MAX_WINDOWS`]) are dropped and counted in [`Subscription::ignored`]; nothing
//! here panics on what an upstream sends.
//!
//! ## Which windows bind a request
//! A window named `<period>_<family>` (`7d_sonnet`, `7d_oi`) is *scoped* to a model family; other windows apply to
//! every request. A scoped window applies when the request's model names its family (see [`Window::applies_to`]);
//! a request of unknown model is bound by the unscoped windows only. The summary's `status` is **not** a verdict on
//! every request: a 429 for an Opus window says `rejected` in the summary too, while Sonnet requests still pass.
//! So [`Subscription::left`] reads the windows, and the summary only when no window was ever seen.
//!
//! ## How much to lend
//! A member keeps a share of each window for itself ([`lendable`], [`DEFAULT_KEEP_SHARE`]): it lends while more
//! than that share is left, and its own requests may use everything left. [`units`] turns a fraction into request
//! units. Responses only ever *narrow* what is known: [`Subscription::update`] merges a newer response into the
//! last state, so a 429 that names one spent window leaves the others as they were.
//!
//! Pure: the current time is a `now_ms` parameter (milliseconds since the Unix epoch).

/// Prefix of Anthropic's unified rate-limit headers (names compared without case).
const UNIFIED_PREFIX: &str = "anthropic-ratelimit-unified-";
/// Prefix of Codex's rate-limit headers (names compared without case).
const CODEX_PREFIX: &str = "x-codex-";
/// Codex's two windows.
const CODEX_WINDOWS: &[&str] = &["primary", "secondary"];

/// The most windows one state holds: real upstreams send two to four, so more is garbage (or an attack on memory).
pub const MAX_WINDOWS: usize = 32;
/// The longest header value read: every real value is a short number or word.
pub const MAX_VALUE_LEN: usize = 256;
/// The longest window name accepted (real ones are like `7d_sonnet`).
pub const MAX_WINDOW_NAME_LEN: usize = 32;
/// The largest utilization accepted (100× the window): real values pass 1.0 only by a little.
pub const MAX_UTILIZATION: f64 = 100.0;
/// The latest reset accepted, in epoch seconds: 3000-01-01T00:00:00Z. Later is garbage, and keeps `× 1000` in range.
pub const MAX_RESET_SECS: u64 = 32_503_680_000;
/// The longest window accepted from Codex's `window-minutes`: 366 days (real ones are 5 hours and 7 days).
pub const MAX_WINDOW_MINUTES: u64 = 366 * 24 * 60;
/// The share of each window a member keeps for itself by default: it lends only below 70 % utilization.
pub const DEFAULT_KEEP_SHARE: f64 = 0.3;

/// Other names of a scope suffix, for suffixes that do not name their model family.
///
/// `oi` → `opus` is a **guess** from observed header names (`7d_oi` next to `7d_sonnet` on plans with an Opus
/// weekly limit), not documented by Anthropic; add a row here when a new suffix is seen.
const SCOPE_ALIASES: &[(&str, &[&str])] = &[("oi", &["opus"])];
/// A scope name (or alias) at least this long also matches inside a longer token of the model (`sonnet` in
/// `claude-3-5-sonnet20241022`); a shorter one must be a whole token, so `oi` never matches `claude-voice`.
const MIN_SUBSTRING_SCOPE: usize = 4;

/// A window's status as the upstream reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowStatus {
    /// Requests pass (`allowed`).
    Allowed,
    /// Requests pass but a warning threshold was crossed (`allowed_warning`).
    AllowedWarning,
    /// Requests are refused until the window resets (`rejected`).
    Rejected,
    /// No status was sent, or one this code does not know: treated like [`WindowStatus::Allowed`].
    Unknown,
}

impl WindowStatus {
    /// The status a header value names; [`WindowStatus::Unknown`] for anything else.
    pub fn from_value(value: &str) -> WindowStatus {
        if value.eq_ignore_ascii_case("allowed") {
            WindowStatus::Allowed
        } else if value.eq_ignore_ascii_case("allowed_warning") {
            WindowStatus::AllowedWarning
        } else if value.eq_ignore_ascii_case("rejected") {
            WindowStatus::Rejected
        } else {
            WindowStatus::Unknown
        }
    }

    /// Whether requests pass (billed to the plan, or for an overage status, billed beyond it).
    pub fn passes(self) -> bool {
        matches!(self, WindowStatus::Allowed | WindowStatus::AllowedWarning)
    }
}

/// One rate-limit window of a subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// The name in the headers, lower case (`5h`, `7d_sonnet`, `primary`).
    pub name: String,
    /// The model family the window is limited to: the part of the name after its first `_`, if any.
    pub scope: Option<String>,
    /// Its status ([`WindowStatus::Unknown`] when none was sent).
    pub status: WindowStatus,
    /// The share used, a fraction that may pass 1.0.
    pub utilization: Option<f64>,
    /// When it resets, ms since the Unix epoch.
    pub resets_at_ms: Option<u64>,
    /// The warning threshold it passed, a fraction (Anthropic's `surpassed-threshold`).
    pub surpassed_threshold: Option<f64>,
    /// How long the window is, when the upstream says (Codex's `window-minutes`; Anthropic's names say it).
    pub length_minutes: Option<u64>,
}

impl Window {
    /// An empty window named `name` (lower-cased), scoped by the part after its first `_`.
    pub fn new(name: &str) -> Window {
        let name = name.to_ascii_lowercase();
        let scope = name
            .split_once('_')
            .map(|(_, suffix)| suffix)
            .filter(|suffix| !suffix.is_empty())
            .map(str::to_string);
        Window {
            name,
            scope,
            status: WindowStatus::Unknown,
            utilization: None,
            resets_at_ms: None,
            surpassed_threshold: None,
            length_minutes: None,
        }
    }

    /// Whether the window limits a request for `model`.
    ///
    /// Unscoped windows limit every request; a scoped window limits a request whose model names its scope (or an
    /// alias of it, see `SCOPE_ALIASES`), case-insensitively: as a whole token between separators (anything but a
    /// letter or digit, so `-`, `_`, `.`, `/`, `:`), or — for names of 4 letters or more — anywhere inside the
    /// model. `_`, `.` and `-` count as the same separator on both sides (`7d_sonnet_4` matches
    /// `claude-sonnet-4-5`). A request of unknown model is limited by unscoped windows only.
    pub fn applies_to(&self, model: Option<&str>) -> bool {
        match (&self.scope, model) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(scope), Some(model)) => scope_matches(scope, model),
        }
    }

    /// Whether the window's reset has passed at `now_ms`: its counts start again, whatever it said before.
    pub fn has_reset(&self, now_ms: u64) -> bool {
        self.resets_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The fraction of this window left at `now_ms`, in [0, 1]: all of it once it has reset, none while it is
    /// rejected (with no reset, until a newer response says otherwise), else 1 − utilization. With no utilization
    /// an `allowed_warning` window counts its surpassed threshold as used, any other counts nothing.
    pub fn left(&self, now_ms: u64) -> f64 {
        if self.has_reset(now_ms) {
            return 1.0;
        }
        if self.status == WindowStatus::Rejected {
            return 0.0;
        }
        let used = match (self.utilization, self.status) {
            (Some(used), _) => used,
            (None, WindowStatus::AllowedWarning) => self.surpassed_threshold.unwrap_or(0.0),
            (None, _) => 0.0,
        };
        fraction_left(used)
    }
}

/// 1 − `used`, within [0, 1]; nothing left when `used` is not a number.
fn fraction_left(used: f64) -> f64 {
    let left = 1.0 - used;
    if left.is_nan() { 0.0 } else { left.clamp(0.0, 1.0) }
}

/// Whether `model` names `scope` or one of its aliases (rules in [`Window::applies_to`]).
fn scope_matches(scope: &str, model: &str) -> bool {
    let model = normalize(model);
    let aliases = SCOPE_ALIASES
        .iter()
        .filter(|(short, _)| short.eq_ignore_ascii_case(scope))
        .flat_map(|(_, names)| names.iter().copied());
    std::iter::once(scope).chain(aliases).any(|name| {
        let name = normalize(name);
        !name.is_empty()
            && if name.len() >= MIN_SUBSTRING_SCOPE {
                model.contains(&name)
            } else {
                contains_token(&model, &name)
            }
    })
}

/// Lower case, with `_` and `.` as `-`.
fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether `needle` occurs in `haystack` with no letter or digit right before or after it.
fn contains_token(haystack: &str, needle: &str) -> bool {
    let bytes = haystack.as_bytes();
    haystack.match_indices(needle).any(|(at, _)| {
        let end = at + needle.len();
        let before = at.checked_sub(1).and_then(|i| bytes.get(i));
        let after = bytes.get(end);
        !before.is_some_and(u8::is_ascii_alphanumeric) && !after.is_some_and(u8::is_ascii_alphanumeric)
    })
}

/// The subscription-wide fields of Anthropic's headers (no window name).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// `anthropic-ratelimit-unified-status`: the verdict on *this* response's request — not on every model's.
    pub status: Option<WindowStatus>,
    /// `anthropic-ratelimit-unified-reset`, ms since the Unix epoch.
    pub resets_at_ms: Option<u64>,
    /// `anthropic-ratelimit-unified-representative-claim`: the window that decided (`five_hour`, `seven_day`,
    /// `seven_day_sonnet`, `overage`, …).
    pub representative_claim: Option<String>,
    /// `anthropic-ratelimit-unified-fallback` (e.g. `available`).
    pub fallback: Option<String>,
    /// `anthropic-ratelimit-unified-overage-status`: whether requests beyond the plan pass (billed as overage).
    pub overage_status: Option<WindowStatus>,
    /// `anthropic-ratelimit-unified-overage-reset`, ms since the Unix epoch.
    pub overage_resets_at_ms: Option<u64>,
}

/// What a subscription's rate-limit headers said, merged over the responses seen (see [`Subscription::update`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subscription {
    /// The windows, in the order first seen; names unique, at most [`MAX_WINDOWS`].
    pub windows: Vec<Window>,
    /// The subscription-wide fields.
    pub summary: Summary,
    /// How many header values were dropped as malformed, out of range or past a limit, or had an unknown status.
    pub ignored: u32,
}

/// The tightest constraint on a request: what is left of it and when it resets.
#[derive(Clone, Copy, Debug)]
struct Binding {
    left: f64,
    resets_at_ms: Option<u64>,
}

impl Binding {
    /// Whether `self` binds harder than `other`: less left, or as little and for longer (no reset is longest).
    fn tighter_than(&self, other: &Binding) -> bool {
        let until = |b: &Binding| b.resets_at_ms.unwrap_or(u64::MAX);
        self.left < other.left || (self.left == other.left && until(self) > until(other))
    }
}

impl Subscription {
    /// Parses a response's headers; `None` when they carry no subscription window or summary header at all.
    pub fn parse(headers: &[(String, Vec<u8>)]) -> Option<Subscription> {
        let mut parser = Parser::default();
        for (name, value) in headers {
            parser.header(name, value);
        }
        parser.seen.then_some(parser.sub)
    }

    /// The fraction of the binding window left for a request for `model` at `now_ms`, in [0, 1].
    ///
    /// The lowest [`Window::left`] among the windows that apply to `model` (1 when none does). A window whose reset
    /// has passed counts as unused; a rejected one counts as nothing left until its reset (with no reset, until a
    /// newer response replaces it). When no window was ever seen, a summary `rejected` before its reset means
    /// nothing is left.
    pub fn left(&self, model: Option<&str>, now_ms: u64) -> f64 {
        self.binding(model, now_ms).map_or(1.0, |b| b.left)
    }

    /// When the binding window for `model` resets (the tightest that applies; of equally tight ones, the last to
    /// reset), if known and still ahead of `now_ms`.
    pub fn resets_at_ms(&self, model: Option<&str>, now_ms: u64) -> Option<u64> {
        self.binding(model, now_ms).and_then(|b| b.resets_at_ms)
    }

    /// Whether this subscription may be lent at all.
    ///
    /// `false` when a request would be billed beyond the plan: the summary's representative claim is `overage`, or
    /// the summary status is `rejected` while the overage status passes (`allowed`/`allowed_warning`). A member's
    /// own requests are its own business; borrowers never spend a lender's money.
    pub fn may_lend(&self) -> bool {
        let s = &self.summary;
        let claim_is_overage = s
            .representative_claim
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case("overage"));
        let billed_as_overage =
            s.status == Some(WindowStatus::Rejected) && s.overage_status.is_some_and(WindowStatus::passes);
        !(claim_is_overage || billed_as_overage)
    }

    /// Merges a newer parse into this state.
    ///
    /// Windows in `newer` replace the same-named ones whole; windows it does not mention keep their last values (a
    /// 429 on a spent 5h window may carry that window's headers only). New windows past [`MAX_WINDOWS`] are
    /// dropped and counted. Summary fields present in `newer` replace; `ignored` adds up.
    pub fn update(&mut self, newer: Subscription) {
        self.ignored = self.ignored.saturating_add(newer.ignored);
        for window in newer.windows {
            if let Some(old) = self.windows.iter_mut().find(|w| w.name == window.name) {
                *old = window;
            } else if self.windows.len() < MAX_WINDOWS {
                self.windows.push(window);
            } else {
                self.ignored = self.ignored.saturating_add(1);
            }
        }
        let (s, n) = (&mut self.summary, newer.summary);
        replace_if_some(&mut s.status, n.status);
        replace_if_some(&mut s.resets_at_ms, n.resets_at_ms);
        replace_if_some(&mut s.representative_claim, n.representative_claim);
        replace_if_some(&mut s.fallback, n.fallback);
        replace_if_some(&mut s.overage_status, n.overage_status);
        replace_if_some(&mut s.overage_resets_at_ms, n.overage_resets_at_ms);
    }

    /// The tightest constraint on a request for `model` at `now_ms`, if any.
    fn binding(&self, model: Option<&str>, now_ms: u64) -> Option<Binding> {
        let windows = self
            .windows
            .iter()
            .filter(|w| w.applies_to(model) && !w.has_reset(now_ms))
            .map(|w| Binding {
                left: w.left(now_ms),
                resets_at_ms: w.resets_at_ms,
            });
        let summary = self
            .windows
            .is_empty()
            .then(|| self.summary_binding(now_ms))
            .flatten();
        windows.chain(summary).fold(None, |best, b| match best {
            Some(best) if !b.tighter_than(&best) => Some(best),
            _ => Some(b),
        })
    }

    /// What the summary alone says, for a state with no window: nothing left while it is rejected.
    fn summary_binding(&self, now_ms: u64) -> Option<Binding> {
        let s = &self.summary;
        let reset_passed = s.resets_at_ms.is_some_and(|at| at <= now_ms);
        (s.status == Some(WindowStatus::Rejected) && !reset_passed).then_some(Binding {
            left: 0.0,
            resets_at_ms: s.resets_at_ms,
        })
    }
}

/// Sets `slot` to `newer` when there is a newer value.
fn replace_if_some<T>(slot: &mut Option<T>, newer: Option<T>) {
    if newer.is_some() {
        *slot = newer;
    }
}

/// The share of a window a member may lend: what is `left` beyond the `keep_share` it keeps for itself,
/// `max(0, left − keep_share)`, in [0, 1].
///
/// So lending is allowed while `left > keep_share`, i.e. below `1 − keep_share` utilization (70 % with
/// [`DEFAULT_KEEP_SHARE`]); the member's own requests may use all of `left`. Inputs are clamped to [0, 1]; a `left`
/// that is not a number lends nothing, and so does a `keep_share` that is not a number (it keeps everything).
pub fn lendable(left: f64, keep_share: f64) -> f64 {
    let left = if left.is_nan() { 0.0 } else { left.clamp(0.0, 1.0) };
    let keep = if keep_share.is_nan() {
        1.0
    } else {
        keep_share.clamp(0.0, 1.0)
    };
    (left - keep).max(0.0)
}

/// How many of `capacity` request units a `fraction` of it is: rounded down (forgiving float error below 1e-9 of a
/// unit, so 0.58 of 100 is 58), at most `capacity`. A fraction below 0 or not a number is 0 units, above 1 is all.
pub fn units(fraction: f64, capacity: u64) -> u64 {
    if fraction.is_nan() || fraction <= 0.0 {
        return 0;
    }
    if fraction >= 1.0 {
        return capacity;
    }
    // `as` saturates; the product is below `capacity`, up to rounding.
    let raw = (fraction * capacity as f64 + 1e-9).floor() as u64;
    raw.min(capacity)
}

/// The per-window fields of Anthropic's headers, by their name suffix (longest first, so `-surpassed-threshold`
/// is not read as a window named `…-surpassed`).
const WINDOW_FIELDS: &[(&str, WindowField)] = &[
    ("-surpassed-threshold", WindowField::SurpassedThreshold),
    ("-utilization", WindowField::Utilization),
    ("-status", WindowField::Status),
    ("-reset", WindowField::Reset),
];

/// A per-window field of Anthropic's headers.
#[derive(Clone, Copy, Debug)]
enum WindowField {
    Status,
    Utilization,
    Reset,
    SurpassedThreshold,
}

/// Builds a [`Subscription`] from headers one at a time, counting what it drops.
#[derive(Debug, Default)]
struct Parser {
    sub: Subscription,
    /// Whether any subscription header was seen (valid or not).
    seen: bool,
}

impl Parser {
    /// Reads one header; headers of other kinds pass untouched.
    fn header(&mut self, name: &str, value: &[u8]) {
        if let Some(rest) = strip_prefix_ignore_case(name, UNIFIED_PREFIX) {
            self.seen = true;
            self.unified(&rest.to_ascii_lowercase(), value);
        } else if let Some(rest) = strip_prefix_ignore_case(name, CODEX_PREFIX) {
            self.codex(&rest.to_ascii_lowercase(), value);
        }
    }

    /// An `anthropic-ratelimit-unified-` header, `rest` its lower-cased name after the prefix.
    fn unified(&mut self, rest: &str, value: &[u8]) {
        match rest {
            "status" => self.sub.summary.status = self.status(value).or(self.sub.summary.status),
            "reset" => self.sub.summary.resets_at_ms = self.reset(value).or(self.sub.summary.resets_at_ms),
            "representative-claim" => {
                if let Some(claim) = self.label(value) {
                    self.sub.summary.representative_claim = Some(claim);
                }
            }
            "fallback" => {
                if let Some(fallback) = self.label(value) {
                    self.sub.summary.fallback = Some(fallback);
                }
            }
            "overage-status" => {
                self.sub.summary.overage_status = self.status(value).or(self.sub.summary.overage_status);
            }
            "overage-reset" => {
                self.sub.summary.overage_resets_at_ms =
                    self.reset(value).or(self.sub.summary.overage_resets_at_ms);
            }
            // Other summary fields (`overage-disabled-reason`, `fallback-percentage`, …) are not used.
            _ if rest == "overage" || rest.starts_with("overage-") => {}
            _ => {
                let field = WINDOW_FIELDS
                    .iter()
                    .find_map(|(suffix, field)| Some((rest.strip_suffix(suffix)?, *field)));
                if let Some((window, field)) = field {
                    self.window_field(window, field, value);
                }
            }
        }
    }

    /// One per-window field of Anthropic's headers.
    fn window_field(&mut self, window: &str, field: WindowField, value: &[u8]) {
        if !valid_window_name(window) {
            self.ignore();
            return;
        }
        match field {
            WindowField::Status => {
                if let Some(status) = self.status(value) {
                    self.set(window, |w| w.status = status);
                }
            }
            WindowField::Utilization => {
                if let Some(used) = self.fraction(value) {
                    self.set(window, |w| w.utilization = Some(used));
                }
            }
            WindowField::Reset => {
                if let Some(at) = self.reset(value) {
                    self.set(window, |w| w.resets_at_ms = Some(at));
                }
            }
            WindowField::SurpassedThreshold => {
                if let Some(threshold) = self.fraction(value) {
                    self.set(window, |w| w.surpassed_threshold = Some(threshold));
                }
            }
        }
    }

    /// An `x-codex-` header, `rest` its lower-cased name after the prefix; only the window fields are read.
    fn codex(&mut self, rest: &str, value: &[u8]) {
        let Some((window, field)) = CODEX_WINDOWS
            .iter()
            .find_map(|w| Some((*w, rest.strip_prefix(w)?.strip_prefix('-')?)))
        else {
            return;
        };
        match field {
            "used-percent" => {
                self.seen = true;
                let Some(percent) = self.number(value) else {
                    return;
                };
                if percent > MAX_UTILIZATION * 100.0 {
                    self.ignore();
                    return;
                }
                self.set(window, |w| {
                    w.utilization = Some(percent / 100.0);
                    w.status = if percent >= 100.0 {
                        WindowStatus::Rejected
                    } else {
                        WindowStatus::Allowed
                    };
                });
            }
            "window-minutes" => {
                self.seen = true;
                let Some(text) = self.text(value) else {
                    return;
                };
                match text.parse::<u64>().ok().filter(|m| *m <= MAX_WINDOW_MINUTES) {
                    Some(minutes) => self.set(window, |w| w.length_minutes = Some(minutes)),
                    None => self.ignore(),
                }
            }
            "reset-at" => {
                self.seen = true;
                if let Some(at) = self.reset(value) {
                    self.set(window, |w| w.resets_at_ms = Some(at));
                }
            }
            // `reset-after-seconds`, `over-secondary-limit-percent`, …: not used.
            _ => {}
        }
    }

    /// Applies `change` to the window named `name`, made if new; past [`MAX_WINDOWS`] the value is counted instead.
    fn set(&mut self, name: &str, change: impl FnOnce(&mut Window)) {
        let windows = &mut self.sub.windows;
        let at = match windows.iter().position(|w| w.name == name) {
            Some(at) => at,
            None if windows.len() < MAX_WINDOWS => {
                windows.push(Window::new(name));
                windows.len() - 1
            }
            None => {
                self.ignore();
                return;
            }
        };
        if let Some(window) = windows.get_mut(at) {
            change(window);
        }
    }

    /// Counts one dropped value.
    fn ignore(&mut self) {
        self.sub.ignored = self.sub.ignored.saturating_add(1);
    }

    /// The value as trimmed, non-empty UTF-8 of at most [`MAX_VALUE_LEN`] bytes; counted when it is not.
    fn text<'v>(&mut self, value: &'v [u8]) -> Option<&'v str> {
        let text = (value.len() <= MAX_VALUE_LEN)
            .then(|| std::str::from_utf8(value).ok())
            .flatten()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if text.is_none() {
            self.ignore();
        }
        text
    }

    /// A status; an unknown one is kept as [`WindowStatus::Unknown`] and counted.
    fn status(&mut self, value: &[u8]) -> Option<WindowStatus> {
        let status = WindowStatus::from_value(self.text(value)?);
        if status == WindowStatus::Unknown {
            self.ignore();
        }
        Some(status)
    }

    /// A finite, non-negative decimal.
    fn number(&mut self, value: &[u8]) -> Option<f64> {
        let text = self.text(value)?;
        let n = text.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0);
        if n.is_none() {
            self.ignore();
        }
        // `-0` is 0.
        n.map(|n| n + 0.0)
    }

    /// A fraction in [0, [`MAX_UTILIZATION`]].
    fn fraction(&mut self, value: &[u8]) -> Option<f64> {
        let n = self.number(value)?;
        if n > MAX_UTILIZATION {
            self.ignore();
            return None;
        }
        Some(n)
    }

    /// A reset in whole epoch seconds, up to [`MAX_RESET_SECS`], as ms.
    fn reset(&mut self, value: &[u8]) -> Option<u64> {
        let text = self.text(value)?;
        let secs = text.parse::<u64>().ok().filter(|s| *s <= MAX_RESET_SECS);
        if secs.is_none() {
            self.ignore();
        }
        secs.map(|s| s.saturating_mul(1000))
    }

    /// A short word (claim, fallback): visible ASCII only.
    fn label(&mut self, value: &[u8]) -> Option<String> {
        let text = self.text(value)?;
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            self.ignore();
            return None;
        }
        Some(text.to_string())
    }
}

/// `name` without `prefix`, compared without case.
fn strip_prefix_ignore_case<'n>(name: &'n str, prefix: &str) -> Option<&'n str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| name.get(prefix.len()..))
        .flatten()
}

/// A window name: 1 to [`MAX_WINDOW_NAME_LEN`] letters, digits, `_` or `.` (lower case by now).
fn valid_window_name(name: &str) -> bool {
    (1..=MAX_WINDOW_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests;
