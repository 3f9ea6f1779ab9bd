//! Peer ids between `protocol` and libp2p: both encode ed25519 ids identically.

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
