//! The borrowed-request rules on the shapes real clients send (Claude Code, the Anthropic and OpenAI SDKs).

use serde_json::{Value, json};

use super::*;

const CONV: &str = "0123456789abcdef0123456789abcdef";

fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn scrub(family: ApiFamily, body: &Value) -> (Value, ScrubReport) {
    let bytes = serde_json::to_vec(body).unwrap();
    let (out, report) = scrub_body(
        family,
        &bytes,
        Body::parse(&bytes),
        CONV,
        ScrubSettings::default(),
    );
    (serde_json::from_slice(&out).unwrap(), report)
}

#[test]
fn families_follow_the_path() {
    assert_eq!(ApiFamily::of("/v1/messages?beta=true", &[]), ApiFamily::Anthropic);
    assert_eq!(
        ApiFamily::of("/anthropic/v1/messages/count_tokens", &[]),
        ApiFamily::Anthropic
    );
    assert_eq!(ApiFamily::of("/v1/chat/completions", &[]), ApiFamily::OpenAi);
    assert_eq!(ApiFamily::of("/openai/v1/responses/", &[]), ApiFamily::OpenAi);
    assert_eq!(ApiFamily::of("/api/generate", &[]), ApiFamily::Other);
    assert_eq!(
        ApiFamily::of("/proxy/x", &h(&[("Anthropic-Version", "2023-06-01")])),
        ApiFamily::Anthropic
    );
}

#[test]
fn only_allowlisted_headers_go_in_a_fixed_order_and_case() {
    let claude_code = h(&[
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("User-Agent", "claude-cli/2.1.197 (external, sdk-cli)"),
        ("X-Claude-Code-Session-Id", "c951ea23-dc99-4234-beab-618731493a8f"),
        ("X-Stainless-Arch", "x64"),
        ("X-Stainless-OS", "Linux"),
        ("anthropic-beta", "claude-code-20250219"),
        ("anthropic-dangerous-direct-browser-access", "true"),
        ("anthropic-version", "2023-06-01"),
        ("x-api-key", "sk-ant-api03-borrowerkey"),
        ("x-app", "cli"),
        ("traceparent", "00-abc-def-01"),
        ("Cookie", "a=b"),
    ]);
    let got = borrowed_headers(ApiFamily::Anthropic, &claude_code);
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["content-type", "accept", "anthropic-version", "anthropic-beta"]
    );
    // An OpenAI request carries no Anthropic header, and the reverse.
    let got = borrowed_headers(ApiFamily::OpenAi, &claude_code);
    assert_eq!(got.len(), 2);
    let openai = h(&[
        ("OpenAI-Beta", "assistants=v2"),
        ("openai-organization", "org-1"),
        ("accept", "*/*"),
    ]);
    let got = borrowed_headers(ApiFamily::OpenAi, &openai);
    assert_eq!(got, h(&[("accept", "*/*"), ("openai-beta", "assistants=v2")]));
    assert!(is_credential("X-Api-Key") && is_credential("openai-project") && !is_credential("accept"));
}

#[test]
fn claude_codes_user_id_keeps_its_shape_with_per_conversation_values() {
    let body = json!({
        "model": "claude-opus-4-8",
        "metadata": {"user_id": "{\"device_id\":\"baa5ca189ad135cdcb5fd706db04c4f3cd4ab4d81b9d89251fd83b0e63c9deb2\",\"account_uuid\":\"4f1c\",\"session_id\":\"c951ea23-dc99-4234-beab-618731493a8f\"}"},
        "messages": [{"role": "user", "content": "hi"}],
    });
    let (out, report) = scrub(ApiFamily::Anthropic, &body);
    assert_eq!(report.fields, 1);
    let user_id: Value = serde_json::from_str(out["metadata"]["user_id"].as_str().unwrap()).unwrap();
    let device = user_id["device_id"].as_str().unwrap();
    assert_eq!(device.len(), 64);
    assert!(device.bytes().all(|c| c.is_ascii_hexdigit()) && !device.contains(CONV));
    assert!(!user_id.to_string().contains("baa5ca18") && !user_id.to_string().contains("c951ea23"));
    assert_eq!(user_id["account_uuid"], "");
    let session = user_id["session_id"].as_str().unwrap();
    assert_eq!(
        session.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(!device.starts_with(&session[..8]), "two values, not one repeated");
    // The same conversation, the same values; another, others.
    let (again, _) = scrub(ApiFamily::Anthropic, &body);
    assert_eq!(again, out);
    let bytes = serde_json::to_vec(&body).unwrap();
    let (other, _) = scrub_body(
        ApiFamily::Anthropic,
        &bytes,
        Body::parse(&bytes),
        "fedcba98765432100123456789abcdef",
        ScrubSettings::default(),
    );
    assert_ne!(other, serde_json::to_vec(&out).unwrap());
    // An SDK caller's own user id becomes the value itself.
    let body = json!({"metadata": {"user_id": "alice-account-7731"}, "messages": []});
    let (out, _) = scrub(ApiFamily::Anthropic, &body);
    assert_eq!(out["metadata"]["user_id"], CONV);
}

#[test]
fn openai_identifiers_go_and_the_cache_key_is_per_conversation() {
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "turn"}],
        "user": "alice@example.org",
        "safety_identifier": "sid-alice",
        "metadata": {"member": "alice"},
        "prompt_cache_key": "pck-alice-1",
    });
    let (out, report) = scrub(ApiFamily::OpenAi, &body);
    assert_eq!(report.fields, 4);
    assert!(
        out.get("user").is_none() && out.get("safety_identifier").is_none() && out.get("metadata").is_none()
    );
    assert_eq!(out["prompt_cache_key"], CONV);
    assert_eq!(out["messages"], body["messages"]);
}

