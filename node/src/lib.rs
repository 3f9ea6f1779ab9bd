//! # lendmesh-node
//!
//! The `lendmesh` binary's library: one node of a lending group (DESIGN §10).
//!
//! Each actor is a task that alone owns its state and is reached through a cheap, cloneable handle that sends a
//! command on a bounded channel with a oneshot for the reply:
//! - [`network`]: owns the libp2p `Swarm` (pnet TCP + noise + yamux, identify, ping, gossipsub, Kademlia, mDNS,
//!   request-response with size-limited postcard frames);
//! - [`peerbook`]: the group state (roster, epoch), verified attestations, peer liveness and RTT;
//! - [`issuer`]: the admin's token issuer (persists quota counters before signatures leave);
//! - [`member`]: the wallet and its refills (persists pending batches before sending, tokens before using them);
//! - [`lender`]: headroom attestations about this member's upstream, and serving borrows sealed to it;
//! - [`gateway`] and [`borrow`]: the HTTP gateway tools call, and borrowing through a relay when own capacity is
//!   gone;
//! - [`api`]: the HTTP API on loopback.
//!
//! The logic lives in `lendmesh-protocol`'s state machines; actors move messages, time and storage.
//! [`node::run`] wires them together and shuts them down through one cancellation token. [`cli`] is the
//! command line; `main.rs` only calls it.

pub mod admin;
pub mod api;
pub mod borrow;
pub mod cli;
pub mod codec;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod group_state;
pub mod home;
pub mod issuer;
pub mod lender;
pub mod member;
pub mod metrics;
pub mod network;
pub mod node;
pub mod peerbook;
pub mod store;
pub mod upstream;

/// Milliseconds since the Unix epoch (the node's clock; `protocol` takes it as a parameter).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A protocol `PeerId` as libp2p's.
pub fn to_libp2p(p: &lendmesh_protocol::PeerId) -> libp2p::PeerId {
    // Both encode ed25519 ids identically; a protocol PeerId is always valid libp2p bytes.
    libp2p::PeerId::from_bytes(p.as_bytes())
        .unwrap_or_else(|_| unreachable!("ed25519 peer ids are valid multihashes"))
}

/// A libp2p `PeerId` as the protocol's, if it is an ed25519 id.
pub fn to_proto(p: &libp2p::PeerId) -> Option<lendmesh_protocol::PeerId> {
    lendmesh_protocol::PeerId::from_bytes(&p.to_bytes()).ok()
}
