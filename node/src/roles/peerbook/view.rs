//! The PeerBook's read side: what the borrower routes on and what the API shows.

use super::*;

impl PeerBook {
    /// Whether `peer` is left out for silence (see [`PeerBookHandle::silent`]).
    pub(super) fn silent(&self, peer: &PeerId) -> bool {
        let now = now_ms();
        let after = lendmesh_protocol::health::DEFAULT_UNHEALTHY_AFTER_MS;
        let Some(e) = self.peers.get(peer) else {
            return true;
        };
        let another_is_fine = self
            .peers
            .iter()
            .any(|(p, o)| p != peer && p != &self.me && o.connected && o.health.healthy(now, after));
        e.health.left_out(now, after, another_is_fine)
    }

    pub(super) fn routing_view(&self) -> RoutingView {
        let now = now_ms();
        let roster = self.group.roster();
        let window = AcceptorConfig::default().window_ms;
        let active = |p: &PeerId| p != &self.me && roster.is_active(p, now);
        let after = lendmesh_protocol::health::DEFAULT_UNHEALTHY_AFTER_MS;
        let fresh: Vec<(&PeerId, &PeerEntry, &Attestation, u64)> = self
            .peers
            .iter()
            .filter(|(p, _)| active(p))
            .filter_map(|(p, e)| {
                let (att, _) = e.attestation.as_ref()?;
                let age = now.saturating_sub(att.body.issued_at_ms);
                (age <= window && !att.body.ohttp_key_config.is_empty()).then_some((p, e, att, age))
            })
            .collect();
        // A lender left out by `protocol::health` (a failed stream; silence while another answers) waits like a
        // cooling one, until its next ping answer at the earliest.
        let a_lender_is_fine = fresh.iter().any(|(_, e, ..)| !e.health.sick(now, after));
        let lenders = fresh
            .into_iter()
            .map(|(p, e, att, age)| LenderCandidate {
                candidate: lendmesh_protocol::routing::Candidate {
                    peer: *p,
                    headroom: att.body.headroom,
                    attestation_age_ms: age,
                    cooling_until_ms: if e.health.left_out(now, after, a_lender_is_fine) {
                        Some(e.cooling_until_ms.unwrap_or(0).max(now + after))
                    } else {
                        e.cooling_until_ms
                    },
                },
                key_config: att.body.ohttp_key_config.clone(),
                capabilities: att.body.offered(),
            })
            .collect();
        // Relays: connected members not cooling down and not left out by `protocol::health`.
        let usable: Vec<(&PeerId, &PeerEntry)> = self
            .peers
            .iter()
            .filter(|(p, e)| e.connected && active(p) && e.relay_cooling_until_ms.is_none_or(|t| t <= now))
            .collect();
        let a_relay_is_fine = usable.iter().any(|(_, e)| e.health.healthy(now, after));
        let connected = usable
            .iter()
            .filter(|(_, e)| !e.health.left_out(now, after, a_relay_is_fine))
            .map(|(p, _)| **p)
            .collect();
        let known = roster.member_ids().filter(|p| *p != &self.me).count();
        RoutingView {
            lenders,
            connected,
            known,
        }
    }

    pub(super) fn views(&self) -> Vec<PeerView> {
        let now = now_ms();
        let roster = self.group.roster();
        let mut ids: Vec<PeerId> = roster.members.iter().map(|e| e.peer).collect();
        ids.extend(self.peers.keys().copied());
        ids.sort();
        ids.dedup();
        ids.retain(|p| p != &self.me);
        ids.into_iter()
            .map(|id| {
                let e = self.peers.get(&id).cloned().unwrap_or_default();
                let entry = roster.members.iter().find(|m| m.peer == id);
                let status = if roster.is_removed(&id) {
                    "removed"
                } else if let Some(m) = entry {
                    if now < m.expires_at_ms {
                        "member"
                    } else {
                        "expired"
                    }
                } else {
                    "unknown"
                };
                PeerView {
                    peer_id: id.to_string(),
                    short_id: id.short(),
                    roster_status: status,
                    quota_per_epoch: entry.map(|m| m.quota_per_epoch),
                    connected: e.connected,
                    direction: e
                        .connected
                        .then_some(if e.outbound { "outbound" } else { "inbound" }),
                    addresses: e.addrs.iter().map(|a| a.to_string()).collect(),
                    rtt_ms: e.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    healthy: e.connected.then(|| {
                        e.health
                            .healthy(now, lendmesh_protocol::health::DEFAULT_UNHEALTHY_AFTER_MS)
                    }),
                    agent_version: e.agent.clone(),
                    attestation: e.attestation.as_ref().map(|(a, _)| AttestationView {
                        bucket: a.body.headroom.label(),
                        issued_at_ms: a.body.issued_at_ms,
                        age_ms: now.saturating_sub(a.body.issued_at_ms),
                        seq: a.body.seq,
                        upstreams: a
                            .body
                            .offered()
                            .into_iter()
                            .map(|c| CapabilityView {
                                api: c.api.name(),
                                models: c.models,
                                bucket: c.headroom.label(),
                                resets_at_ms: c.resets_at_ms,
                            })
                            .collect(),
                    }),
                    last_seen_ago_ms: e.last_seen_ms.map(|t| now.saturating_sub(t)),
                    outcomes: e.outcomes,
                }
            })
            .collect()
    }
}
