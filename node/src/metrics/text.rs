//! The two text formats `/metrics` serves: OpenMetrics 1.0.0 (what prometheus-client encodes) for a scraper that
//! asks for it, and the Prometheus text exposition format 0.0.4 for everything else (curl, `promtool check metrics`).

use super::*;

/// `Content-Type` of the OpenMetrics text format, as prometheus-client encodes it.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept` header values ask for OpenMetrics: a media range `application/openmetrics-text`
/// (any version) with a quality above 0 and at least the one `text/plain` gets (from `text/plain`, else `text/*`,
/// else `*/*`). Wildcards alone never select OpenMetrics, so a client that does not name it (curl, a browser)
/// gets the Prometheus text format. Prometheus's own scrape header
/// (`application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`) selects OpenMetrics.
pub fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a str>) -> bool {
    let mut openmetrics: Option<f32> = None;
    // The quality `text/plain` gets, by specificity: `*/*`, `text/*`, `text/plain`.
    let mut text: [Option<f32>; 3] = [None; 3];
    for range in accept.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        // A missing quality is 1; one that does not parse counts as 0 (not asked for).
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0))
            .clamp(0.0, 1.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut openmetrics,
            "text/plain" => &mut text[2],
            "text/*" => &mut text[1],
            "*/*" => &mut text[0],
            _ => continue,
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    let text_q = text[2].or(text[1]).or(text[0]).unwrap_or(0.0);
    openmetrics.is_some_and(|q| q > 0.0 && q >= text_q)
}

/// Converts OpenMetrics text, the only format prometheus-client encodes, to the Prometheus text exposition format
/// 0.0.4, munging as the Python client does:
/// - `# EOF`, `# UNIT` and `_created` samples go: the format has none of them;
/// - `# HELP` and `# TYPE` name the samples: a counter family `foo` (samples `foo_total`) becomes `foo_total`, an
///   info family `foo` (samples `foo_info`) the gauge `foo_info`; `unknown` becomes `untyped`, `stateset` `gauge`,
///   `gaugehistogram` `histogram` (its `_gsum` and `_gcount` samples `_sum` and `_count`);
/// - help text is re-escaped (OpenMetrics escapes `\\`, `\n` and `\"`; Prometheus only `\\` and `\n`);
/// - exemplars go, and sample timestamps go from seconds to milliseconds.
///
/// Metric names, label sets and values pass unchanged: both formats write them alike.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    // Family name → OpenMetrics type (a family's `# HELP` may come before its `# TYPE`).
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name, kind.trim()))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    // The family whose samples follow: its name and OpenMetrics type.
    let mut family: (&str, &str) = ("", "unknown");
    for line in openmetrics.lines() {
        if line == "# EOF" {
            break;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = types.get(name).copied().unwrap_or("unknown");
            family = (name, kind);
            let _ = writeln!(
                out,
                "# HELP {} {}",
                prometheus_family_name(name, kind),
                reescape_help(help)
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .map_or((rest, "unknown"), |(n, k)| (n, k.trim()));
            family = (name, kind);
            let _ = writeln!(
                out,
                "# TYPE {} {}",
                prometheus_family_name(name, kind),
                prometheus_type(kind)
            );
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT` (and any other comment): not in the Prometheus text format.
        } else if let Some(sample) = prometheus_sample(line, family) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// The name `# HELP` and `# TYPE` give a family in the Prometheus text format: the name of its samples.
fn prometheus_family_name<'a>(name: &'a str, kind: &str) -> Cow<'a, str> {
    match kind {
        "counter" => format!("{name}_total").into(),
        "info" => format!("{name}_info").into(),
        _ => name.into(),
    }
}

/// The Prometheus text format's type for an OpenMetrics type.
fn prometheus_type(kind: &str) -> &'static str {
    match kind {
        "counter" => "counter",
        "gauge" | "info" | "stateset" => "gauge",
        "histogram" | "gaugehistogram" => "histogram",
        "summary" => "summary",
        _ => "untyped",
    }
}

