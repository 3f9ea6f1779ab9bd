//! The Lender actor: announces this member's headroom (docs/design.md §5) and serves borrows sealed to it (docs/design.md §6).
//!
//! **Attestations.** Published on a timer (default 10 s), when the bucket changes, and when a peer joins the topic
//! (debounced). Each `seq` is persisted before the attestation is published, so a restart never reuses one peers
//! accepted. The attestation carries this node's current OHTTP key config (a fresh X25519 key per start).
//!
//! **Borrows.** A relay forwards an OHTTP-sealed [`InnerBorrowRequest`]. The lender opens it (a failure means the
//! borrower used a stale key config: it is told so in the clear and re-seals), then goes down `protocol`'s lend
//! ladder (`protocol::lend`, which the simulator drives too), in order:
//! 1. answers a retry of a known request id from its idempotency cache (or joins the in-flight original);
//! 2. takes one unit of the first of its upstreams that serves the request (its API and model, docs/design.md §5.1)
//!    and has room beyond what its member keeps — **refusing before any claim** when there is none (or none serves
//!    it), so the token stays unspent;
//! 3. redeems the token (type, epoch, key id, signature, spend binding), **claims its hash durably** in the
//!    store, and then at the token's replicas (`roles::claimer`, docs/design.md §7): it goes on only with a majority
//!    of grants — before doing any work;
//! 4. calls that upstream; a 429, 503 or 529 means no work was done, so the claim is released and the token can be
//!    spent again elsewhere;
//! 5. seals the response to the borrower.
//!
//! The lender sees the request and *a* valid token, bound to itself, and the relay's id — never the borrower's. Its
//! lend records hold exactly that: each is written to the store once the lend is answered (bounded by count and
//! age, `store::lends`) and shown by the API's `/v1/lends`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use lendmesh_protocol::attestation::{Attestation, AttestationBody, AttestationKey, HeadroomBucket};
use lendmesh_protocol::lend::{self, Admission, LendConfig, LendLadder, UpstreamOutcome, UpstreamVerdict};
use lendmesh_protocol::redeemer::Redeemer;
use lendmesh_protocol::wire::{
    self, BorrowRefusal, BorrowRequest, BorrowResponse, DeliveryFailure, GossipMessage, InnerBorrowRequest,
    InnerBorrowResponse,
};
use lendmesh_protocol::{GroupId, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::group::state::GroupView;
use crate::metrics::NodeMetrics;
use crate::net::NetworkHandle;
use crate::store::{LendEntry, LendRetention, Store};
use crate::upstream::{UpstreamError, UpstreamRequest, UpstreamSet};

/// Messages queued to the lender: 256 (borrows from every member at once in a 100-member group, with room).
pub const CAPACITY: usize = 256;
/// Borrows served at once; more are refused with `LenderBusy` (the borrower tries another lender).
pub const MAX_CONCURRENT_LENDS: usize = lendmesh_protocol::lend::DEFAULT_MAX_IN_FLIGHT;
/// Lend records removed per transaction when they are brought within their bounds at start (a few ms each).
const START_PRUNE_BATCH: u64 = 1000;
mod serve;

/// Minimum spacing of extra (non-periodic) attestations.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// How often the bucket is checked for a change.
const CHANGE_CHECK: Duration = Duration::from_secs(1);

/// This node's OHTTP key (RFC 9458): X25519, HKDF-SHA256, AES-128-GCM.
#[derive(Clone, Debug)]
pub struct OhttpKeys {
    server: ohttp::Server,
    config: Vec<u8>,
}

impl OhttpKeys {
    /// A fresh key.
    pub fn generate() -> anyhow::Result<Self> {
        use ohttp::hpke::{Aead, Kdf, Kem};
        let key_id: u8 = rand::random();
        let config = ohttp::KeyConfig::new(
            key_id,
            Kem::X25519Sha256,
            vec![ohttp::SymmetricSuite::new(Kdf::HkdfSha256, Aead::Aes128Gcm)],
        )?;
        let server = ohttp::Server::new(config)?;
        let config = server.config().encode()?;
        Ok(OhttpKeys { server, config })
    }

    /// A key derived from input keying material `ikm` (HPKE `DeriveKeyPair`): the same material, the same key. For
    /// fixtures that must open a committed sealed request (the fuzz corpus); a node's own key is [`Self::generate`]d.
    pub fn derive(ikm: &[u8]) -> anyhow::Result<Self> {
        use ohttp::hpke::{Aead, Kdf, Kem};
        let config = ohttp::KeyConfig::derive(
            0,
            Kem::X25519Sha256,
            vec![ohttp::SymmetricSuite::new(Kdf::HkdfSha256, Aead::Aes128Gcm)],
            ikm,
        )?;
        let server = ohttp::Server::new(config)?;
        let config = server.config().encode()?;
        Ok(OhttpKeys { server, config })
    }

    /// Opens a sealed borrow request (chunked OHTTP) with this key: its plaintext, read within the size a request
    /// may have. An error when it is not sealed to this key, is damaged, or is too large.
    /// (The lender's `serve_stream` does the same, keeping the opened request to seal its answer with.)
    pub async fn open_request(&self, sealed: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut opened = Box::pin(self.server.clone().decapsulate_stream(sealed));
        read_plaintext(opened.as_mut()).await
    }

    /// The encoded key config, as attested.
    pub fn encoded_config(&self) -> &[u8] {
        &self.config
    }
}

/// Reads an opened sealed request's plaintext, within the size a request may have.
async fn read_plaintext<R: futures::AsyncRead>(opened: std::pin::Pin<&mut R>) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut plain = Vec::new();
    opened
        .take(serve::MAX_REQUEST_PLAINTEXT)
        .read_to_end(&mut plain)
        .await?;
    Ok(plain)
}

