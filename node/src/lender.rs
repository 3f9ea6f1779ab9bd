//! The Lender actor: tells the group how much this member can lend (DESIGN §5), and later serves borrows.
//!
//! It publishes a headroom attestation on a timer (default 10 s), when its bucket changes, and when a peer joins
//! the topic (debounced), so newcomers need not wait a period. Each attestation's `seq` is **persisted before the
//! attestation is published**, so a restarted node never reuses a sequence number that peers already accepted.
//! Headroom is the upstream's remaining capacity minus the reserve kept for this member's own use, published as a
//! coarse bucket only.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use lendmesh_protocol::attestation::{Attestation, AttestationBody, AttestationKey, HeadroomBucket};
use lendmesh_protocol::wire::GossipMessage;
use lendmesh_protocol::{GroupId, PeerId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Counters;
use crate::network::NetworkHandle;
use crate::now_ms;
use crate::store::Store;
use crate::upstream::Upstream;

/// Nudges queued to the lender: 16 (they coalesce).
pub const CAPACITY: usize = 16;
/// Minimum spacing of extra (non-periodic) attestations.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// How often the bucket is checked for a change.
const CHANGE_CHECK: Duration = Duration::from_secs(1);

/// Handle to the lender.
#[derive(Clone, Debug)]
pub struct LenderHandle {
    tx: mpsc::Sender<()>,
}

impl LenderHandle {
    /// Asks for an attestation soon (a peer joined).
    pub fn nudge(&self) {
        let _ = self.tx.try_send(());
    }
}

/// What the lender needs.
pub struct LenderParams {
    /// This node.
    pub me: PeerId,
    /// Its key.
    pub node_key: SigningKey,
    /// The group.
    pub group_id: GroupId,
    /// The group attestation key.
    pub attestation_key: AttestationKey,
    /// The member's upstream.
    pub upstream: Arc<dyn Upstream>,
    /// Units kept for this member.
    pub reserve: u64,
    /// Periodic attestation interval.
    pub period: Duration,
}

impl std::fmt::Debug for LenderParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LenderParams")
            .field("me", &self.me)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// The bucket this member attests: its headroom after the reserve.
pub fn lendable_bucket(upstream: &dyn Upstream, reserve: u64, now: u64) -> (HeadroomBucket, u64) {
    let h = upstream.headroom(now);
    let lendable = h.remaining.saturating_sub(reserve);
    (
        HeadroomBucket::from_remaining(lendable, h.capacity.saturating_sub(reserve)),
        h.resets_at_ms,
    )
}

/// Starts the lender.
pub fn spawn(
    params: LenderParams,
    store: Store,
    net: NetworkHandle,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> (LenderHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let seq = store.attestation_seq().unwrap_or(0);
    let actor = Lender {
        p: params,
        store,
        net,
        counters,
        rx,
        seq,
        last_bucket: None,
    };
    (LenderHandle { tx }, tokio::spawn(actor.run(shutdown)))
}

struct Lender {
    p: LenderParams,
    store: Store,
    net: NetworkHandle,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<()>,
    seq: u64,
    last_bucket: Option<HeadroomBucket>,
}

impl Lender {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut periodic = tokio::time::interval(self.p.period);
        let mut change = tokio::time::interval(CHANGE_CHECK);
        let mut last_sent = tokio::time::Instant::now() - DEBOUNCE;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(()) = self.rx.recv() => {
                    if last_sent.elapsed() >= DEBOUNCE {
                        self.handle_publish().await;
                        last_sent = tokio::time::Instant::now();
                    }
                }
                _ = periodic.tick() => {
                    self.handle_publish().await;
                    last_sent = tokio::time::Instant::now();
                }
                _ = change.tick() => {
                    let (bucket, _) = lendable_bucket(&*self.p.upstream, self.p.reserve, now_ms());
                    if Some(bucket) != self.last_bucket && last_sent.elapsed() >= DEBOUNCE {
                        self.handle_publish().await;
                        last_sent = tokio::time::Instant::now();
                    }
                }
            }
        }
    }

    async fn handle_publish(&mut self) {
        let now = now_ms();
        let (bucket, resets) = lendable_bucket(&*self.p.upstream, self.p.reserve, now);
        let seq = self.seq + 1;
        // Durable before publishing: a restart never reuses an accepted seq.
        if let Err(e) = self.store.put_attestation_seq(seq) {
            warn!(%e, "cannot persist the attestation seq; not publishing");
            return;
        }
        self.seq = seq;
        let body = AttestationBody {
            group_id: self.p.group_id,
            peer_id: self.p.me,
            seq,
            issued_at_ms: now,
            headroom: bucket,
            window_resets_at_ms: resets,
            ohttp_key_config: Vec::new(),
        };
        let att = match Attestation::create(body, &self.p.attestation_key, &self.p.node_key) {
            Ok(a) => a,
            Err(e) => {
                warn!(%e, "cannot create an attestation");
                return;
            }
        };
        match self.net.publish(GossipMessage::Attestation(att)).await {
            Ok(()) => {
                self.last_bucket = Some(bucket);
                self.counters.inc(&self.counters.attestations_published);
                debug!(seq, bucket = bucket.label(), "attestation published");
            }
            Err(e) => debug!(%e, "attestation not published (no peers yet?)"),
        }
    }
}
