//! `lendmesh status` and `lendmesh peers`: read the running node's API and print tables (or JSON).

use super::*;

pub(super) fn cmd_inspect(config: &Config, args: &ApiArgs, peers: bool) -> anyhow::Result<()> {
    let addr = args.api.clone().unwrap_or_else(|| config.api.addr.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let get = |path: &'static str| {
        let (addr, token) = (addr.clone(), args.api_token.clone());
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let mut req = client.get(format!("http://{addr}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|_| {
                anyhow::anyhow!(
                    "no lendmesh node is answering at http://{addr} (start one with `lendmesh run`, or pass --api ADDR)"
                )
            })?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                bail!("the node's API needs a token: pass --api-token or set LENDMESH_API_TOKEN");
            }
            Ok::<serde_json::Value, anyhow::Error>(resp.json().await?)
        }
    };
    if peers {
        let v = rt.block_on(get("/v1/peers"))?;
        if args.json {
            out(serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        out(format!(
            "{:<10} {:<8} {:<5} {:<9} {:<20} {:>8} {:<7} {:>8} {:>6}  {:<24} {}",
            "PEER", "ROSTER", "CONN", "DIR", "PATH", "RTT", "BUCKET", "ATT AGE", "SEQ", "LIMITS", "AGENT"
        ));
        for p in v["peers"].as_array().cloned().unwrap_or_default() {
            let att = &p["attestation"];
            out(format!(
                "{:<10} {:<8} {:<5} {:<9} {:<20} {:>8} {:<7} {:>8} {:>6}  {:<24} {}",
                p["short_id"].as_str().unwrap_or("?"),
                p["roster_status"].as_str().unwrap_or("?"),
                if p["connected"].as_bool().unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                },
                p["direction"].as_str().unwrap_or("-"),
                path_cell(&p["path"]),
                p["rtt_ms"].as_f64().map_or("-".into(), |r| format!("{r:.1}ms")),
                att["bucket"].as_str().unwrap_or("-"),
                att["age_ms"]
                    .as_u64()
                    .map_or("-".into(), |a| format!("{:.1}s", a as f64 / 1000.0)),
                att["seq"].as_u64().map_or("-".into(), |s| s.to_string()),
                limits_cell(&p["limits"]),
                p["agent_version"].as_str().unwrap_or("-"),
            ));
        }
    } else {
        let v = rt.block_on(get("/v1/node"))?;
        if args.json {
            out(serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let c = &v["counters"];
        out(format!(
            "node      {} ({})",
            v["short_id"].as_str().unwrap_or("?"),
            v["peer_id"].as_str().unwrap_or("?")
        ));
        out(format!(
            "group     {} ({})",
            v["group"]["name"].as_str().unwrap_or("?"),
            v["group"]["id"].as_str().unwrap_or("?")
        ));
        out(format!(
            "roles     {}",
            v["roles"].as_array().map_or(String::new(), |r| r
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "))
        ));
        out(format!(
            "epoch     {} (roster version {})",
            v["epoch"], v["roster_version"]
        ));
        out(format!(
            "uptime    {} s, version {}",
            v["uptime_s"],
            v["version"].as_str().unwrap_or("?")
        ));
        out(format!("wallet    {} tokens", v["wallet_balance"]));
        let nat = &v["nat"];
        let reservations: Vec<&str> = nat["reservations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["relay"].as_str())
            .collect();
        out(format!(
            "reach     {} from outside; circuit relay {}{}",
            nat["reachability"].as_str().unwrap_or("?"),
            nat["relay"].as_str().unwrap_or("?"),
            if reservations.is_empty() {
                String::new()
            } else {
                format!("; reachable through the relay of {}", reservations.join(", "))
            }
        ));
        out(format!(
            "headroom  {} ({} upstream)",
            v["headroom_bucket"].as_str().unwrap_or("?"),
            v["upstream"].as_str().unwrap_or("?")
        ));
        for u in v["upstreams"].as_array().into_iter().flatten() {
            let models: Vec<&str> = u["models"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str())
                .collect();
            out(format!(
                "upstream  {} ({}, {}, {}): {} of {} left, {} kept for this member, lends {}{}",
                u["name"].as_str().unwrap_or("?"),
                u["kind"].as_str().unwrap_or("?"),
                u["api"].as_str().unwrap_or("?"),
                if models.is_empty() {
                    "any model".to_string()
                } else {
                    models.join(" ")
                },
                u["remaining"],
                u["capacity"],
                u["kept"],
                u["lendable_bucket"].as_str().unwrap_or("?"),
                if u["may_lend"].as_bool() == Some(false) {
                    " (billing overage: not lent)"
                } else {
                    ""
                }
            ));
        }
        out(format!(
            "peers     {} connected; privacy mode {}",
            v["connected_peers"],
            v["privacy_mode"].as_str().unwrap_or("?")
        ));
        out(format!(
            "traffic   served locally {}, borrowed {} (failed {}), lent {} (refused {}), relayed {}",
            c["served_locally"],
            c["borrows_ok"],
            c["borrows_failed"],
            c["lends_served"],
            c["lends_refused"],
            c["relays_ok"]
        ));
        for a in v["listen_addrs"].as_array().cloned().unwrap_or_default() {
            out(format!("listen    {}", a.as_str().unwrap_or("?")));
        }
    }
    Ok(())
}

/// What the per-member limits did to a peer, in a few words: `-`, `throttled 512 claim`, `banned 45s (2×)`.
/// How a member is reached: `direct`, `hole-punched`, `relay <short id>`, or `-` when not connected.
fn path_cell(p: &serde_json::Value) -> String {
    match p["kind"].as_str() {
        Some("direct") => "direct".into(),
        Some("hole_punched") => "hole-punched".into(),
        Some("relayed") => format!("relay {}", p["relay"].as_str().unwrap_or("?")),
        _ => "-".into(),
    }
}

fn limits_cell(l: &serde_json::Value) -> String {
    let throttled: Vec<String> = l["throttled"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{n} {k}")).collect())
        .unwrap_or_default();
    let mut parts = Vec::new();
    if !throttled.is_empty() {
        parts.push(format!("throttled {}", throttled.join(", ")));
    }
    if let Some(until) = l["banned_until_ms"].as_u64() {
        let left = until.saturating_sub(crate::clock::now_ms()).div_ceil(1000);
        parts.push(format!("banned {left}s"));
    }
    match l["disconnects"].as_u64() {
        Some(n) if n > 0 => parts.push(format!("cut off {n}×")),
        _ => {}
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}