/// How one lend ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LendOutcome {
    /// Not decided yet.
    Pending,
    /// Served: the token is spent.
    Served,
    /// The request inside the envelope did not decode.
    BadRequest,
    /// No headroom beyond the reserve: refused before any claim.
    NoHeadroom,
    /// None of this member's upstreams serves the request's API or model: refused before any claim.
    NotServed,
    /// No majority of the token's replicas answered (`strict`): refused before any work, claims released.
    NoQuorum,
    /// The token was rejected (the redeemer's label).
    TokenRejected(&'static str),
    /// The redemption task failed.
    Internal,
    /// The upstream refused or was unreachable: the claim was released.
    UpstreamRefused(u16),
    /// The upstream failed after it got the request (before or in the middle of its answer): the token stays spent.
    UpstreamFailed,
    /// The borrower went away in the middle of the answer (its tool disconnected): the upstream call was dropped.
    Cancelled,
}

impl LendOutcome {
    /// The [`LendOutcome::kind`]s of lends whose claim this lender granted and kept: the token was spent here
    /// (served, or cut mid-answer after the claim). A token rejected as spent elsewhere was spent elsewhere.
    pub const CLAIM_KEPT: [&'static str; 3] = ["served", "cancelled", "upstream_failed"];

    /// The metric label: the outcome without its detail.
    pub fn kind(&self) -> &'static str {
        match self {
            LendOutcome::Pending => "pending",
            LendOutcome::Served => "served",
            LendOutcome::BadRequest => "bad_request",
            LendOutcome::NoHeadroom => "no_headroom",
            LendOutcome::NotServed => "not_served",
            LendOutcome::NoQuorum => "no_quorum",
            LendOutcome::TokenRejected(_) => "token_rejected",
            LendOutcome::Internal => "internal",
            LendOutcome::UpstreamRefused(_) => "upstream_refused",
            LendOutcome::UpstreamFailed => "upstream_failed",
            LendOutcome::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for LendOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LendOutcome::TokenRejected(label) => write!(f, "token_rejected:{label}"),
            LendOutcome::UpstreamRefused(status) => write!(f, "upstream_refused:{status}"),
            other => f.write_str(other.kind()),
        }
    }
}