#[test]
fn a_body_with_nothing_to_change_goes_byte_for_byte() {
    let bytes =
        b"{ \"model\" : \"m\",\n \"messages\": [{\"role\":\"user\",\"content\":\"/home/alice is mine\"}] }";
    let (out, report) = scrub_body(
        ApiFamily::Anthropic,
        bytes,
        Body::parse(bytes),
        CONV,
        ScrubSettings::default(),
    );
    assert_eq!(out, bytes, "the user's own text is never touched");
    assert_eq!(report, ScrubReport::default());
    let not_json = b"model=m&prompt=hi";
    let (out, report) = scrub_body(
        ApiFamily::OpenAi,
        not_json,
        Body::parse(not_json),
        CONV,
        ScrubSettings::default(),
    );
    assert_eq!(out, not_json);
    assert!(report.not_json);
    assert_eq!(Body::parse(b"  "), Body::Empty);
    assert_eq!(Body::parse(b"[1]"), Body::NotJson);
}

const CLAUDE_CODE_ENV: &str = "# Memory\n\nYou have a persistent file-based memory at `/home/alice/.claude/projects/-home-alice-projects-app/memory/`. This directory already exists.\n\n# Environment\nYou have been invoked in the following environment: \n - Primary working directory: /home/alice/projects/app\n - Is a git repository: false\n - Platform: linux\n - Shell: bash\n - OS Version: Linux 6.18.44-fc-v669\n - You are powered by the model named Opus 4.8.";

#[test]
fn claude_codes_environment_block_is_withheld() {
    let got = redact_environment(CLAUDE_CODE_ENV).unwrap();
    for gone in ["alice", "/home/", "linux", "bash", "6.18.44"] {
        assert!(!got.contains(gone), "{gone} left in:\n{got}");
    }
    assert!(got.contains("memory at `[withheld]`. This directory"), "{got}");
    assert!(got.contains(" - Primary working directory: [withheld]\n - Is a git repository: false\n - Platform: [withheld]\n - Shell: [withheld]\n - OS Version: [withheld]\n - You are powered"), "{got}");
    assert_eq!(
        redact_environment(&got),
        None,
        "withholding twice changes nothing"
    );
    assert_eq!(redact_environment("no environment here"), None);
}

#[test]
fn other_tools_environments_are_withheld() {
    let codex = "<environment_context>\n  <cwd>/Users/bob/src/app</cwd>\n  <approval_policy>on-request</approval_policy>\n  <shell>zsh</shell>\n</environment_context>";
    let got = redact_environment(codex).unwrap();
    assert!(
        got.contains("<cwd>[withheld]</cwd>") && got.contains("<shell>[withheld]</shell>"),
        "{got}"
    );
    assert!(got.contains("<approval_policy>on-request</approval_policy>"));
    let gemini = "My operating system is: linux\nI'm currently working in the directory: /srv/work/app\n";
    let got = redact_environment(gemini).unwrap();
    assert_eq!(
        got,
        "My operating system is: [withheld]\nI'm currently working in the directory: [withheld]\n"
    );
    let windows = "files under C:\\Users\\carol\\code and C:/Users/carol/x.txt";
    assert_eq!(
        redact_environment(windows).unwrap(),
        "files under [withheld] and [withheld]"
    );
}