/// OpenMetrics help text (escapes `\\`, `\n`, `\"`) to Prometheus help text (escapes `\\`, `\n`); a backslash
/// that escapes nothing OpenMetrics knows is kept as a literal backslash.
fn reescape_help(help: &str) -> Cow<'_, str> {
    if !help.contains('\\') {
        return help.into();
    }
    let mut out = String::with_capacity(help.len() + 2);
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('n') => out.push_str("\\n"),
            Some('\\') => out.push_str("\\\\"),
            Some(other) => {
                out.push_str("\\\\");
                out.push(other);
            }
            None => out.push_str("\\\\"),
        }
    }
    out.into()
}

/// One OpenMetrics sample line in the Prometheus text format, or `None` for a sample that format lacks
/// (`_created`). A line that does not parse passes unchanged, for the scraper to report.
fn prometheus_sample(line: &str, (family, kind): (&str, &str)) -> Option<String> {
    let Some((name, labels, rest)) = split_sample(line) else {
        return Some(line.to_string());
    };
    let suffix = name.strip_prefix(family);
    if matches!(kind, "counter" | "histogram" | "summary" | "gaugehistogram") && suffix == Some("_created") {
        return None;
    }
    let name: Cow<'_, str> = match (kind, suffix) {
        ("gaugehistogram", Some("_gsum")) => format!("{family}_sum").into(),
        ("gaugehistogram", Some("_gcount")) => format!("{family}_count").into(),
        _ => name.into(),
    };
    // `value [timestamp] [# {exemplar labels} value [timestamp]]`: the exemplar goes.
    let rest = rest.split_once(" # ").map_or(rest, |(r, _)| r);
    let mut fields = rest.split_whitespace();
    let Some(value) = fields.next() else {
        return Some(line.to_string());
    };
    let mut out = format!("{name}{labels} {value}");
    if let Some(seconds) = fields
        .next()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite())
    {
        let _ = write!(out, " {}", (seconds * 1000.0).round() as i64);
    }
    Some(out)
}