impl Serialize for LendOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One borrow this lender handled, as it saw it; stored as a [`LendEntry`] once answered.
#[derive(Clone, Debug)]
pub struct LendRecord {
    /// When it started (ms since the Unix epoch).
    pub at_ms: u64,
    /// How long serving it took (ms).
    pub duration_ms: u64,
    /// The spent token's hash (hex).
    pub token_hash: String,
    /// The relay that forwarded it (the borrower is unknown to the lender).
    pub relay: String,
    /// The token's epoch.
    pub epoch: u32,
    /// How it ended (shown as `served`, `no_headroom`, `token_rejected:<reason>`, `upstream_refused:<status>`, …).
    pub outcome: LendOutcome,
    /// Method and path of the request.
    pub request: String,
    /// Size of the plain HTTP request body (bytes).
    pub request_bytes: u64,
    /// Size of the plain HTTP response body lent back (bytes; 0 when none was).
    pub response_bytes: u64,
}

impl LendRecord {
    /// The record as stored and shown by `/v1/lends`.
    pub fn entry(&self) -> LendEntry {
        LendEntry {
            at_ms: self.at_ms,
            duration_ms: self.duration_ms,
            token_hash: self.token_hash.clone(),
            relay: self.relay.clone(),
            epoch: self.epoch,
            outcome: self.outcome.to_string(),
            request: self.request.clone(),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
        }
    }
}

enum Command {
    Nudge,
    /// The lend ladder's first step for a request id (`protocol::lend`).
    Admit {
        request_id: [u8; 16],
        reply: oneshot::Sender<Admitted>,
    },
    Finished {
        request_id: [u8; 16],
        response: InnerBorrowResponse,
        record: LendRecord,
    },
}

/// What the ladder says about a request id.
pub(crate) enum Admitted {
    /// Serve it.
    Proceed,
    /// Answered before: this again (a served answer went to the earlier attempt: `AlreadyServed`).
    Replay(InnerBorrowResponse),
    /// In flight: its outcome comes here when it ends.
    Wait(oneshot::Receiver<InnerBorrowResponse>),
    /// Too many in flight, or too many waiting for this one.
    Busy,
}

/// Handle to the lender: the actor (attestations, the lend ladder, lend records) and what serving a borrow stream
/// needs ([`serve`]).
#[derive(Clone, Debug)]
pub struct LenderHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<serve::LendShared>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LenderCommand")
    }
}

impl LenderHandle {
    /// Asks for an attestation soon (a peer joined).
    pub fn nudge(&self) {
        let _ = self.tx.try_send(Command::Nudge);
    }

    /// Admission for a request id; `Busy` when the lender is gone or its queue is full.
    pub(crate) async fn admit(&self, request_id: [u8; 16]) -> Admitted {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Command::Admit { request_id, reply }).is_err() {
            return Admitted::Busy;
        }
        rx.await.unwrap_or(Admitted::Busy)
    }

    /// Reports a lend's end: the ladder's cache, the waiters, the record.
    pub(crate) async fn finished(
        &self,
        request_id: [u8; 16],
        response: InnerBorrowResponse,
        record: LendRecord,
    ) {
        let _ = self
            .tx
            .send(Command::Finished {
                request_id,
                response,
                record,
            })
            .await;
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
    /// The member's upstreams.
    pub upstreams: Arc<UpstreamSet>,
    /// What the attestations may expose (`attest_floor`).
    pub exposure: lendmesh_protocol::exposure::Exposure,
    /// Claims each redeemed token at its replicas before any work (one spend across the group).
    pub claimer: crate::roles::claimer::Claimer,
    /// Periodic attestation interval.
    pub period: Duration,
    /// Token checks; its accepted epochs follow `view`.
    pub redeemer: Redeemer,
    /// The group view: accepted epochs, key-consistency alarms.
    pub view: watch::Receiver<Arc<GroupView>>,
    /// The OHTTP key.
    pub keys: OhttpKeys,
    /// Lends run here, so shutdown waits for them (bounded).
    pub tasks: tokio_util::task::TaskTracker,
    /// How many lend records the store keeps, and for how long.
    pub lend_retention: LendRetention,
}

impl std::fmt::Debug for LenderParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LenderParams")
            .field("me", &self.me)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// Starts the lender.
