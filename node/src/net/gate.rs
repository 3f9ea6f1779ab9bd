//! The membership gate: the first behaviour of the swarm, it denies every connection from or to a peer that is not
//! an active roster member (or is refused for exceeding its limits) before any other behaviour gets a handler for
//! it. So a peer that has the group key but is not on the roster — a removed member — cannot open a single stream:
//! no relay reservation, no circuit, no request (docs/design.md §10.4).

use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm, dummy,
};

use super::*;

/// Why the gate denied a connection (the cause of `ConnectionDenied`).
#[derive(Debug, thiserror::Error)]
#[error("{peer} is not an active member of this group's roster, or is refused for exceeding its limits")]
pub(super) struct NotMember {
    peer: libp2p::PeerId,
}

/// The gate (see the module doc).
#[allow(missing_debug_implementations)]
pub(super) struct Gate {
    roster: watch::Receiver<Arc<Roster>>,
    limiter: SharedLimiter,
    counters: Arc<NodeMetrics>,
}

impl Gate {
    pub(super) fn new(
        roster: watch::Receiver<Arc<Roster>>,
        limiter: SharedLimiter,
        counters: Arc<NodeMetrics>,
    ) -> Self {
        Gate {
            roster,
            limiter,
            counters,
        }
    }

    fn admit(&self, peer: libp2p::PeerId) -> Result<dummy::ConnectionHandler, ConnectionDenied> {
        let now = crate::clock::now_ms();
        let member = ids::to_proto(&peer).filter(|p| {
            self.roster.borrow().is_active(p, now) && !self.limiter.lock().is_ok_and(|l| l.banned(p, now))
        });
        match member {
            Some(_) => Ok(dummy::ConnectionHandler),
            None => {
                self.counters.inc(&self.counters.connections_refused);
                Err(ConnectionDenied::new(NotMember { peer }))
            }
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: libp2p::PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: libp2p::PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(peer)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _: libp2p::PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Why a connection was denied: the gate's or the connection limits' own reason (`ConnectionDenied` displays only
/// "connection denied").
pub(super) fn reason(cause: &ConnectionDenied) -> String {
    std::error::Error::source(cause).map_or_else(|| cause.to_string(), ToString::to_string)
}