/// A sample line's name, label set (with its braces, or empty) and the rest; label values may hold any of
/// `{`, `}`, `#`, spaces and escaped quotes.
fn split_sample(line: &str) -> Option<(&str, &str, &str)> {
    let name_end = line.find(['{', ' '])?;
    let (name, after) = line.split_at(name_end);
    if !after.starts_with('{') {
        return Some((name, "", after));
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in after.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some((name, &after[..=i], &after[i + 1..])),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::exemplar::CounterWithExemplar;
    use prometheus_client::metrics::info::Info;

    /// The registry a node serves (lendmesh's metrics and libp2p's), with some values moved.
    fn node_registry() -> String {
        let counters = NodeMetrics::default();
        let mut registry = Registry::default();
        counters.register(&mut registry);
        let _libp2p = libp2p::metrics::Metrics::new(&mut registry);
        counters.add(&counters.relays_ok, 2);
        NodeMetrics::outcome(&counters.borrows, "ok");
        NodeMetrics::outcome(&counters.borrows, "no_lender_available");
        counters.borrow_latency.observe(0.02);
        counters.headroom_bucket.set(3);
        counters.upstream_call(Some(200));
        counters
            .peer_rtt
            .get_or_create(&PeerLabel {
                peer: "12D3KooWabc".into(),
            })
            .set(0.0125);
        counters.spent_set.get_or_create(&EpochLabel { epoch: 7 }).set(4);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    /// Sample lines (not comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    /// What `promtool check metrics` checks, in Rust: every sample's family has `# HELP` and `# TYPE` lines naming
    /// it; counters' samples end `_total`; no non-histogram `_bucket`, no `_created`, no `# EOF` or `# UNIT`.
    fn assert_prometheus_text(text: &str) {
        let mut help = HashMap::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, h) = rest.split_once(' ').unwrap();
                assert!(!h.is_empty(), "{line}");
                assert!(help.insert(name, h).is_none(), "second HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(types.insert(name, kind).is_none(), "second TYPE: {line}");
            } else {
                assert!(!line.starts_with('#'), "{line}");
            }
        }
        for line in samples(text) {
            let (name, _, _) = split_sample(line).unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|f| match types.get(f) {
                    Some(&"histogram") => true,
                    Some(&"summary") => !name.ends_with("_bucket"),
                    _ => false,
                })
                .unwrap_or(name);
            let kind = types
                .get(family)
                .unwrap_or_else(|| panic!("no # TYPE for {name}"));
            assert!(help.contains_key(family), "no # HELP for {name}");
            assert_eq!(*kind == "counter", name.ends_with("_total"), "{line}");
            if *kind != "histogram" {
                assert!(!name.ends_with("_bucket"), "non-histogram {name}");
            }
            assert!(!name.ends_with("_created"), "{line}");
        }
    }

    /// Runs `promtool check metrics` on the text if promtool is installed; it must pass without a word.
    fn promtool_if_installed(text: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            return;
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.is_empty(),
            "promtool: {said}\n{text}"
        );
    }

    #[test]
    fn the_node_registry_converts_to_lint_clean_prometheus_text() {
        let om = node_registry();
        assert!(om.ends_with("# EOF\n") && om.contains("# UNIT "));
        let prom = openmetrics_to_prometheus_text(&om);
        for block in [
            "# HELP lendmesh_relays_total Sealed requests relayed successfully.\n\
             # TYPE lendmesh_relays_total counter\n\
             lendmesh_relays_total 2\n",
            "# HELP lendmesh_headroom_level Own headroom bucket as attested (0 none, 1 low, 2 medium, 3 high).\n\
             # TYPE lendmesh_headroom_level gauge\n\
             lendmesh_headroom_level 3\n",
            "# HELP lendmesh_peer_rtt_seconds Ping round-trip time per peer.\n\
             # TYPE lendmesh_peer_rtt_seconds gauge\n\
             lendmesh_peer_rtt_seconds{peer=\"12D3KooWabc\"} 0.0125\n",
            "# HELP lendmesh_borrow_latency_seconds Borrow latency from the gateway to the answer.\n\
             # TYPE lendmesh_borrow_latency_seconds histogram\n\
             lendmesh_borrow_latency_seconds_sum 0.02\n\
             lendmesh_borrow_latency_seconds_count 1\n",
            "lendmesh_borrow_latency_seconds_bucket{le=\"+Inf\"} 1\n",
            "# TYPE lendmesh_borrows_total counter\n",
            "lendmesh_borrows_total{outcome=\"ok\"} 1\n",
            "# TYPE lendmesh_spent_set_size gauge\nlendmesh_spent_set_size{epoch=\"7\"} 4\n",
            "# HELP libp2p_swarm_dial_attempt_total Number of dial attempts.\n\
             # TYPE libp2p_swarm_dial_attempt_total counter\n",
        ] {
            assert!(prom.contains(block), "missing\n{block}\nin\n{prom}");
        }
        assert!(!prom.contains("headroom_bucket"));
        assert!(!prom.contains("# EOF") && !prom.contains("# UNIT"));
        // Only the descriptors change: every sample passes as it was.
        assert_eq!(samples(&prom), samples(&om));
        assert_eq!(
            prom.lines().filter(|l| l.starts_with("# TYPE ")).count(),
            om.lines().filter(|l| l.starts_with("# TYPE ")).count()
        );
        assert_prometheus_text(&prom);
        promtool_if_installed(&prom);
    }

    #[test]
    fn exemplars_info_and_escapes_from_the_real_encoder() {
        let mut registry = Registry::default();
        let with_exemplar = CounterWithExemplar::<Vec<(String, String)>>::default();
        with_exemplar.inc_by(3, Some(vec![("trace".into(), "a b # c".into())]), None);
        registry.register_with_unit(
            "work",
            r#"Work done, "quoted" and \ backslashed"#,
            Unit::Seconds,
            with_exemplar,
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version".to_string(), "1.2.3".to_string())]),
        );
        let odd: Family<ReasonLabel, Counter> = Family::default();
        odd.get_or_create(&ReasonLabel {
            reason: "a\"} 9\n# x\\".into(),
        })
        .inc();
        registry.register("odd", "Odd label values", odd);
        let mut om = String::new();
        encode(&mut om, &registry).unwrap();
        assert!(
            om.contains("work_seconds_total 3 # {trace=\"a b # c\"} 3"),
            "{om}"
        );
        let prom = openmetrics_to_prometheus_text(&om);
        assert_eq!(
            prom,
            "# HELP work_seconds_total Work done, \"quoted\" and \\\\ backslashed.\n\
             # TYPE work_seconds_total counter\n\
             work_seconds_total 3\n\
             # HELP build_info Build information.\n\
             # TYPE build_info gauge\n\
             build_info{version=\"1.2.3\"} 1\n\
             # HELP odd_total Odd label values.\n\
             # TYPE odd_total counter\n\
             odd_total{reason=\"a\\\"} 9\\n# x\\\\\"} 1\n"
        );
        assert_prometheus_text(&prom);
        promtool_if_installed(&prom);
    }

    #[test]
    fn openmetrics_types_the_encoder_does_not_write_yet() {
        let om = "# TYPE c counter\n\
                  # HELP c A \\\"c\\\" with a\\nnewline, a \\\\ and a \\q.\n\
                  c_total{a=\"1\"} 1 1700000000.5\n\
                  c_created{a=\"1\"} 1699999999\n\
                  # HELP u Unknown.\n\
                  # TYPE u unknown\n\
                  u 1\n\
                  # HELP s State set.\n\
                  # TYPE s stateset\n\
                  s{s=\"on\"} 1\n\
                  # HELP g Gauge histogram.\n\
                  # TYPE g gaugehistogram\n\
                  g_bucket{le=\"+Inf\"} 2\n\
                  g_gcount 2\n\
                  g_gsum 5\n\
                  # HELP q Summary.\n\
                  # TYPE q summary\n\
                  q{quantile=\"0.5\"} 0.25\n\
                  q_sum 1\n\
                  q_count 4\n\
                  q_created 1699999999\n\
                  # EOF\n";
        let prom = openmetrics_to_prometheus_text(om);
        assert_eq!(
            prom,
            "# TYPE c_total counter\n\
             # HELP c_total A \"c\" with a\\nnewline, a \\\\ and a \\\\q.\n\
             c_total{a=\"1\"} 1 1700000000500\n\
             # HELP u Unknown.\n\
             # TYPE u untyped\n\
             u 1\n\
             # HELP s State set.\n\
             # TYPE s gauge\n\
             s{s=\"on\"} 1\n\
             # HELP g Gauge histogram.\n\
             # TYPE g histogram\n\
             g_bucket{le=\"+Inf\"} 2\n\
             g_count 2\n\
             g_sum 5\n\
             # HELP q Summary.\n\
             # TYPE q summary\n\
             q{quantile=\"0.5\"} 0.25\n\
             q_sum 1\n\
             q_count 4\n"
        );
        assert_prometheus_text(&prom);
        promtool_if_installed(&prom);
    }

    #[test]
    fn openmetrics_only_when_the_client_asks_for_it() {
        let prometheus_scraper = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, openmetrics) in [
            (&[][..], false),
            (&[""][..], false),
            (&["*/*"][..], false),
            (&["text/plain"][..], false),
            (&["text/plain; version=0.0.4"][..], false),
            (&["application/json, text/*;q=0.9"][..], false),
            (&["application/openmetrics-text"][..], true),
            (
                &["Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"][..],
                true,
            ),
            (&[prometheus_scraper][..], true),
            (&["text/html", "application/openmetrics-text;q=0.2"][..], true),
            (&["application/openmetrics-text;q=0"][..], false),
            (&["application/openmetrics-text;q=nonsense"][..], false),
            (&["text/plain, application/openmetrics-text;q=0.5"][..], false),
            (&["*/*, application/openmetrics-text;q=0.5"][..], false),
            (
                &["text/plain;q=0.5, application/openmetrics-text;q=0.5"][..],
                true,
            ),
            (&["*/*;q=0.1, application/openmetrics-text;q=0.5"][..], true),
        ] {
            assert_eq!(
                wants_openmetrics(accept.iter().copied()),
                openmetrics,
                "{accept:?}"
            );
        }
    }
}
