//! The PeerBook's group side: epoch switches and retirement, the admin's next epoch and live administration,
//! key-consistency alarms, and publishing the group to the other actors and the network.

use super::*;

impl PeerBook {
    /// Once a second: logs a switch, retires epochs past their grace (persist, prune the store), and on the admin
    /// starts making the next epoch when the newest ends within the lead time.
    pub(super) fn handle_epoch_tick(&mut self) {
        let now = now_ms();
        let current = self.group.epochs.current(now).map(|i| i.epoch());
        if current != self.current_epoch {
            match current {
                Some(e) => info!(epoch = e, "epoch {e} started"),
                None => warn!(
                    "no epoch runs now: the next one has not been announced (is the admin node running?)"
                ),
            }
            self.current_epoch = current;
            self.counters.epoch_current.set(current.map_or(0, i64::from));
        }
        let retired = self.group.epochs.retire(now);
        if !retired.is_empty() {
            for e in &retired {
                self.alarms.remove(e);
            }
            let oldest_kept = self.group.epochs.iter().next().map_or(0, |i| i.epoch());
            match self.store.prune_epochs_before(oldest_kept) {
                Ok(p) => {
                    self.counters
                        .add(&self.counters.epochs_pruned, retired.len() as u64);
                    info!(epochs = ?retired, spent = p.spent, claims = p.claims, quota = p.quota, "retired epochs pruned");
                }
                Err(e) => warn!(%e, "could not prune retired epochs"),
            }
            self.persist_group("epoch retirement");
        }
        if self.admin_key.is_some() && !self.key_in_flight && self.group.epochs.needs_next(now) {
            self.key_in_flight = true;
            let (group, tx) = (self.group.clone(), self.tx.clone());
            tokio::spawn(async move {
                let result = tokio::task::spawn_blocking(move || admin::generate_epoch_key(&group))
                    .await
                    .unwrap_or_else(|e| Err(AdminError::Invalid(format!("key generation failed: {e}"))));
                let _ = tx
                    .send(Command::EpochKey {
                        result: Box::new(result),
                    })
                    .await;
            });
        }
    }

    /// The admin's next-epoch key is ready: store it, announce the epoch, gossip it.
    pub(super) async fn handle_epoch_key(&mut self, result: Result<SecretKey, AdminError>) {
        self.key_in_flight = false;
        let Some(admin_key) = self.admin_key.clone() else {
            return;
        };
        let now = now_ms();
        if !self.group.epochs.needs_next(now) {
            return;
        }
        let announced = result
            .and_then(|secret| admin::announce_next(&self.store, &admin_key, &mut self.group, &secret, now));
        match announced {
            Ok(epoch) => {
                let info = self.group.epochs.get(epoch);
                info!(
                    epoch,
                    starts_at_ms = info.map(|i| i.starts_at_ms()),
                    ends_at_ms = info.map(|i| i.effective_end_ms),
                    "announced the next epoch"
                );
                self.persist_group("epoch");
                self.publish_group().await;
            }
            Err(e) => warn!(%e, "could not make the next epoch; will retry"),
        }
    }

    pub(super) fn handle_admin(&mut self, op: AdminOp) -> Result<AdminReply, AdminError> {
        let key = self
            .admin_key
            .clone()
            .ok_or_else(|| AdminError::NotAdmin(self.group.admin.short()))?;
        let reply = match op {
            AdminOp::Invite {
                member,
                quota,
                days,
                bootstrap,
            } => {
                let mut group = self.group.clone();
                let invite = admin::invite_member(&key, &mut group, member, quota, days, bootstrap)?;
                self.store.put_group(&group)?;
                self.group = group;
                info!(peer = %member.short(), quota, "member invited (live)");
                AdminReply::Invite(invite.to_file_text())
            }
            AdminOp::Remove { member, rotate } => {
                let mut group = self.group.clone();
                admin::remove_member(&key, &mut group, member)?;
                let rotated_to = match rotate {
                    Some(secret) => Some(admin::rotate_now(
                        &self.store,
                        &key,
                        &mut group,
                        &secret,
                        now_ms(),
                    )?),
                    None => None,
                };
                self.store.put_group(&group)?;
                self.group = group;
                let _ = self.store.drop_peer_addrs(&member);
                info!(peer = %member.short(), ?rotated_to, "member removed (live)");
                AdminReply::Removed {
                    roster_version: self.group.roster().version,
                    rotated_to,
                }
            }
        };
        self.persist_group("roster");
        Ok(reply)
    }

    /// Gossips the roster and every held epoch announcement, oldest first (the order rotations need).
    pub(super) async fn publish_group(&self) {
        let _ = self
            .net
            .publish(GossipMessage::Roster(self.group.roster.clone()))
            .await;
        for a in self.group.epochs.announcements() {
            let _ = self.net.publish(GossipMessage::Epoch(Box::new(a.clone()))).await;
        }
    }

    pub(super) fn raise_alarm(&mut self, epoch: u32, source: String) {
        if self.group.epochs.get(epoch).is_none() {
            return;
        }
        let sources = self.alarms.entry(epoch).or_default();
        if sources.insert(source.clone()) {
            self.counters.inc(&self.counters.key_alarms_raised);
            tracing::error!(
                epoch,
                %source,
                "KEY CONSISTENCY ALARM: {source} holds another issuer key for epoch {epoch}; a member-specific key \
                 would unmask that member. Refusing to spend or accept tokens of epoch {epoch} until resolved"
            );
            self.publish_view();
        }
    }

    pub(super) fn clear_alarm(&mut self, epoch: u32, source: &str) {
        let Some(sources) = self.alarms.get_mut(&epoch) else {
            return;
        };
        if sources.remove(source) {
            info!(epoch, %source, "key consistency restored with {source} for epoch {epoch}");
            if sources.is_empty() {
                self.alarms.remove(&epoch);
            }
            self.publish_view();
        }
    }

    pub(super) fn publish_view(&self) {
        let view = GroupView {
            roster: self.group.roster().clone(),
            epochs: self.group.epochs.clone(),
            refused_epochs: self.alarms.keys().copied().collect(),
        };
        self.counters.key_alarms.set(view.refused_epochs.len() as i64);
        self.view_tx.send_replace(Arc::new(view));
    }

    pub(super) fn persist_group(&mut self, what: &str) {
        if let Err(e) = self.store.put_group(&self.group) {
            warn!(%e, "could not persist the new {what}");
        }
        let roster = self.group.roster().clone();
        debug!(
            version = roster.version,
            members = roster.members.len(),
            epochs = ?self.group.epochs.iter().map(|i| i.epoch()).collect::<Vec<_>>(),
            "group state updated: {what}"
        );
        self.acceptor.retain_roster(&roster);
        if **self.roster_tx.borrow() != roster {
            info!(
                version = roster.version,
                members = roster.members.len(),
                "adopted roster version {}",
                roster.version
            );
            self.roster_tx.send_replace(Arc::new(roster));
        }
        self.publish_view();
    }
}
