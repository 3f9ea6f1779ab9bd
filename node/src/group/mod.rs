//! The group: its material as this node holds it ([`state`]) and the admin's operations on it ([`admin`]).

pub mod admin;
pub mod state;