#[test]
fn only_tool_written_text_is_redacted() {
    let body = json!({
        "system": [{"type": "text", "text": CLAUDE_CODE_ENV}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\ncwd: /home/alice/projects/app\n</system-reminder>"},
                {"type": "text", "text": "please read /home/alice/projects/app/notes.md"},
                {"type": "tool_result", "tool_use_id": "t1", "content": "/home/alice/projects/app/notes.md: 3 lines"},
            ]},
            {"role": "system", "content": "Platform: darwin"},
            {"role": "assistant", "content": "Working directory: /home/alice"},
        ],
    });
    let (out, report) = scrub(ApiFamily::Anthropic, &body);
    assert_eq!(report.environment, 3);
    let text = out.to_string();
    assert!(!out["system"].to_string().contains("alice"));
    assert_eq!(
        out["messages"][0]["content"][0]["text"],
        "<system-reminder>\ncwd: [withheld]\n</system-reminder>"
    );
    assert_eq!(
        out["messages"][0]["content"][1], body["messages"][0]["content"][1],
        "the user's own words"
    );
    assert_eq!(
        out["messages"][0]["content"][2], body["messages"][0]["content"][2],
        "what a tool returned"
    );
    assert_eq!(out["messages"][1]["content"], "Platform: [withheld]");
    assert_eq!(out["messages"][2], body["messages"][2], "the model's own turn");
    assert!(text.contains("please read /home/alice"));
    // Off: identifying fields still go, the environment stays.
    let bytes = serde_json::to_vec(&body).unwrap();
    let off = ScrubSettings {
        redact_environment: false,
    };
    let (_, report) = scrub_body(ApiFamily::Anthropic, &bytes, Body::parse(&bytes), CONV, off);
    assert_eq!(report, ScrubReport::default());
}

#[test]
fn openai_system_and_developer_messages_and_instructions_are_tool_written() {
    let body = json!({
        "instructions": "Working directory: /home/bob/app",
        "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": "Shell: fish"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "<environment_context><cwd>/home/bob/app</cwd></environment_context>"}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Shell: fish is my favourite"}]},
        ],
    });
    let (out, report) = scrub(ApiFamily::OpenAi, &body);
    assert_eq!(report.environment, 3);
    assert_eq!(out["instructions"], "Working directory: [withheld]");
    assert_eq!(out["input"][0]["content"][0]["text"], "Shell: [withheld]");
    assert_eq!(out["input"][2], body["input"][2]);
}

#[test]
fn a_conversation_is_named_by_the_tools_session_or_its_start() {
    let session = h(&[("X-Claude-Code-Session-Id", "s-1")]);
    let body = Body::parse(br#"{"system":"sys","messages":[{"role":"user","content":"first"}]}"#);
    assert_eq!(
        conversation_hint(ApiFamily::Anthropic, &session, &body),
        Some(ConversationHint::ToolSession(b"s-1".to_vec()))
    );
    let first = conversation_hint(ApiFamily::Anthropic, &[], &body).unwrap();
    // The next turn repeats the start: the same conversation.
    let next = Body::parse(
        br#"{"system":"sys","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"a"},{"role":"user","content":"second"}]}"#,
    );
    assert_eq!(
        conversation_hint(ApiFamily::Anthropic, &[], &next),
        Some(first.clone())
    );
    let other = Body::parse(br#"{"system":"sys","messages":[{"role":"user","content":"another"}]}"#);
    assert_ne!(conversation_hint(ApiFamily::Anthropic, &[], &other), Some(first));
    // OpenAI: leading system messages and the first one after them.
    let a = Body::parse(br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}]}"#);
    let b = Body::parse(
        br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},{"role":"assistant","content":"r"}]}"#,
    );
    assert_eq!(
        conversation_hint(ApiFamily::OpenAi, &[], &a),
        conversation_hint(ApiFamily::OpenAi, &[], &b)
    );
    assert_eq!(conversation_hint(ApiFamily::Other, &[], &a), None);
    assert_eq!(conversation_hint(ApiFamily::OpenAi, &[], &Body::NotJson), None);
}

/// Found by the `gateway_request` fuzz target (fuzz/corpus/gateway_request/regression-float-digits): a number too
/// large for an integer was rewritten with other digits each time the body was scrubbed, as the JSON parser took a
/// fast, inexact path. Now it parses to the nearest float, so a second scrub changes nothing.
#[test]
fn a_scrubbed_body_keeps_its_numbers_through_another_scrub() {
    let text = br#"{"model":"claude-sonnet-4-5","max_tokens":10241111111111111111111111111111111111111111111,"temperature":0.30000000000000004,"metadata":{"user_id":"user_abc_account_def_session_123"},"messages":[{"role":"user","content":"hi"}]}"#;
    let once = scrub_body(
        ApiFamily::Anthropic,
        text,
        Body::parse(text),
        "0123456789abcdef0123456789abcdef",
        ScrubSettings::default(),
    )
    .0;
    let twice = scrub_body(
        ApiFamily::Anthropic,
        &once,
        Body::parse(&once),
        "0123456789abcdef0123456789abcdef",
        ScrubSettings::default(),
    )
    .0;
    assert_eq!(String::from_utf8_lossy(&twice), String::from_utf8_lossy(&once));
    let v: Value = serde_json::from_slice(&once).unwrap();
    assert_eq!(v["temperature"].as_f64(), Some(0.30000000000000004));
}
