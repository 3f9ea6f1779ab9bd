//! The node's HTTP servers: the [`gateway`] tools call (behind gateway [`keys`] beyond loopback), and the [`api`]
//! for inspection and local administration. Both run on [`serve`], which limits connections ([`limit`]), request
//! heads, bodies and the time they take.

pub mod api;
pub mod gateway;
pub mod keys;
pub mod limit;
pub mod serve;
