//! `lendmesh group …` and `lendmesh join`: on a stopped node through its store, on a running one through its API.

use super::*;

fn parse_peer(s: &str) -> anyhow::Result<PeerId> {
    s.parse::<PeerId>()
        .map_err(|e| anyhow::anyhow!("'{s}' is not a lendmesh peer id: {e}"))
}

pub(super) fn cmd_group(home: &Path, config: &Config, cmd: GroupCommand) -> anyhow::Result<()> {
    if !home.join(crate::store::STORE_FILE).exists() {
        bail!(
            "no lendmesh node in {}; run `lendmesh init --home {}` first",
            home.display(),
            home.display()
        );
    }
    match Store::open(home) {
        Ok(store) => cmd_group_offline(store, home, config, cmd),
        // The node is running: administer it through its API (loopback, with its local admin token).
        Err(crate::store::StoreError::InUse { .. }) if !matches!(cmd, GroupCommand::Create { .. }) => {
            cmd_group_live(home, config, cmd)
        }
        Err(e) => Err(e.into()),
    }
}

fn cmd_group_offline(store: Store, home: &Path, config: &Config, cmd: GroupCommand) -> anyhow::Result<()> {
    let (key, me) = identity_of(&store, home)?;
    if let GroupCommand::Create {
        name,
        rsa_bits,
        epoch,
        epoch_days,
        grace,
        quota,
    } = cmd
    {
        if let Some(g) = store.group()? {
            bail!(
                "this node already belongs to group '{}' ({}); use another --home for a new group",
                g.name,
                g.group_id.short()
            );
        }
        if name.is_empty() || name.len() > lendmesh_protocol::group::MAX_GROUP_NAME {
            bail!(
                "the group name must be 1 to {} bytes",
                lendmesh_protocol::group::MAX_GROUP_NAME
            );
        }
        let size = KeySize::from_bits(rsa_bits)?;
        let length_ms = match (epoch, epoch_days) {
            (Some(d), _) => d.as_millis() as u64,
            (None, Some(days)) => days.saturating_mul(DAY_MS),
            (None, None) => lendmesh_protocol::epoch::DEFAULT_EPOCH_MS,
        };
        let grace_ms = grace.map_or(lendmesh_protocol::epoch::DEFAULT_GRACE_MS.min(length_ms), |g| {
            g.as_millis() as u64
        });
        crate::group::admin::check_epoch_settings(length_ms, grace_ms)?;
        out(format!("generating a {rsa_bits}-bit issuer key…"));
        let group = crate::group::admin::create_group(&store, &key, &name, size, length_ms, grace_ms, quota)?;
        out(format!("created group '{name}' ({})", group.group_id));
        out(format!("admin and issuer: {me}"));
        out(format!(
            "epochs: {} long, tokens accepted for {} after an epoch ends; the next epoch is announced {} ahead",
            human(length_ms),
            human(grace_ms),
            human(lendmesh_protocol::epoch::announce_lead_ms(length_ms))
        ));
        out(format!(
            "group key fingerprint: {}",
            group.libp2p_psk().fingerprint()
        ));
        out("next: `lendmesh group invite PEER_ID --bootstrap /ip4/<this host>/tcp/4001` for each member");
        return Ok(());
    }
    let mut group = store.group()?.ok_or_else(|| {
        anyhow::anyhow!(
            "this node is not in a group: `lendmesh group create --name NAME` or `lendmesh join INVITE`"
        )
    })?;
    match cmd {
        GroupCommand::Create { .. } => unreachable!("handled above"),
        GroupCommand::Invite {
            peer_id,
            quota,
            days,
            out: out_path,
            bootstrap,
        } => {
            let member = parse_peer(&peer_id)?;
            let addrs = invite_bootstrap(bootstrap, config);
            let invite = crate::group::admin::invite_member(&key, &mut group, member, quota, days, addrs)?;
            store.put_group(&group)?;
            write_invite(
                &invite.to_file_text(),
                out_path,
                &member,
                quota,
                days,
                group.roster().version,
                invite.bootstrap.is_empty(),
            )?;
            out("the admin node gossips the new roster to members when it runs");
        }
        GroupCommand::Remove { peer_id, rotate } => {
            let member = parse_peer(&peer_id)?;
            crate::group::admin::remove_member(&key, &mut group, member)?;
            let rotated = if rotate {
                out("generating the new epoch's issuer key…");
                let secret = crate::group::admin::generate_epoch_key(&group)?;
                Some(crate::group::admin::rotate_now(
                    &store,
                    &key,
                    &mut group,
                    &secret,
                    now_ms(),
                )?)
            } else {
                None
            };
            store.put_group(&group)?;
            let _ = store.drop_peer_addrs(&member);
            out(format!(
                "removed {}; roster version {}",
                member.short(),
                group.roster().version
            ));
            if let Some(e) = rotated {
                out(format!(
                    "rotated: epoch {e} starts now; every older token is refused"
                ));
            }
        }
        GroupCommand::Rotate => {
            out("generating the new epoch's issuer key…");
            let secret = crate::group::admin::generate_epoch_key(&group)?;
            let e = crate::group::admin::rotate_now(&store, &key, &mut group, &secret, now_ms())?;
            store.put_group(&group)?;
            out(format!(
                "rotated: epoch {e} starts now with the {} members of roster version {} as its replicas; every older \
                 token is refused",
                group.roster().member_ids().count(),
                group.roster().version
            ));
        }
        GroupCommand::Show => {
            let now = now_ms();
            for line in crate::group::admin::GroupSummary::of(&group, &me, now).render(now) {
                out(line);
            }
        }
    }
    Ok(())
}

