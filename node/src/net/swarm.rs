//! The swarm: the transport (TCP → pnet → noise → yamux, and nothing else) and the combined behaviour.

use super::*;

/// The combined behaviour. (libp2p behaviours do not implement `Debug`.)
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// First: a connection it denies must never reach the others (request-response records a connection as soon
    /// as it is offered one, and a later denial leaves that record behind — a debug assertion, and wrong state).
    pub(super) limits: libp2p::connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(super) issue: request_response::Behaviour<WireCodec<IssueRequest, IssueResponse>>,
    pub(super) claim: request_response::Behaviour<WireCodec<ClaimRequest, ClaimResponse>>,
    pub(super) streams: streams::Behaviour,
}

/// The swarm and the handle that opens streams through it.
pub(super) fn build_swarm(
    p: &NetworkParams,
    counters: &Arc<NodeMetrics>,
    stopped: CancellationToken,
) -> anyhow::Result<(Swarm<Behaviour>, streams::Streams)> {
    let (stream_behaviour, streams) = streams::Behaviour::new(
        vec![streams::RELAY_PROTOCOL, streams::BORROW_PROTOCOL],
        p.stream_timeouts,
        counters.clone(),
        stopped,
    );
    let mut stream_behaviour = Some(stream_behaviour);
    let psk = p.psk;
    let kad_protocol = StreamProtocol::try_from_owned(format!("/lendmesh/{}/kad/1", p.group_id))?;
    let mdns_on = p.mdns;
    let gossip_topic = topic(&p.group_id);
    let connections_per_member = p
        .limiter
        .lock()
        .map_or(lendmesh_protocol::limits::Limits::default().connections, |l| {
            l.limits().connections
        });
    let swarm = libp2p::SwarmBuilder::with_existing_identity(p.keypair.clone())
        .with_tokio()
        .with_other_transport(
            move |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let noise = noise::Config::new(key)?;
                Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
            },
        )?
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    .max_transmit_size(MAX_GOSSIP)
                    .heartbeat_interval(Duration::from_millis(700))
                    .build()?;
                let mut gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                gossipsub.with_peer_score(
                    peer_score(&gossip_topic),
                    gossipsub::PeerScoreThresholds::default(),
                )?;
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kad::Config::new(kad_protocol),
                );
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_on {
                    Toggle::from(Some(mdns::tokio::Behaviour::new(
                        mdns::Config::default(),
                        peer_id,
                    )?))
                } else {
                    Toggle::from(None)
                };
                let rr = request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_REQUEST_STREAMS);
                Ok(Behaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new("/lendmesh/id/1".into(), key.public())
                            .with_agent_version(format!("lendmesh/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::new(
                        ping::Config::new()
                            .with_interval(PING_INTERVAL)
                            .with_timeout(PING_TIMEOUT),
                    ),
                    gossipsub,
                    kad,
                    mdns,
                    issue: request_response::Behaviour::with_codec(
                        WireCodec::new(counters.clone()),
                        [(ISSUE_PROTOCOL, ProtocolSupport::Full)],
                        rr.clone(),
                    ),
                    claim: request_response::Behaviour::with_codec(
                        WireCodec::new(counters.clone()),
                        [(CLAIM_PROTOCOL, ProtocolSupport::Full)],
                        rr,
                    ),
                    streams: stream_behaviour.take().ok_or("the behaviour is built once")?,
                    limits: libp2p::connection_limits::Behaviour::new(
                        libp2p::connection_limits::ConnectionLimits::default()
                            .with_max_established_per_peer(Some(connections_per_member))
                            .with_max_established(Some(MAX_CONNECTIONS))
                            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING)),
                    ),
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("building the network behaviour failed: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok((swarm, streams))
}

/// Gossipsub peer scoring (docs/design.md §9.3): a member that sends messages this node rejects (malformed, forged,
/// from a non-member, an attestation that fails its checks) loses score fast — four within a few seconds reach the
/// graylist (-80), where gossipsub ignores everything it sends — and recovers as the count decays. Scores that punish
/// honest members of a small private group are off: several members behind one address (an office, a NAT) are
/// normal here (IP colocation), and attestations every few seconds are far below the mesh-delivery quotas made for
/// busy public topics.
fn peer_score(topic: &IdentTopic) -> gossipsub::PeerScoreParams {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 0.5,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    params.topics.insert(topic.hash(), topic_params);
    params
}
