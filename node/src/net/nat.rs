//! NAT traversal, as the network actor keeps it (docs/design.md §10.4): how each member is reached (directly,
//! through which member's circuit relay, or hole-punched), what AutoNAT says of this node, and this node's
//! reservations on other members' relays.
//!
//! A node reserves when `reserve_circuit` is `on`, or `auto` and AutoNAT found it unreachable from outside. It
//! reserves on up to [`RESERVATIONS`] members that serve as relays (their identify lists the hop protocol) and that
//! it holds a direct connection to, at the address it reached them at. The reservation's circuit address becomes an
//! external address of this node, which identify announces, Kademlia spreads and the other members' redials use.

use std::collections::HashSet;

use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;

use super::*;

/// Relays a node behind NAT holds a reservation on: two, so one relay going away does not cut it off.
pub const RESERVATIONS: usize = 2;
/// First delay before retrying a reservation a relay refused; doubles per failure.
const RESERVE_RETRY_BASE_MS: u64 = 1_000;
/// Longest delay before retrying a reservation.
const RESERVE_RETRY_MAX_MS: u64 = 60_000;

/// A feature that can follow what the node finds out about its reachability (`auto`), or be forced.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Follow AutoNAT.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// How a connection to a member runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConnPath {
    /// A relayed connection upgraded to a direct one by hole punching.
    HolePunched,
    /// A direct TCP connection.
    Direct,
    /// Through a member's circuit relay (its short id).
    Relayed {
        /// The relay's short id.
        relay: String,
    },
}

impl ConnPath {
    /// The path's metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ConnPath::HolePunched => "hole_punched",
            ConnPath::Direct => "direct",
            ConnPath::Relayed { .. } => "relayed",
        }
    }

    fn is_direct(&self) -> bool {
        !matches!(self, ConnPath::Relayed { .. })
    }
}

/// What this node knows of its own reachability, for `/v1/node`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NatSnapshot {
    /// What AutoNAT says of this node: `public`, `private` or `unknown`.
    pub reachability: String,
    /// Addresses of this node confirmed reachable (by AutoNAT, `[network] external`, or a relay reservation).
    pub external_addrs: Vec<String>,
    /// This node's circuit relay: `serving`, `idle` (on, waiting for a confirmed external address) or `off`.
    pub relay: String,
    /// This node's reservations on members' relays, with the circuit limits each relay announced.
    pub reservations: Vec<ReservationInfo>,
}

/// A reservation a member's relay holds for this node.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReservationInfo {
    /// The relay's short id.
    pub relay: String,
    /// The longest connection the relay carries through it, in seconds (as the relay announced it).
    pub circuit_max_duration_s: Option<u64>,
    /// The most bytes the relay carries on one connection (as announced; 0 or absent: no limit).
    pub circuit_max_bytes: Option<u64>,
}

/// A reservation this node asked for.
struct Held {
    relay: libp2p::PeerId,
    accepted: bool,
    limit: Option<(Option<u64>, Option<u64>)>,
}

/// One connection to a member.
struct Conn {
    id: ConnectionId,
    path: ConnPath,
    /// The address this node dialed (outbound, direct connections): where it reached the peer.
    dialed: Option<Multiaddr>,
}

/// The NAT traversal state (see the module doc).
pub(super) struct Nat {
    params: NatParams,
    conns: HashMap<libp2p::PeerId, Vec<Conn>>,
    /// Members whose identify lists the relay hop protocol.
    relays: HashSet<libp2p::PeerId>,
    /// Reservation listeners.
    reservations: HashMap<ListenerId, Held>,
    /// Retry backoff per relay that refused or lost a reservation.
    backoff: HashMap<libp2p::PeerId, Backoff>,
    status: autonat::NatStatus,
    relay_serving: bool,
}

