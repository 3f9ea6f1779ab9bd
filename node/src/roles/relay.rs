//! The relay role (docs/design.md §6 step 3): forwards a borrower's sealed request to the lender it names and the sealed
//! answer back. It sees who talks to whom and the sizes, never the token or the content (sealed to the lender).
//!
//! At most [`MAX_CONCURRENT_RELAYS`] forwards run at once (more are refused with `RelayBusy`, and the borrower picks
//! another relay); each runs as a task on the node's task tracker, so shutdown waits for it (bounded).

use std::sync::Arc;

use lendmesh_protocol::PeerId;
use lendmesh_protocol::group::Roster;
use lendmesh_protocol::wire::{BorrowRequest, BorrowResponse, DeliveryFailure, RelayRequest, RelayResponse};
use libp2p::request_response::ResponseChannel;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::clock::now_ms;
use crate::metrics::NodeMetrics;
use crate::net::{NetError, NetworkHandle};

/// Relays forwarded at once; more are refused with `RelayBusy` (the borrower picks another relay or lender).
pub const MAX_CONCURRENT_RELAYS: usize = 128;

/// Forwards sealed requests between members.
#[derive(Clone, Debug)]
pub struct Relay {
    me: PeerId,
    net: NetworkHandle,
    roster: watch::Receiver<Arc<Roster>>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    counters: Arc<NodeMetrics>,
}

impl Relay {
    /// A relay for node `me`; forwards run on `tasks`.
    pub fn new(
        me: PeerId,
        net: NetworkHandle,
        roster: watch::Receiver<Arc<Roster>>,
        tasks: TaskTracker,
        counters: Arc<NodeMetrics>,
    ) -> Self {
        Relay {
            me,
            net,
            roster,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_RELAYS)),
            tasks,
            counters,
        }
    }

    /// Handles one request from `borrower`: refuses a bad lender or when full, else forwards in a tracked task.
    pub async fn handle(&self, borrower: PeerId, req: RelayRequest, channel: ResponseChannel<RelayResponse>) {
        let lender = req.lender;
        let ok_lender =
            lender != self.me && lender != borrower && self.roster.borrow().is_active(&lender, now_ms());
        let refusal = if !ok_lender {
            Some(DeliveryFailure::BadLender)
        } else if self.tasks.is_closed() {
            Some(DeliveryFailure::RelayBusy)
        } else {
            None
        };
        let permit = match refusal {
            Some(f) => Err(f),
            None => self
                .slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| DeliveryFailure::RelayBusy),
        };
        let permit = match permit {
            Ok(p) => p,
            Err(f) => {
                self.counters.inc(&self.counters.relays_failed);
                self.net.respond_relay(channel, RelayResponse::Failed(f)).await;
                return;
            }
        };
        let (net, counters) = (self.net.clone(), self.counters.clone());
        self.tasks.spawn(async move {
            debug!(borrower = %borrower.short(), lender = %lender.short(), bytes = req.sealed.len(), "relaying");
            let resp = match net.borrow(lender, BorrowRequest { sealed: req.sealed }).await {
                Ok(BorrowResponse::Sealed { sealed }) => RelayResponse::Delivered { sealed },
                Ok(BorrowResponse::Failed(f)) => RelayResponse::Failed(f),
                Err(NetError::Unreachable { .. }) => RelayResponse::Failed(DeliveryFailure::LenderUnreachable),
                Err(e) => {
                    debug!(lender = %lender.short(), %e, "the lender did not answer");
                    RelayResponse::Failed(DeliveryFailure::LenderTimeout)
                }
            };
            match resp {
                RelayResponse::Delivered { .. } => counters.inc(&counters.relays_ok),
                RelayResponse::Failed(_) => counters.inc(&counters.relays_failed),
            }
            net.respond_relay(channel, resp).await;
            drop(permit);
        });
    }
}
