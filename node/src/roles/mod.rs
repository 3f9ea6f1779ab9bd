//! The roles a node plays, one actor each (except the borrower, which runs in the gateway's request tasks):
//! - [`peerbook`]: the group state (roster, epochs), verified attestations, peer liveness; the admin's epoch
//!   lifecycle and live administration;
//! - [`issuer`]: the admin's token issuer;
//! - [`member`]: the wallet and its refills;
//! - [`borrower`]: borrowing through a relay when own capacity is gone, and [`borrowed`]: its answer as it streams;
//! - [`lender`]: headroom attestations and serving borrows;
//! - [`relay`] and [`replica`]: forwarding sealed requests, recording first claims;
//! - [`dispatch`]: routes the network's inbound events to the role that owns them, with at most
//!   `[limits] open_streams` streams open per member and protocol ([`slots`]).

pub mod borrowed;
pub mod borrower;
pub mod claimer;
pub mod dispatch;
pub mod issuer;
pub mod lender;
pub mod member;
pub mod peerbook;
pub mod relay;
pub mod replica;
pub mod slots;
pub mod sticky;