/// The relay a relayed address goes through: the peer id just before `/p2p-circuit`.
pub(super) fn relay_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// The address without any `/p2p/<id>` component.
pub(super) fn without_peer_ids(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

/// A relay's reservation retry backoff.
fn retry_backoff(backoff: &mut HashMap<libp2p::PeerId, Backoff>, relay: libp2p::PeerId) -> &mut Backoff {
    backoff
        .entry(relay)
        .or_insert_with(|| Backoff::new(RESERVE_RETRY_BASE_MS, RESERVE_RETRY_MAX_MS))
}

/// Whether an address goes through a circuit relay.
pub(super) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl Nat {
    pub(super) fn new(params: NatParams) -> Self {
        Nat {
            params,
            conns: HashMap::new(),
            relays: HashSet::new(),
            reservations: HashMap::new(),
            backoff: HashMap::new(),
            status: autonat::NatStatus::Unknown,
            relay_serving: params.circuit_relay == Switch::On,
        }
    }

    /// A connection to a member was established: its path, counted.
    pub(super) fn connected(
        &mut self,
        peer: libp2p::PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
        counters: &NodeMetrics,
    ) -> ConnPath {
        let (path, dialed) = match endpoint {
            ConnectedPoint::Dialer { address, .. } if is_relayed(address) => (relayed(address), None),
            ConnectedPoint::Dialer { address, .. } => (ConnPath::Direct, Some(address.clone())),
            ConnectedPoint::Listener { local_addr, .. } if is_relayed(local_addr) => {
                (relayed(local_addr), None)
            }
            ConnectedPoint::Listener { .. } => (ConnPath::Direct, None),
        };
        NodeMetrics::outcome(&counters.member_connections, path.label());
        self.conns.entry(peer).or_default().push(Conn {
            id,
            path: path.clone(),
            dialed,
        });
        path
    }

    /// A connection closed.
    pub(super) fn closed(&mut self, peer: &libp2p::PeerId, id: ConnectionId) {
        if let Some(conns) = self.conns.get_mut(peer) {
            conns.retain(|c| c.id != id);
            if conns.is_empty() {
                self.conns.remove(peer);
            }
        }
    }

    /// DCUtR upgraded a relayed connection to `peer`: the new connection `id` is hole-punched.
    pub(super) fn hole_punched(&mut self, peer: &libp2p::PeerId, id: ConnectionId) {
        if let Some(c) = self
            .conns
            .get_mut(peer)
            .and_then(|conns| conns.iter_mut().find(|c| c.id == id))
        {
            c.path = ConnPath::HolePunched;
        }
    }

    /// This node, as an AutoNAT server, dialed `peer` back at `address` and succeeded: the connection that dial
    /// made, to close (AutoNAT leaves it open, and with probes every few minutes such connections would pile up to
    /// the per-member connection limit, which then fails the probes). `None` if it is the peer's only connection.
    pub(super) fn dial_back(&self, peer: &libp2p::PeerId, address: &Multiaddr) -> Option<ConnectionId> {
        let conns = self.conns.get(peer)?;
        if conns.len() < 2 {
            return None;
        }
        let wanted = without_peer_ids(address);
        conns
            .iter()
            .rev()
            .find(|c| c.dialed.as_ref().is_some_and(|d| without_peer_ids(d) == wanted))
            .map(|c| c.id)
    }

    /// How `peer` is reached now: hole-punched before direct before relayed.
    pub(super) fn path(&self, peer: &libp2p::PeerId) -> Option<ConnPath> {
        let conns = self.conns.get(peer)?;
        let rank = |p: &ConnPath| match p {
            ConnPath::HolePunched => 0,
            ConnPath::Direct => 1,
            ConnPath::Relayed { .. } => 2,
        };
        conns.iter().map(|c| &c.path).min_by_key(|p| rank(p)).cloned()
    }

    /// Every connected member's path.
    pub(super) fn paths(&self) -> HashMap<lendmesh_protocol::PeerId, ConnPath> {
        self.conns
            .keys()
            .filter_map(|peer| Some((to_proto(peer)?, self.path(peer)?)))
            .collect()
    }

    /// identify told which protocols `peer` speaks: whether it relays.
    pub(super) fn identified(&mut self, peer: libp2p::PeerId, protocols: &[StreamProtocol]) {
        if protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            self.relays.insert(peer);
        } else {
            self.relays.remove(&peer);
        }
    }

    /// AutoNAT's verdict changed.
    pub(super) fn status_changed(&mut self, status: autonat::NatStatus) {
        match &status {
            autonat::NatStatus::Public(addr) => info!(%addr, "AutoNAT: this node is reachable from outside"),
            autonat::NatStatus::Private => info!(
                "AutoNAT: this node is not reachable from outside (behind NAT or a firewall); the others reach it \
                 through a member's circuit relay"
            ),
            autonat::NatStatus::Unknown => debug!("AutoNAT: reachability unknown"),
        }
        self.status = status;
    }

    /// This node's relay started or stopped serving (it serves while it has a confirmed external address).
    pub(super) fn relay_status(&mut self, status: relay::Status) {
        self.relay_serving = status == relay::Status::Enable;
        info!(
            serving = self.relay_serving,
            "circuit relay {}",
            if self.relay_serving {
                "serving members behind NAT"
            } else {
                "not serving"
            }
        );
    }

    /// Whether this node should hold reservations now.
    fn wants_reservations(&self) -> bool {
        match self.params.reserve_circuit {
            Switch::On => true,
            Switch::Off => false,
            Switch::Auto => matches!(self.status, autonat::NatStatus::Private),
        }
    }

    /// Reservations to drop (no longer wanted) and relays to reserve on now, each at the address to reach it by.
    /// `learned` gives the addresses known for a peer.
    pub(super) fn plan(
        &mut self,
        now: u64,
        allowed: impl Fn(&libp2p::PeerId) -> bool,
        learned: impl Fn(&libp2p::PeerId) -> Option<Multiaddr>,
    ) -> (Vec<ListenerId>, Vec<(libp2p::PeerId, Multiaddr)>) {
        if !self.wants_reservations() {
            return (self.reservations.drain().map(|(id, _)| id).collect(), Vec::new());
        }
        let held: HashSet<libp2p::PeerId> = self.reservations.values().map(|h| h.relay).collect();
        let mut need = RESERVATIONS.saturating_sub(held.len());
        let mut out = Vec::new();
        let mut candidates: Vec<libp2p::PeerId> = self
            .relays
            .iter()
            .filter(|r| !held.contains(r) && allowed(r))
            .copied()
            .collect();
        candidates.sort();
        for relay in candidates {
            if need == 0 {
                break;
            }
            let Some(conns) = self.conns.get(&relay) else {
                continue;
            };
            if !conns.iter().any(|c| c.path.is_direct()) {
                continue;
            }
            if !retry_backoff(&mut self.backoff, relay).ready(now) {
                continue;
            }
            let Some(addr) = conns
                .iter()
                .find_map(|c| c.dialed.clone())
                .or_else(|| learned(&relay))
            else {
                continue;
            };
            out.push((
                relay,
                without_peer_ids(&addr)
                    .with(Protocol::P2p(relay))
                    .with(Protocol::P2pCircuit),
            ));
            need -= 1;
        }
        (Vec::new(), out)
    }

    /// A reservation was asked for on `relay` with listener `id`.
    pub(super) fn reserving(&mut self, id: ListenerId, relay: libp2p::PeerId) {
        self.reservations.insert(
            id,
            Held {
                relay,
                accepted: false,
                limit: None,
            },
        );
    }

    /// A relay accepted (or renewed) this node's reservation, announcing its circuit limits (seconds, bytes).
    pub(super) fn reservation_accepted(
        &mut self,
        relay: &libp2p::PeerId,
        renewal: bool,
        limit: Option<(Option<u64>, Option<u64>)>,
        counters: &NodeMetrics,
    ) {
        NodeMetrics::outcome(
            &counters.relay_reservations,
            if renewal { "renewed" } else { "accepted" },
        );
        if let Some(h) = self.reservations.values_mut().find(|h| h.relay == *relay) {
            h.accepted = true;
            h.limit = limit;
        }
        if let Some(b) = self.backoff.get_mut(relay) {
            b.succeeded();
        }
        if !renewal {
            let (secs, bytes) = limit.unwrap_or((None, None));
            info!(
                relay = %short(relay),
                circuit_max_duration_s = ?secs,
                circuit_max_bytes = ?bytes,
                "reachable through a member's circuit relay"
            );
        }
    }

    /// A listener closed: if it held a reservation, the reservation is gone (refused, or the relay went away).
    pub(super) fn listener_closed(
        &mut self,
        id: ListenerId,
        reason: &Result<(), std::io::Error>,
        now: u64,
        counters: &NodeMetrics,
    ) {
        let Some(Held { relay, .. }) = self.reservations.remove(&id) else {
            return;
        };
        if let Err(e) = reason {
            NodeMetrics::outcome(&counters.relay_reservations, "failed");
            let wait = retry_backoff(&mut self.backoff, relay).failed(now, &mut rand::rngs::OsRng);
            warn!(relay = %short(&relay), %e, retry_in_ms = wait, "reservation on a member's circuit relay failed");
        }
    }

    /// The snapshot for `/v1/node`.
    pub(super) fn snapshot(&self, external: Vec<Multiaddr>) -> NatSnapshot {
        NatSnapshot {
            reachability: match self.status {
                autonat::NatStatus::Public(_) => "public",
                autonat::NatStatus::Private => "private",
                autonat::NatStatus::Unknown => "unknown",
            }
            .into(),
            external_addrs: external.iter().map(ToString::to_string).collect(),
            relay: match (self.params.circuit_relay, self.relay_serving) {
                (Switch::Off, _) => "off",
                (_, true) => "serving",
                (_, false) => "idle",
            }
            .into(),
            reservations: self
                .reservations
                .values()
                .filter(|h| h.accepted)
                .map(|h| ReservationInfo {
                    relay: short(&h.relay),
                    circuit_max_duration_s: h.limit.and_then(|l| l.0),
                    circuit_max_bytes: h.limit.and_then(|l| l.1),
                })
                .collect(),
        }
    }
}

fn relayed(addr: &Multiaddr) -> ConnPath {
    ConnPath::Relayed {
        relay: relay_of(addr).map_or_else(|| "?".into(), |r| short(&r)),
    }
}

fn short(peer: &libp2p::PeerId) -> String {
    to_proto(peer).map_or_else(|| peer.to_string(), |p| p.short())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_of_a_circuit_address_is_the_peer_before_p2p_circuit() {
        let relay = libp2p::PeerId::random();
        let dst = libp2p::PeerId::random();
        let addr: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{dst}")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&addr), Some(relay));
        assert!(is_relayed(&addr));
        let direct: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{dst}").parse().unwrap();
        assert_eq!(relay_of(&direct), None);
        assert!(!is_relayed(&direct));
    }
}
