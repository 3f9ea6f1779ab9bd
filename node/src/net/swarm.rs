//! The swarm: the transport (TCP or a circuit relay → pnet → noise → yamux, and nothing else) and the combined
//! behaviour.

use super::*;

/// The combined behaviour. (libp2p behaviours do not implement `Debug`.)
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// First of all: denies connections of peers that are not active roster members before any other behaviour
    /// sees them (a relay reservation or circuit included).
    pub(super) gate: super::gate::Gate,
    /// Next: a connection it denies must never reach the others (request-response records a connection as soon
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
    /// The circuit relay this node serves to members behind NAT (off: `circuit_relay = "off"`).
    pub(super) relay: Toggle<relay::Behaviour>,
    /// Reservations on other members' relays, and connections through them.
    pub(super) relay_client: relay::client::Behaviour,
    /// Hole punching: relayed connections upgraded to direct ones where the NATs allow.
    pub(super) dcutr: dcutr::Behaviour,
    /// Whether this node is reachable from outside (it confirms external addresses, which turn the relay on).
    pub(super) autonat: autonat::Behaviour,
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
    let local_peer = p.keypair.public().to_peer_id();
    let (relay_transport, relay_client) = relay::client::new(local_peer);
    let mut relay_client = Some(relay_client);
    let nat = p.nat;
    let gate = super::gate::Gate::new(p.roster.clone(), p.limiter.clone(), counters.clone());
    let mut gate = Some(gate);
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
        .with_other_transport(move |key| member_transport(key, psk, psk, relay_transport))?
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
                let relay = match nat.circuit_relay {
                    Switch::Off => None,
                    mode => {
                        let mut relay = relay::Behaviour::new(peer_id, relay_config(&nat));
                        if mode == Switch::On {
                            relay.set_status(Some(relay::Status::Enable));
                        }
                        Some(relay)
                    }
                };
                Ok(Behaviour {
                    gate: gate.take().ok_or("the behaviour is built once")?,
                    relay: Toggle::from(relay),
                    relay_client: relay_client.take().ok_or("the behaviour is built once")?,
                    dcutr: dcutr::Behaviour::new(peer_id),
                    autonat: autonat::Behaviour::new(peer_id, autonat_config()),
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

/// The member transport: TCP or a circuit relay's stream → pnet → noise → yamux. A relayed connection is a stream
/// inside the connection to the relay, which carries pnet already; it gets its own pnet handshake all the same, end
/// to end, so the group key is checked between the two members and a relay never lets anyone in around it. The
/// node passes the group key for both (`relayed_psk` differs only in the test that shows the inner handshake is
/// there).
pub(super) fn member_transport(
    key: &libp2p::identity::Keypair,
    psk: libp2p::pnet::PreSharedKey,
    relayed_psk: libp2p::pnet::PreSharedKey,
    relay_transport: relay::client::Transport,
) -> Result<
    libp2p::core::transport::Boxed<(libp2p::PeerId, StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let noise = noise::Config::new(key)?;
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .or_transport(relay_transport)
        .and_then(move |socket, _| {
            let key = match &socket {
                futures::future::Either::Left(_) => psk,
                futures::future::Either::Right(_) => relayed_psk,
            };
            PnetConfig::new(key).handshake(socket)
        })
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// The relay's limits: the configured circuit length and size (a relayed borrow of a long answer must not be cut
/// by libp2p's 2 min / 128 KiB defaults), room for every pair of a large group, and rate limits per member only —
/// several members behind one NAT share an address, so per-address limits would throttle them.
fn relay_config(nat: &NatParams) -> relay::Config {
    let per_minute = |n| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
    relay::Config {
        max_reservations: RELAY_MAX_RESERVATIONS,
        max_reservations_per_peer: 4,
        reservation_duration: RELAY_RESERVATION_DURATION,
        reservation_rate_limiters: Vec::new(),
        max_circuits: RELAY_MAX_CIRCUITS,
        max_circuits_per_peer: RELAY_MAX_CIRCUITS_PER_PEER,
        max_circuit_duration: nat.circuit_max_duration,
        max_circuit_bytes: nat.circuit_max_bytes,
        circuit_src_rate_limiters: Vec::new(),
    }
    .reservation_rate_per_peer(per_minute(30), Duration::from_secs(60))
    .circuit_src_per_peer(per_minute(RELAY_CIRCUITS_PER_MINUTE), Duration::from_secs(60))
}

/// AutoNAT: the first probe soon after start (a member behind NAT needs a reservation before the others can reach
/// it), then every 10 s until two probes agree, every 5 min after. Private addresses are allowed: a group on a LAN or a VPN
/// is as real as one on the internet.
fn autonat_config() -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(2),
        retry_interval: Duration::from_secs(10),
        refresh_interval: Duration::from_secs(300),
        throttle_server_period: Duration::from_secs(5),
        confidence_max: 2,
        only_global_ips: false,
        timeout: Duration::from_secs(15),
        ..Default::default()
    }
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

#[cfg(test)]
mod tests {
    //! The group key on a relayed path: three swarms on loopback built with the node's own transport — a relay, a
    //! member that reserves on it, a member that dials that one through it. With one key everywhere the relayed
    //! connection opens; when the member behind the relay checks relayed connections with another key (the outer
    //! hop to the relay still with the right one), the dial fails in the handshake, as a direct one with a wrong
    //! key does.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use libp2p::multiaddr::Protocol;
    use libp2p::pnet::PreSharedKey;

    #[derive(NetworkBehaviour)]
    struct Probe {
        relay: Toggle<relay::Behaviour>,
        client: relay::client::Behaviour,
        ping: ping::Behaviour,
    }

    fn probe_swarm(psk: PreSharedKey, relayed_psk: PreSharedKey, serve: bool) -> Swarm<Probe> {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let (relay_transport, client) = relay::client::new(peer);
        libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(move |key| member_transport(key, psk, relayed_psk, relay_transport))
            .unwrap()
            .with_behaviour(move |_| Probe {
                relay: Toggle::from(serve.then(|| relay::Behaviour::new(peer, relay::Config::default()))),
                client,
                ping: ping::Behaviour::default(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build()
    }

    /// Whether `dialer` reaches the member behind the relay; the dial error if not.
    async fn dial_through_relay(behind_relay_psk: PreSharedKey) -> Result<(), libp2p::swarm::DialError> {
        let group = PreSharedKey::new([7; 32]);
        let mut relay_swarm = probe_swarm(group, group, true);
        relay_swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let relay_addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = relay_swarm.select_next_some().await {
                break address;
            }
        };
        relay_swarm.add_external_address(relay_addr.clone());
        let relay_peer = *relay_swarm.local_peer_id();
        tokio::spawn(async move {
            loop {
                relay_swarm.select_next_some().await;
            }
        });

        // The member behind the relay: the right key to the relay, `behind_relay_psk` on relayed connections.
        let mut behind = probe_swarm(group, behind_relay_psk, false);
        let circuit = relay_addr
            .clone()
            .with(Protocol::P2p(relay_peer))
            .with(Protocol::P2pCircuit);
        behind
            .dial(relay_addr.clone().with(Protocol::P2p(relay_peer)))
            .unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = behind.select_next_some().await {
                break;
            }
        }
        behind.listen_on(circuit.clone()).unwrap();
        loop {
            if let SwarmEvent::Behaviour(ProbeEvent::Client(relay::client::Event::ReservationReqAccepted {
                ..
            })) = behind.select_next_some().await
            {
                break;
            }
        }
        let behind_peer = *behind.local_peer_id();
        tokio::spawn(async move {
            loop {
                behind.select_next_some().await;
            }
        });

        let mut dialer = probe_swarm(group, group, false);
        dialer.dial(circuit.with(Protocol::P2p(behind_peer))).unwrap();
        loop {
            match dialer.select_next_some().await {
                SwarmEvent::ConnectionEstablished {
                    peer_id, endpoint, ..
                } if peer_id == behind_peer => {
                    assert!(endpoint.is_relayed());
                    return Ok(());
                }
                SwarmEvent::OutgoingConnectionError {
                    peer_id: Some(p),
                    error,
                    ..
                } if p == behind_peer => return Err(error),
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn a_relayed_connection_gets_its_own_pnet_handshake() {
        let wait = Duration::from_secs(30);
        let same = tokio::time::timeout(wait, dial_through_relay(PreSharedKey::new([7; 32])))
            .await
            .expect("bounded");
        assert!(
            same.is_ok(),
            "one key everywhere: the relayed connection opens: {same:?}"
        );
        let other = tokio::time::timeout(wait, dial_through_relay(PreSharedKey::new([8; 32])))
            .await
            .expect("bounded");
        let error = other.expect_err("another key on the relayed path: no connection");
        assert!(
            matches!(
                super::super::dial::dial_failure(&error),
                super::super::dial::DialFailure::Handshake
            ),
            "it fails in the handshake, as a wrong key on a direct connection does: {error}"
        );
    }
}