/// `lendmesh group invite|remove|show` against the running node.
fn cmd_group_live(home: &Path, config: &Config, cmd: GroupCommand) -> anyhow::Result<()> {
    let (addr, token) = home::read_admin_access(home).map_err(|e| {
        anyhow::anyhow!(
            "the node in {} is running, but its admin access files are unreadable ({e}); run this as the node's user",
            home.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let url = format!("http://{addr}{path}");
        let (token, api_token) = (token.clone(), config.api.token.clone());
        async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?;
            let mut req = client
                .request(method, url)
                .header("x-lendmesh-admin-token", token);
            if let Some(t) = api_token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.map_err(|_| {
                anyhow::anyhow!(
                    "the node's store is in use, but no node answers at http://{addr}; is another lendmesh process using this home?"
                )
            })?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                bail!(
                    "{}",
                    v["message"]
                        .as_str()
                        .unwrap_or("the running node refused the request")
                );
            }
            Ok::<serde_json::Value, anyhow::Error>(v)
        }
    };
    match cmd {
        GroupCommand::Rotate => bail!(
            "the node in {} is running: stop it, then run `lendmesh group rotate` (or rotate with `lendmesh group \
             remove <peer> --rotate` while it runs)",
            home.display()
        ),
        GroupCommand::Create { .. } => unreachable!("create needs a stopped node"),
        GroupCommand::Invite {
            peer_id,
            quota,
            days,
            out: out_path,
            bootstrap,
        } => {
            let member = parse_peer(&peer_id)?;
            let addrs = invite_bootstrap(bootstrap, config);
            let body =
                serde_json::json!({"peer_id": peer_id, "quota": quota, "days": days, "bootstrap": addrs});
            let v = rt.block_on(call(reqwest::Method::POST, "/v1/group/invite", Some(body)))?;
            let text = v["invite"].as_str().unwrap_or_default();
            let version = v["roster_version"].as_u64().unwrap_or(0);
            let no_bootstrap = Invite::from_file_text(text)
                .map(|i| i.bootstrap.is_empty())
                .unwrap_or(true);
            write_invite(text, out_path, &member, quota, days, version, no_bootstrap)?;
            out("the running admin node has gossiped the new roster to the group");
        }
        GroupCommand::Remove { peer_id, rotate } => {
            if rotate {
                out("generating the new epoch's issuer key…");
            }
            let body = serde_json::json!({"peer_id": peer_id, "rotate": rotate});
            let v = rt.block_on(call(reqwest::Method::POST, "/v1/group/remove", Some(body)))?;
            out(format!(
                "removed {}; roster version {} (gossiped; its connections are refused)",
                parse_peer(&peer_id)?.short(),
                v["roster_version"]
            ));
            if let Some(e) = v["rotated_to"].as_u64() {
                out(format!(
                    "rotated: epoch {e} starts now; every older token is refused"
                ));
            }
        }
        GroupCommand::Show => {
            let v = rt.block_on(call(reqwest::Method::GET, "/v1/group", None))?;
            let summary: crate::group::admin::GroupSummary = serde_json::from_value(v)?;
            for line in summary.render(now_ms()) {
                out(line);
            }
        }
    }
    Ok(())
}

fn write_invite(
    text: &str,
    out_path: Option<PathBuf>,
    member: &PeerId,
    quota: u32,
    days: u64,
    roster_version: u64,
    no_bootstrap: bool,
) -> anyhow::Result<()> {
    let path = out_path.unwrap_or_else(|| PathBuf::from(format!("invite-{}.txt", member.short())));
    home::write_secret(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    out(format!(
        "added {} (quota {quota}/epoch, {days} days); roster version {roster_version}",
        member.short()
    ));
    out(format!(
        "wrote {} (mode 0600): it holds the group's secret keys — hand it over privately",
        path.display()
    ));
    if no_bootstrap {
        out("note: the invite has no bootstrap address; the member must pass --bootstrap to `lendmesh run`");
    }
    Ok(())
}

/// `7d`, `20s`, `1h 30m`.
fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub(super) fn cmd_join(home: &Path, invite_path: &Path) -> anyhow::Result<()> {
    let (store, _key, me) = open_store(home)?;
    let bytes = home::read_limited(invite_path, MAX_INVITE_BYTES as u64)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a text invite file", invite_path.display()))?;
    let invite = Invite::from_file_text(&text)?;
    let group = GroupState::from_invite(&invite, &me)?;
    if let Some(existing) = store.group()? {
        if existing.group_id != group.group_id {
            bail!(
                "this node already belongs to group '{}' ({}); the invite is for '{}' ({}); use another --home",
                existing.name,
                existing.group_id.short(),
                group.name,
                group.group_id.short()
            );
        }
        if existing.admin == me {
            bail!(
                "this node is the admin of '{}'; it does not join its own group",
                existing.name
            );
        }
    }
    // Checked last, so a wrong invite says what is wrong with it first.
    home::check_private(invite_path).context(
        "the invite holds the group's network and attestation keys; keep it private (it is safe to delete once joined)",
    )?;
    store.put_group(&group)?;
    out(format!("joined group '{}' ({})", group.name, group.group_id));
    out(format!("admin: {}", group.admin));
    out(format!(
        "roster version {}, {} members; epoch {}",
        group.roster().version,
        group.roster().member_ids().count(),
        group.epoch_number(now_ms())
    ));
    out(format!(
        "group key fingerprint: {}",
        group.libp2p_psk().fingerprint()
    ));
    out("you can delete the invite file now; run `lendmesh run` to start the node");
    Ok(())
}

/// The addresses an invite names for reaching the admin: the ones given on the command line, then the node's
/// configured external addresses.
fn invite_bootstrap(mut given: Vec<String>, config: &Config) -> Vec<String> {
    given.extend(config.network.external.iter().cloned());
    given
}
