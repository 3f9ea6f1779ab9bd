//! The replica role (docs/design.md §7): records the first claim of a token hash durably and answers whether a claim is
//! it (`protocol::claims` has the rules).
//!
//! A claim is voted on only if its epoch is one this node accepts, is not older than this replica's **restore
//! point**, and passes `claims::check_claim`: it names the lender that sent it, was computed from the roster frozen
//! in the epoch's announcement (the same digest), and this node is in the token's replica set. Then the first claim
//! of a token is stored — durably, before the answer — and `Granted` again to the same claim, `Denied` to any other.
//! A lender that refused its request before any work releases its claim (`Release`), so the token can be claimed
//! again.
//!
//! **Restore point.** A replica that forgot claims it granted could grant a second claim of the same token. So each
//! time it records a claim of a newer epoch it first writes that epoch to `replica.mark` in its home (fsynced,
//! 0600). At start, a mark newer than the newest claim epoch in the store means the store is older than the claims
//! this replica made (restored from a backup): it refuses claims of every epoch up to the mark, and votes again from
//! the next one. (A lost store loses the node's identity with it, and a new identity is in no frozen roster.)

use std::path::PathBuf;
use std::sync::Arc;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::claims::{self, ClaimRefusal};
use lendmesh_protocol::wire::{ClaimRequest, ClaimResponse};
use tokio::sync::watch;
use tracing::warn;

use crate::clock::now_ms;
use crate::group::state::GroupView;
use crate::metrics::NodeMetrics;
use crate::store::Store;

/// The file that keeps the newest claim epoch beside the store.
pub const MARK_FILE: &str = "replica.mark";

/// The environment variable that makes a replica abort right after storing a claim, before answering (for the
/// crash test; never set in production).
pub const FAILPOINT_ENV: &str = "LENDMESH_FAILPOINT";

/// Answers claims.
#[derive(Clone, Debug)]
pub struct Replica {
    me: PeerId,
    store: Store,
    view: watch::Receiver<Arc<GroupView>>,
    counters: Arc<NodeMetrics>,
    mark: PathBuf,
    /// Claims of epochs before this are refused (the restore point; 0 when the store is whole).
    floor: u32,
    /// Replicas per token (`protocol::claims::DEFAULT_REPLICAS`).
    replicas: usize,
    abort_after_store: bool,
}

impl Replica {
    /// A replica over the node's store, its mark kept in `home`.
    pub fn new(
        me: PeerId,
        home: &std::path::Path,
        store: Store,
        view: watch::Receiver<Arc<GroupView>>,
        counters: Arc<NodeMetrics>,
        replicas: usize,
    ) -> Self {
        let mark = home.join(MARK_FILE);
        let marked = std::fs::read_to_string(&mark)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let stored = store.claims_max_epoch().ok().flatten();
        let floor = match (marked, stored) {
            (Some(m), s) if s.is_none_or(|s| s < m) => {
                warn!(
                    marked = m,
                    stored = ?s,
                    "the store is older than the claims this replica made (restored from a backup?): refusing claims \
                     of epochs up to {m}"
                );
                m.saturating_add(1)
            }
            _ => 0,
        };
        Replica {
            me,
            store,
            view,
            counters,
            mark,
            floor,
            replicas,
            abort_after_store: std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == "replica-after-store"),
        }
    }

    /// The answer to `req` from `lender`, recorded durably before it is given; `None` when the store failed (the
    /// lender then sees no answer and counts the replica as unreachable).
    pub async fn answer(&self, lender: PeerId, req: ClaimRequest) -> Option<ClaimResponse> {
        let claim = *req.claim();
        let refused = |why: ClaimRefusal| {
            NodeMetrics::outcome(&self.counters.claim_refusals, why.label());
            Some(ClaimResponse::Refused(why))
        };
        let roster: Vec<PeerId> = {
            let view = self.view.borrow();
            if claim.epoch < self.floor || !view.epochs.accepts(claim.epoch, now_ms()) {
                drop(view);
                return refused(ClaimRefusal::UnknownEpoch);
            }
            match view.epochs.get(claim.epoch) {
                Some(info) => info.frozen_roster(),
                None => {
                    drop(view);
                    return refused(ClaimRefusal::UnknownEpoch);
                }
            }
        };
        if let Err(why) = claims::check_claim(&claim, &lender, &self.me, &roster, self.replicas) {
            return refused(why);
        }
        let store = self.store.clone();
        let mark = self.mark.clone();
        let id = claim.id();
        let release = matches!(req, ClaimRequest::Release(_));
        let recorded = tokio::task::spawn_blocking(move || -> Result<ClaimResponse, String> {
            if release {
                store
                    .release_claim(claim.epoch, &claim.token_hash, &id)
                    .map_err(|e| e.to_string())?;
                return Ok(ClaimResponse::Released);
            }
            // The mark first: a restored store must never find this epoch's claims forgotten without knowing it.
            let newest = store.claims_max_epoch().map_err(|e| e.to_string())?;
            if newest.is_none_or(|n| claim.epoch > n) {
                write_mark(&mark, claim.epoch).map_err(|e| e.to_string())?;
            }
            let granted = store
                .record_claim(claim.epoch, &claim.token_hash, &id)
                .map_err(|e| e.to_string())?;
            Ok(if granted {
                ClaimResponse::Granted
            } else {
                ClaimResponse::Denied
            })
        })
        .await;
        let resp = match recorded {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(peer = %lender.short(), %e, "cannot record a claim");
                return None;
            }
            Err(e) => {
                warn!(peer = %lender.short(), %e, "claim recording task failed");
                return None;
            }
        };
        if self.abort_after_store && resp != ClaimResponse::Released {
            // The crash test: stored, not answered.
            std::process::abort();
        }
        self.counters.inc(&self.counters.claims_answered);
        Some(resp)
    }
}

/// Writes the mark durably (0600, fsynced, then renamed over the old one).
fn write_mark(path: &std::path::Path, epoch: u32) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        crate::home::restrict_file(&tmp)?;
        f.write_all(epoch.to_string().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
