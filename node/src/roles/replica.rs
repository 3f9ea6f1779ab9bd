//! The replica role (docs/design.md §7): records the first claim of a token hash durably and answers whether a claim is
//! it. Lenders do not send claims yet (group-wide single spend is issue 12); the handler is complete so that they
//! can. Claims of epochs this node does not accept are answered `UnknownEpoch`.

use std::sync::Arc;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::wire::{ClaimRequest, ClaimResponse};
use tokio::sync::watch;
use tracing::warn;

use crate::clock::now_ms;
use crate::group::state::GroupView;
use crate::metrics::NodeMetrics;
use crate::store::Store;

/// Answers claims.
#[derive(Clone, Debug)]
pub struct Replica {
    store: Store,
    view: watch::Receiver<Arc<GroupView>>,
    counters: Arc<NodeMetrics>,
}

impl Replica {
    /// A replica over the node's store.
    pub fn new(store: Store, view: watch::Receiver<Arc<GroupView>>, counters: Arc<NodeMetrics>) -> Self {
        Replica {
            store,
            view,
            counters,
        }
    }

    /// The answer to `req` from `lender`, recorded durably before it is given; `None` when the store failed (the
    /// lender then sees no answer and counts the replica as unreachable).
    pub async fn answer(&self, lender: PeerId, req: ClaimRequest) -> Option<ClaimResponse> {
        if !self.view.borrow().epochs.accepts(req.epoch, now_ms()) {
            self.counters.inc(&self.counters.claims_answered);
            return Some(ClaimResponse::UnknownEpoch);
        }
        let store = self.store.clone();
        let recorded = tokio::task::spawn_blocking(move || {
            store.record_claim(req.epoch, &req.token_hash, &req.claim_id)
        })
        .await;
        let resp = match recorded {
            Ok(Ok(true)) => ClaimResponse::Granted,
            Ok(Ok(false)) => ClaimResponse::Denied,
            Ok(Err(e)) => {
                warn!(peer = %lender.short(), %e, "cannot record a claim");
                return None;
            }
            Err(e) => {
                warn!(peer = %lender.short(), %e, "claim recording task failed");
                return None;
            }
        };
        self.counters.inc(&self.counters.claims_answered);
        Some(resp)
    }
}
