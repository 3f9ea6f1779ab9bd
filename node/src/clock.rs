//! The node's clock: milliseconds since the Unix epoch. `protocol` takes time as a parameter; this is where the
//! node reads it.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
