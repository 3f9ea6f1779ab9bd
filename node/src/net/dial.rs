//! What a failed dial means: a wrong group key fails in the handshake after the connection opened; a refused or
//! unreachable address is not a key problem and must not be reported as one.

use libp2p::swarm::DialError;

/// What a failed dial most likely means.
pub(super) enum DialFailure {
    /// Nothing listens there, or the host cannot be reached: not a key problem.
    Unreachable(String),
    /// The connection opened and the upgrade (pnet, noise) failed: a wrong group key fails this way.
    Handshake,
    /// Something else (no address known, already dialling, …).
    Other,
}

pub(super) fn dial_failure(error: &DialError) -> DialFailure {
    match error {
        DialError::Transport(errors) => {
            let mut reasons = Vec::new();
            for (_, e) in errors {
                match unreachable_reason(e) {
                    Some(why) => reasons.push(why),
                    None => return DialFailure::Handshake,
                }
            }
            reasons.dedup();
            DialFailure::Unreachable(reasons.join(", "))
        }
        DialError::NoAddresses => DialFailure::Unreachable("no address known yet".into()),
        _ => DialFailure::Other,
    }
}

/// `Some(reason)` when a transport error says the address could not be reached at all. The transport stack wraps
/// the socket's `io::Error` in layers of `Either` whose `source()` skips it, so the error kind is read from the
/// debug form, which keeps every layer.
fn unreachable_reason(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let debug = format!("{e:?}");
    [
        ("ConnectionRefused", "connection refused (is the node running?)"),
        ("HostUnreachable", "host unreachable"),
        ("NetworkUnreachable", "network unreachable"),
        ("AddrNotAvailable", "address not available"),
        ("TimedOut", "connection attempt timed out"),
    ]
    .iter()
    .find(|(kind, _)| debug.contains(kind))
    .map(|(_, why)| (*why).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_not_a_key_problem() {
        let addr: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrapped = std::io::Error::other(refused);
        let err = DialError::Transport(vec![(addr.clone(), libp2p::TransportError::Other(wrapped))]);
        assert!(matches!(dial_failure(&err), DialFailure::Unreachable(_)), "{err}");
        let handshake = std::io::Error::other("noise: decrypt error");
        let err = DialError::Transport(vec![(addr, libp2p::TransportError::Other(handshake))]);
        assert!(matches!(dial_failure(&err), DialFailure::Handshake));
    }
}