pub fn spawn(
    params: LenderParams,
    store: Store,
    net: NetworkHandle,
    counters: Arc<NodeMetrics>,
    shutdown: CancellationToken,
) -> (LenderHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let seq = store.attestation_seq().unwrap_or(0);
    let shared = Arc::new(serve::LendShared {
        counters: counters.clone(),
        upstreams: params.upstreams.clone(),
        claimer: params.claimer.clone(),
        redeemer: std::sync::RwLock::new(params.redeemer.clone()),
        store: store.clone(),
        keys: params.keys.clone(),
        tasks: params.tasks.clone(),
    });
    let (prune_store, retention, stop) = (store.clone(), params.lend_retention, shutdown.clone());
    tokio::task::spawn_blocking(move || prune_lend_records(&prune_store, retention, &stop));
    let actor = Lender {
        p: params,
        store,
        net,
        counters,
        rx,
        seq,
        last_buckets: Vec::new(),
        ladder: LendLadder::new(LendConfig::default()),
        waiters: HashMap::new(),
        shared: shared.clone(),
    };
    (LenderHandle { tx, shared }, tokio::spawn(actor.run(shutdown)))
}

struct Lender {
    p: LenderParams,
    store: Store,
    net: NetworkHandle,
    counters: Arc<NodeMetrics>,
    rx: mpsc::Receiver<Command>,
    seq: u64,
    last_buckets: Vec<HeadroomBucket>,
    /// The lend rules' idempotency cache and bounds (`protocol::lend`).
    ladder: LendLadder<InnerBorrowResponse>,
    /// Retries parked until the original ends (at most `max_waiters` per request id, by the ladder).
    waiters: HashMap<[u8; 16], Vec<oneshot::Sender<InnerBorrowResponse>>>,
    /// What lends read: the redeemer is kept current here.
    shared: Arc<serve::LendShared>,
}

/// Brings the stored lend records within their bounds at start, in batches off the async threads and the actor
/// (a limit lowered since the last run may leave many rows to delete); stops between batches at shutdown.
fn prune_lend_records(store: &Store, retention: LendRetention, shutdown: &CancellationToken) {
    let mut removed = 0;
    while !shutdown.is_cancelled() {
        match store.prune_lends(retention, now_ms(), START_PRUNE_BATCH) {
            Ok(n) => {
                removed += n;
                if n < START_PRUNE_BATCH {
                    break;
                }
            }
            Err(e) => {
                warn!(%e, "cannot prune the lend records");
                break;
            }
        }
    }
    if removed > 0 {
        info!(removed, "lend records beyond the retention limits removed");
    }
}

