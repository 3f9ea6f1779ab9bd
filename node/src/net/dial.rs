//! What a failed dial means: a wrong group key fails in the handshake after the connection opened; a refused or
//! unreachable address is not a key problem and must not be reported as one.

use libp2p::swarm::DialError;

/// What a failed dial most likely means.
pub(super) enum DialFailure {
    /// Nothing listens there, or the host cannot be reached: not a key problem.
    Unreachable(String),
    /// The connection opened and the upgrade (pnet, noise) failed: a wrong group key fails this way.
    Handshake,
    /// This node's membership gate refused the peer: it is not an active roster member.
    Denied(String),
    /// Something else (no address known, already dialling, …).
    Other,
}

pub(super) fn dial_failure(error: &DialError) -> DialFailure {
    match error {
        DialError::Transport(errors) => {
            let mut reasons = Vec::new();
            for (addr, e) in errors {
                let relayed = addr
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit));
                match relay_reason(relayed, e).or_else(|| unreachable_reason(e)) {
                    Some(why) => reasons.push(why),
                    None => return DialFailure::Handshake,
                }
            }
            reasons.dedup();
            DialFailure::Unreachable(reasons.join(", "))
        }
        DialError::NoAddresses => DialFailure::Unreachable("no address known yet".into()),
        DialError::Denied { cause, .. } => DialFailure::Denied(super::gate::reason(cause)),
        _ => DialFailure::Other,
    }
}

/// `Some(reason)` when a dial through a circuit relay failed at the relay (no reservation there, its limits, the
/// relay not reachable): the peer was not reached, which is not a key problem. A relayed connection that opened
/// and then failed its handshake is not matched here: a wrong group key fails that way, as on a direct one.
fn relay_reason(relayed: bool, e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if !relayed {
        return None;
    }
    first_reason(
        e,
        &[
            ("NoReservation", "its relay holds no reservation for it"),
            ("ConnectionFailed", "its relay could not reach it"),
            ("ResourceLimitExceeded", "its relay is at its limits"),
            ("PermissionDenied", "its relay refused the circuit"),
            ("Unsupported", "that member does not relay"),
            ("Reservation(", "no reservation at the relay"),
            ("MissingRelay", "the relay address is incomplete"),
            ("ResponseFromBehaviourCanceled", "the relay could not be reached"),
        ],
    )
}

/// `Some(reason)` when a transport error says the address could not be reached at all. The transport stack wraps
/// the socket's `io::Error` in layers of `Either` whose `source()` skips it, so the error kind is read from the
/// debug form, which keeps every layer.
fn unreachable_reason(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    first_reason(
        e,
        &[
            ("ConnectionRefused", "connection refused (is the node running?)"),
            ("HostUnreachable", "host unreachable"),
            ("NetworkUnreachable", "network unreachable"),
            ("AddrNotAvailable", "address not available"),
            ("TimedOut", "connection attempt timed out"),
        ],
    )
}

/// The reason paired with the first name in `table` that the error's debug form contains.
fn first_reason(e: &(dyn std::error::Error + 'static), table: &[(&str, &str)]) -> Option<String> {
    let debug = format!("{e:?}");
    table
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

    #[test]
    fn a_relay_without_a_reservation_is_not_a_key_problem() {
        let relayed: libp2p::Multiaddr =
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE/p2p-circuit"
                .parse()
                .unwrap();
        let no_reservation = libp2p::relay::client::transport::Error::Connect(
            libp2p::relay::outbound::hop::ConnectError::NoReservation,
        );
        let err = DialError::Transport(vec![(
            relayed.clone(),
            libp2p::TransportError::Other(std::io::Error::other(no_reservation)),
        )]);
        match dial_failure(&err) {
            DialFailure::Unreachable(why) => assert!(why.contains("no reservation"), "{why}"),
            _ => panic!("a relay without a reservation taken for a key problem"),
        }
        // The same relayed address failing in its handshake is a key problem, as on a direct one.
        let handshake = std::io::Error::other("noise: decrypt error");
        let err = DialError::Transport(vec![(relayed, libp2p::TransportError::Other(handshake))]);
        assert!(matches!(dial_failure(&err), DialFailure::Handshake));
    }
}
