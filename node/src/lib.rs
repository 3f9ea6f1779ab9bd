//! # lendmesh-node
//!
//! The `lendmesh` binary's library: one node of a lending group (docs/design.md §10). The tree shows the layers;
//! leaves import nothing above them (`.ci/module-cycles node/src` checks there is no import cycle):
//! - leaves: [`clock`], [`home`] (the node's directory and its 0600 files), [`config`], [`metrics`], [`upstream`]
//!   (the capacity a member shares), [`store`] (redb: every durable write), [`group`] (the group material as held,
//!   and the admin's operations on it);
//! - [`net`]: the network actor, the only owner of the libp2p `Swarm` (pnet TCP + noise + yamux, identify, ping,
//!   gossipsub, Kademlia, mDNS, request-response with size-limited postcard frames), reconnection;
//! - [`roles`]: one actor per role — PeerBook, issuer, member, lender — plus the borrower, relay, replica and the
//!   dispatcher that routes inbound network events to them;
//! - [`http`]: the gateway tools call and the API, each behind a connection limit;
//! - [`node`]: wires it all and shuts it down in phases; [`cli`] and [`demo`] on top; `main.rs` only calls
//!   [`cli::main`].
//!
//! Each actor is a task that alone owns its state and is reached through a cheap, cloneable handle that sends a
//! message on a bounded channel with a oneshot for the reply. The rules — issuance, refill, borrowing, lending,
//! epochs, routing — are `lendmesh-protocol`'s state machines, which the simulator drives too; actors only move
//! messages, time and storage.

pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod group;
pub mod home;
pub mod http;
pub mod metrics;
pub mod net;
pub mod node;
pub mod roles;
pub mod store;
pub mod upstream;

pub use clock::now_ms;
pub use net::ids::{to_libp2p, to_proto};