impl Lender {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut periodic = tokio::time::interval(self.p.period);
        let mut change = tokio::time::interval(CHANGE_CHECK);
        let mut last_sent = tokio::time::Instant::now() - DEBOUNCE;
        self.handle_view();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(msg) = self.rx.recv() => match msg {
                    Command::Nudge => {
                        if last_sent.elapsed() >= DEBOUNCE {
                            self.handle_publish().await;
                            last_sent = tokio::time::Instant::now();
                        }
                    }
                    Command::Admit { request_id, reply } => {
                        let _ = reply.send(self.handle_admit(request_id));
                    }
                    Command::Finished { request_id, response, record } => {
                        self.handle_finished(request_id, response, record);
                    }
                },
                Ok(()) = self.p.view.changed() => self.handle_view(),
                _ = periodic.tick() => {
                    self.handle_publish().await;
                    last_sent = tokio::time::Instant::now();
                }
                _ = change.tick() => {
                    let buckets: Vec<HeadroomBucket> =
                        self.attested(now_ms()).iter().map(|c| c.headroom).collect();
                    if buckets != self.last_buckets && last_sent.elapsed() >= DEBOUNCE {
                        self.handle_publish().await;
                        last_sent = tokio::time::Instant::now();
                    }
                }
            }
        }
    }

    /// Accepts the group's live epochs (less those under a key-consistency alarm).
    fn handle_view(&mut self) {
        let view = self.p.view.borrow_and_update().clone();
        self.p.redeemer.accept_book(&view.epochs, &view.refused_epochs);
        *self.shared.redeemer.write().unwrap_or_else(|p| p.into_inner()) = self.p.redeemer.clone();
    }

    /// Each upstream's capability as attested: nothing below `attest_floor`, and under a floor no reset time
    /// (`protocol::exposure`). Compared before publishing early, so a hidden change is not published by its timing.
    fn attested(&self, now: u64) -> Vec<lendmesh_protocol::capability::Capability> {
        let mut caps = self.p.upstreams.capabilities(now);
        for c in &mut caps {
            c.headroom = self.p.exposure.attested(c.headroom);
            c.resets_at_ms = self.p.exposure.attested_reset(c.resets_at_ms, now);
        }
        caps
    }

    async fn handle_publish(&mut self) {
        let now = now_ms();
        let capabilities = self.attested(now);
        let (bucket, resets) = UpstreamSet::summary(&capabilities);
        let buckets: Vec<HeadroomBucket> = capabilities.iter().map(|c| c.headroom).collect();
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
            ohttp_key_config: self.p.keys.encoded_config().to_vec(),
            epoch_keys: self.p.view.borrow().epochs.announced_keys(now),
            capabilities,
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
                self.last_buckets = buckets;
                self.counters.inc(&self.counters.attestations_published);
                debug!(seq, bucket = bucket.label(), "attestation published");
            }
            Err(e) => debug!(%e, "attestation not published (no peers yet?)"),
        }
    }

    fn handle_admit(&mut self, request_id: [u8; 16]) -> Admitted {
        match self.ladder.admit(request_id, now_ms()) {
            Admission::Proceed => {
                self.counters.inc(&self.counters.lends_in_flight);
                Admitted::Proceed
            }
            Admission::Replay(response) => Admitted::Replay(response),
            Admission::Join => {
                let (tx, rx) = oneshot::channel();
                self.waiters.entry(request_id).or_default().push(tx);
                Admitted::Wait(rx)
            }
            Admission::Busy => Admitted::Busy,
        }
    }

    fn handle_finished(&mut self, request_id: [u8; 16], response: InnerBorrowResponse, record: LendRecord) {
        self.counters.dec(&self.counters.lends_in_flight);
        match &response {
            InnerBorrowResponse::Served => self.counters.inc(&self.counters.lends_served),
            InnerBorrowResponse::Refused { .. } => self.counters.inc(&self.counters.lends_refused),
        }
        NodeMetrics::outcome(&self.counters.lends, record.outcome.kind());
        info!(token = %record.token_hash.get(..16).unwrap_or(""), relay = %record.relay, outcome = %record.outcome, "lend");
        // A served answer streamed to the attempt that asked; a retry of the same request id learns that the token
        // is spent (`AlreadyServed`), and a refusal is answered again as it was.
        let again = match response {
            InnerBorrowResponse::Served => InnerBorrowResponse::Refused {
                reason: BorrowRefusal::AlreadyServed,
                retry_after_ms: None,
            },
            refused => refused,
        };
        self.ladder.finish(request_id, again.clone(), now_ms());
        for waiter in self.waiters.remove(&request_id).unwrap_or_default() {
            let _ = waiter.send(again.clone());
        }
        self.keep_record(&record);
    }

    /// Writes an answered lend's record durably: one short transaction (through the store's `blocking`), which
    /// also removes at most `store::lends::PRUNE_BATCH` records beyond the retention limits. A failure is logged.
    fn keep_record(&self, record: &LendRecord) {
        if let Err(e) = self
            .store
            .put_lend(&record.entry(), self.p.lend_retention, now_ms())
        {
            warn!(%e, "cannot store a lend record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LendOutcome::{self, *};

    #[test]
    fn the_claim_kept_kinds_are_outcome_kinds() {
        let all = [
            Pending,
            Served,
            BadRequest,
            NoHeadroom,
            NotServed,
            NoQuorum,
            TokenRejected("spent_elsewhere"),
            Internal,
            UpstreamRefused(429),
            UpstreamFailed,
            Cancelled,
        ];
        for kind in LendOutcome::CLAIM_KEPT {
            assert!(
                all.iter().any(|o| o.kind() == kind),
                "{kind} is no outcome's kind"
            );
        }
    }
}
