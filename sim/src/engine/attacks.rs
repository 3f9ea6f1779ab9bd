//! Adversarial members: double spenders, multi-spenders, forgers, attestation replayers and forgers. They act through
//! the simulated network and meet the same protocol code as everyone else.

use lendmesh_protocol::PeerId;
use lendmesh_protocol::attestation::{Attestation, AttestationBody, AttestationKey, HeadroomBucket};
use lendmesh_protocol::claims;
use lendmesh_protocol::routing;
use lendmesh_protocol::token::{Token, TokenInput, TokenSpend, WalletToken};
use rand_core::RngCore;

use super::{Ev, Sim};
use crate::member::Role;
use crate::net::Ms;

impl Sim<'_> {
    pub(super) fn other(&mut self, not: &[usize]) -> usize {
        loop {
            let k = routing::uniform_index(&mut self.adv_rng, self.n);
            if !not.contains(&k) {
                return k;
            }
        }
    }

    /// A fresh request id for an adversary's spend.
    pub(super) fn adv_request_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        self.adv_rng.fill_bytes(&mut id);
        id
    }

    /// Sends a spend under `request_id` (the same id again is a replay of the same request).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_adv_spend(
        &mut self,
        t: Ms,
        from: usize,
        lender: usize,
        request_id: [u8; 16],
        spend: TokenSpend,
        kind: &'static str,
    ) {
        self.out.attacks.attempt(kind);
        match self.net.send(from, lender, t) {
            Some(d) => self.at(
                t + d,
                Ev::AdvSpend {
                    lender,
                    request_id,
                    spend: Box::new(spend),
                    kind,
                },
            ),
            None => self.out.attacks.outcome(kind, "lost"),
        }
    }

    pub(super) fn on_attack(&mut self, t: Ms, a: usize) {
        let period = (self.s.adversaries.period_s * 1000.0) as Ms;
        if t + period < self.end {
            self.at(t + period, Ev::Attack(a));
        }
        if self.net.is_down(a, t) {
            return;
        }
        self.sync_member(a, t);
        let local = self.local(a, t);
        match self.members[a].role {
            Role::Honest => {}
            Role::DoubleSpender => {
                let Some(tok) = self.take_token(a, t) else {
                    return;
                };
                self.cl.adversary_tokens.insert(tok.token.hash());
                let l1 = self.other(&[a]);
                let l2 = self.other(&[a, l1]);
                let mut digest = [0u8; 32];
                self.adv_rng.fill_bytes(&mut digest);
                let s1 = tok.spend(self.members[l1].id, digest, local);
                // The same request (same id) sent twice, and to a lender it is not bound to.
                let r1 = self.adv_request_id();
                self.send_adv_spend(t, a, l1, r1, s1.clone(), "first_spend");
                self.send_adv_spend(t + 200, a, l1, r1, s1.clone(), "replay_same_lender");
                self.send_adv_spend(t, a, l2, r1, s1, "spend_at_wrong_lender");
                let mut d2 = [0u8; 32];
                self.adv_rng.fill_bytes(&mut d2);
                let again = tok.spend(self.members[l1].id, d2, local);
                let r2 = self.adv_request_id();
                self.send_adv_spend(t + 300, a, l1, r2, again, "respend_same_lender");
                let s2 = tok.spend(self.members[l2].id, d2, local);
                let r3 = self.adv_request_id();
                self.send_adv_spend(t + 400, a, l2, r3, s2, "rebound_other_lender");
            }
            Role::MultiSpender => {
                // One token at several lenders at once, the spend re-bound to each under its own request: per-lender
                // spent sets cannot see it; the token's replicas can.
                let tok = if self.s.adversaries.multi_spend_as_replica {
                    self.take_token_replicated_at(a, t)
                } else {
                    self.take_token(a, t)
                };
                let Some(tok) = tok else {
                    return;
                };
                let hash = tok.token.hash();
                self.cl.adversary_tokens.insert(hash);
                self.cl.multi_tokens.push(hash);
                let mut chosen = vec![a];
                for _ in 0..self.s.adversaries.multi_spend_lenders() {
                    let l = self.other(&chosen);
                    chosen.push(l);
                }
                for &l in &chosen[1..] {
                    let mut digest = [0u8; 32];
                    self.adv_rng.fill_bytes(&mut digest);
                    let spend = tok.spend(self.members[l].id, digest, local);
                    let r = self.adv_request_id();
                    self.send_adv_spend(t, a, l, r, spend, "multi_spend");
                }
            }
            Role::Forger => {
                // A token of the current epoch, under its key, with a made-up signature.
                let Some((epoch, key_id, len)) = self.members[a]
                    .book
                    .current(local)
                    .map(|i| (i.epoch(), i.key_id, i.key.modulus_len()))
                else {
                    return;
                };
                let mut sig = vec![0u8; len];
                self.adv_rng.fill_bytes(&mut sig);
                let secret = lendmesh_protocol::token::SpendSecret::generate(&mut self.adv_rng);
                let input = TokenInput::new(epoch, key_id, secret.public_key());
                let fake = WalletToken {
                    token: Token {
                        input,
                        signature: sig,
                    },
                    spend_secret: secret,
                };
                let l = self.other(&[a]);
                let mut digest = [0u8; 32];
                self.adv_rng.fill_bytes(&mut digest);
                let spend = fake.spend(self.members[l].id, digest, local);
                let r = self.adv_request_id();
                self.send_adv_spend(t, a, l, r, spend, "forged_token");
            }
            Role::AttestationReplayer => {
                let p = self.other(&[a]);
                let v = self.other(&[a, p]);
                // Alternate between an expired attestation and a recent one the victim already has.
                let old = self.adv_rng.next_u32().is_multiple_of(2);
                let list = &self.pubs[p];
                let cutoff = t.saturating_sub(6 * 60_000);
                let pick = if old {
                    list.iter().rev().find(|x| x.t <= cutoff).copied()
                } else {
                    let idx = list.partition_point(|x| x.t + 5_000 <= t);
                    idx.checked_sub(1).and_then(|i| list.get(i)).copied()
                };
                let Some(pubn) = pick else {
                    return;
                };
                let Some(att) = self.attestation(p, &pubn) else {
                    return;
                };
                self.send_adv_att(t, a, v, p, att, "replayed_attestation");
            }
            Role::AttestationForger => {
                let v = self.other(&[a]);
                let p = self.other(&[a, v]);
                let body = AttestationBody {
                    group_id: self.group,
                    peer_id: self.members[a].id,
                    seq: self.members[a].seq + 1_000_000,
                    issued_at_ms: local,
                    headroom: HeadroomBucket::High,
                    window_resets_at_ms: local + 60_000,
                    ohttp_key_config: vec![0x20; 41],
                    epoch_keys: vec![],
                    capabilities: vec![],
                };
                let (att, about) = if self.adv_rng.next_u32().is_multiple_of(2) {
                    // Tagged with a key that is not the group's.
                    let wrong = AttestationKey::random(&mut self.adv_rng);
                    (Attestation::create(body, &wrong, &self.members[a].key), a)
                } else {
                    // A valid own attestation re-labelled as another member's.
                    let made = Attestation::create(body, &self.att_key, &self.members[a].key);
                    (
                        made.map(|mut x| {
                            x.body.peer_id = self.members[p].id;
                            x
                        }),
                        p,
                    )
                };
                if let Ok(att) = att {
                    self.send_adv_att(t, a, v, about, att, "forged_attestation");
                }
            }
        }
    }

    /// A token of member `a`'s wallet that `a` is a replica of (the lying multi-spender spends only those), the
    /// others looked at put back; `None` if none of the next few is.
    fn take_token_replicated_at(&mut self, a: usize, t: Ms) -> Option<WalletToken> {
        /// Tokens looked at before giving up this round.
        const LOOK_AT: usize = 32;
        let me = self.members[a].id;
        let replicas = self
            .s
            .claims
            .as_ref()
            .map_or(claims::DEFAULT_REPLICAS, |c| c.replicas);
        let mut looked = Vec::new();
        let mut found = None;
        while looked.len() < LOOK_AT {
            let Some(tok) = self.take_token(a, t) else {
                break;
            };
            let epoch = tok.token.input.epoch;
            let roster: Vec<PeerId> = self.members[a]
                .book
                .get(epoch)
                .map(|i| i.frozen_roster())
                .unwrap_or_default();
            if claims::replica_set(&tok.token.hash(), &roster, replicas).contains(&me) {
                found = Some(tok);
                break;
            }
            looked.push(tok);
        }
        for tok in looked.into_iter().rev() {
            self.members[a].wallet.put_back(tok);
        }
        found
    }

    pub(super) fn send_adv_att(
        &mut self,
        t: Ms,
        from: usize,
        v: usize,
        about: usize,
        att: Attestation,
        kind: &'static str,
    ) {
        self.out.attacks.attempt(kind);
        match self.net.send(from, v, t) {
            Some(d) => self.at(
                t + d,
                Ev::AdvAttestation {
                    victim: v,
                    about,
                    att: Box::new(att),
                    kind,
                },
            ),
            None => self.out.attacks.outcome(kind, "lost"),
        }
    }

    pub(super) fn on_adv_attestation(
        &mut self,
        t: Ms,
        v: usize,
        about: usize,
        att: &Attestation,
        kind: &'static str,
    ) {
        if self.net.is_down(v, t) {
            return self.out.attacks.outcome(kind, "lost");
        }
        // The victim first takes whatever gossip already brought it.
        self.refresh_one(v, about, t);
        let local = self.local(v, t);
        match self.members[v].acceptor.accept(att, &self.roster, local) {
            Ok(()) => {
                if kind == "forged_attestation" {
                    self.violation(format!("member {v} accepted a forged attestation"));
                }
                // A replayed genuine attestation the victim had not received yet is just late gossip.
                self.out.attacks.outcome(kind, "accepted_as_late_gossip");
            }
            Err(e) => self.out.attacks.outcome(kind, &format!("refused:{}", e.label())),
        }
    }
}
