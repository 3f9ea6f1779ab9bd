//! A linker: what a curious lender can do with the requests it opens, to tell which member sent each one.
//!
//! It takes every header and every field of a JSON body — fields inside JSON strings too (Claude Code's
//! `metadata.user_id` is a JSON document in a string), each tool-written text whole — except the user's own text
//! (the words in the `user` turns, which can identify their author whatever lendmesh does). A feature **links** when
//! one of its values is shared by requests of two or more sessions of one member and by no request of another: the
//! lender can then tie those sessions to one person. It also plays the guessing game: each request is given to the
//! member whose *other* sessions share the most feature values with it (a tie scores a half); with two members
//! chance is 50 %.

use std::collections::{BTreeMap, BTreeSet};

/// One request as the lender saw it, with the truth the lender does not know.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which member sent it.
    pub member: String,
    /// Which of that member's sessions.
    pub session: String,
    /// Headers (names compared without case).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// What the linker found.
#[derive(Clone, Debug)]
pub struct Linkage {
    /// Features that link two sessions of one member, with the value that does.
    pub linking: Vec<(String, String)>,
    /// Share of requests given to the right member (0.5 is chance with two members).
    pub accuracy: f64,
    /// Features compared.
    pub features: usize,
}

const ABSENT: &str = "<absent>";
/// Text blocks a tool writes into a user's turn: the linker reads them (they are not the user's words).
const TOOL_PREFIXES: [&str; 2] = ["<system-reminder>", "<environment_context>"];

/// The features of one request; headers named in `skip` (the lender's own, such as its upstream key) left out.
pub fn features(seen: &Seen, skip: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in &seen.headers {
        let k = k.to_ascii_lowercase();
        if skip.contains(&k.as_str()) {
            continue;
        }
        let e = out.entry(format!("header {k}")).or_insert_with(String::new);
        if !e.is_empty() {
            e.push('\n');
        }
        e.push_str(v);
    }
    match serde_json::from_slice::<serde_json::Value>(&seen.body) {
        Ok(v) => flatten("body", &v, false, &mut out),
        Err(_) if !seen.body.is_empty() => {
            out.insert(
                "body (not JSON)".into(),
                String::from_utf8_lossy(&seen.body).into(),
            );
        }
        Err(_) => {}
    }
    out
}

fn is_user_turn(v: &serde_json::Value) -> bool {
    v.get("role").and_then(|r| r.as_str()) == Some("user")
}

/// Adds the leaves of `v` under `path`; `user` is set inside a user's turn, whose words (its `text` and `content`
/// strings that no tool wrote) are left out.
fn flatten(path: &str, v: &serde_json::Value, user: bool, out: &mut BTreeMap<String, String>) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                flatten(&format!("{path}.{k}"), child, user, out);
            }
        }
        Value::Array(a) => {
            let turns = path.ends_with(".messages") || path.ends_with(".input");
            for (i, child) in a.iter().enumerate() {
                let user = user || (turns && is_user_turn(child));
                flatten(&format!("{path}[{i}]"), child, user, out);
            }
        }
        Value::String(s) => {
            let tool_written = TOOL_PREFIXES.iter().any(|p| s.trim_start().starts_with(p));
            let words = path.ends_with(".text") || path.ends_with(".content") || path.ends_with(']');
            // The Responses API's `input` may be the user's words alone.
            if ((user && words) || path == "body.input") && !tool_written {
                return;
            }
            match serde_json::from_str::<Value>(s) {
                Ok(inner @ Value::Object(_)) => flatten(&format!("{path}{{json}}"), &inner, user, out),
                _ => {
                    out.insert(path.to_string(), s.clone());
                }
            }
        }
        other => {
            out.insert(path.to_string(), other.to_string());
        }
    }
}

/// Runs the linker over `seen` (headers in `skip` left out).
pub fn link(seen: &[Seen], skip: &[&str]) -> Linkage {
    let all: Vec<BTreeMap<String, String>> = seen.iter().map(|s| features(s, skip)).collect();
    let names: BTreeSet<&String> = all.iter().flat_map(|f| f.keys()).collect();
    let value = |i: usize, name: &str| all[i].get(name).map_or(ABSENT, String::as_str).to_string();
    let mut linking = Vec::new();
    for name in &names {
        // value → (member, session) pairs that have it.
        let mut holders: BTreeMap<String, BTreeSet<(&str, &str)>> = BTreeMap::new();
        for (i, s) in seen.iter().enumerate() {
            holders
                .entry(value(i, name))
                .or_default()
                .insert((&s.member, &s.session));
        }
        for (v, who) in holders {
            let members: BTreeSet<&str> = who.iter().map(|(m, _)| *m).collect();
            if members.len() == 1 && who.len() >= 2 {
                linking.push(((*name).clone(), v));
                break;
            }
        }
    }
    let members: BTreeSet<&str> = seen.iter().map(|s| s.member.as_str()).collect();
    let mut right = 0.0;
    for (i, s) in seen.iter().enumerate() {
        let mut scores: Vec<(usize, &str)> = members
            .iter()
            .map(|m| {
                let shared = names
                    .iter()
                    .filter(|name| {
                        let mine = value(i, name);
                        seen.iter()
                            .enumerate()
                            .any(|(j, o)| o.member == *m && o.session != s.session && value(j, name) == mine)
                    })
                    .count();
                (shared, *m)
            })
            .collect();
        scores.sort();
        let best = scores.last().map_or(0, |(n, _)| *n);
        let top: Vec<&str> = scores
            .iter()
            .filter(|(n, _)| *n == best)
            .map(|(_, m)| *m)
            .collect();
        if top.contains(&s.member.as_str()) {
            right += 1.0 / top.len() as f64;
        }
    }
    Linkage {
        linking,
        accuracy: right / seen.len().max(1) as f64,
        features: names.len(),
    }
}

/// Recorded requests of a real client (`tests/fixtures/clients/*.json`, see the README there).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Recorded {
    /// The client and its version.
    pub client: String,
    /// The member that sent it.
    pub member: String,
    /// The member's session.
    pub session: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers as the client sent them.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// The recorded requests of one fixture file.
pub fn fixture(name: &str) -> Vec<Recorded> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/clients")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
