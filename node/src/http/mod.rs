//! The node's HTTP servers, both behind a connection limit ([`limit`]): the [`gateway`] tools call, and the
//! [`api`] for inspection and local administration.

pub mod api;
pub mod gateway;
pub mod limit;
