//! A misbehaving member for robustness tests: a real libp2p node with the group's key that sends raw,
//! unvalidated bytes — oversized request frames, garbage gossip — on the request-response protocols and on the
//! streamed borrow protocols.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, Transport, gossipsub, noise, ping, tcp, yamux};

/// Raw bytes in, raw bytes out (at most 64 KiB read back).
#[derive(Clone, Default, Debug)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(65536).read_to_end(&mut buf).await?;
        Ok(buf)
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(65536).read_to_end(&mut buf).await?;
        Ok(buf)
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&req).await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Vec<u8>,
    ) -> std::io::Result<()> {
        io.write_all(&resp).await
    }
}

/// The rogue's behaviour.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct RogueBehaviour {
    /// Gossip without validation.
    pub gossipsub: gossipsub::Behaviour,
    /// Raw requests on `/lendmesh/issue/1`.
    pub issue: request_response::Behaviour<RawCodec>,
    /// Raw requests on `/lendmesh/claim/1`.
    pub claim: request_response::Behaviour<RawCodec>,
    /// Raw streams on `/lendmesh/relay/2` and `/lendmesh/borrow/2`.
    pub streams: libp2p_stream::Behaviour,
    /// Answers pings, so the members take it as healthy (a hostile member would).
    pub ping: ping::Behaviour,
}

/// The node's request-response and streamed protocols.
pub const PROTOCOLS: [&str; 4] = [
    "/lendmesh/issue/1",
    "/lendmesh/relay/2",
    "/lendmesh/borrow/2",
    "/lendmesh/claim/1",
];

/// Whether `protocol` is one of the streamed ones (frames carry a 4-byte length prefix).
pub fn is_streamed(protocol: &str) -> bool {
    protocol.ends_with("/2")
}

/// A wire frame as a streamed protocol carries it: its length (4 bytes, big-endian), then the frame.
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len()).expect("a frame under 4 GiB");
    [&len.to_be_bytes()[..], bytes].concat()
}

/// The first frame of what a streamed protocol answered (empty if there is none).
pub fn unframe(raw: &[u8]) -> &[u8] {
    match raw {
        [a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            rest.get(..len).unwrap_or(rest)
        }
        _ => &[],
    }
}

fn raw_behaviour(protocol: &'static str) -> request_response::Behaviour<RawCodec> {
    request_response::Behaviour::with_codec(
        RawCodec,
        [(StreamProtocol::new(protocol), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
    )
}

/// A rogue member.
pub struct Rogue {
    /// Its swarm.
    pub swarm: Swarm<RogueBehaviour>,
}

impl std::fmt::Debug for Rogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rogue")
    }
}

impl Rogue {
    /// Builds a rogue with `key` and the group's `psk`, speaking raw bytes on every lendmesh protocol.
    pub fn new(key: libp2p::identity::Keypair, psk: [u8; 32]) -> Rogue {
        let psk = PreSharedKey::new(psk);
        let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(
                move |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    let noise = noise::Config::new(key)?;
                    Ok(tcp::tokio::Transport::new(tcp::Config::default())
                        .and_then(move |s, _| PnetConfig::new(psk).handshake(s))
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .map(|(p, m), _| (p, StreamMuxerBox::new(m))))
                },
            )
            .unwrap()
            .with_behaviour(|key| RogueBehaviour {
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::ConfigBuilder::default()
                        .max_transmit_size(1 << 20)
                        .build()
                        .unwrap(),
                )
                .unwrap(),
                issue: raw_behaviour(PROTOCOLS[0]),
                claim: raw_behaviour(PROTOCOLS[3]),
                streams: libp2p_stream::Behaviour::new(),
                ping: ping::Behaviour::new(ping::Config::new()),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        Rogue { swarm }
    }

    /// Dials `addr` and waits (bounded) for the connection.
    pub async fn connect(&mut self, addr: Multiaddr) -> PeerId {
        self.swarm.dial(addr).unwrap();
        let fut = async {
            loop {
                if let SwarmEvent::ConnectionEstablished { peer_id, .. } = self.swarm.select_next_some().await
                {
                    return peer_id;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("rogue connects within 20 s")
    }

    /// Sends raw bytes as a request on `protocol` (one of [`PROTOCOLS`]); returns Ok(response bytes) or
    /// Err(failure text). Bounded.
    pub async fn raw_request(
        &mut self,
        protocol: &str,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        if is_streamed(protocol) {
            return self.raw_stream(protocol, peer, bytes).await;
        }
        let b = self.swarm.behaviour_mut();
        let id = match protocol {
            "/lendmesh/issue/1" => b.issue.send_request(&peer, bytes),
            _ => b.claim.send_request(&peer, bytes),
        };
        let fut = async {
            loop {
                let event = match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(RogueBehaviourEvent::Issue(e) | RogueBehaviourEvent::Claim(e)) => e,
                    SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == peer => {
                        return Err("connection closed".into());
                    }
                    _ => continue,
                };
                match event {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } if request_id == id => return Ok(response),
                    request_response::Event::OutboundFailure {
                        request_id, error, ..
                    } if request_id == id => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .unwrap_or_else(|_| Err("timeout".into()))
    }

    /// Opens a `protocol` stream, writes `bytes` and reads what comes back until the node ends it (at most 64 KiB),
    /// driving the swarm meanwhile. Bounded.
    async fn raw_stream(&mut self, protocol: &str, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        self.raw_streams(vec![(protocol.to_string(), peer, bytes)])
            .await
            .pop()
            .unwrap_or_else(|| Err("no answer".into()))
    }

    /// Like [`Rogue::raw_request`] on streamed protocols, for several `(protocol, peer, bytes)` at once: every
    /// stream is opened and written before any answer is awaited, so the nodes see them concurrently. Bounded.
    pub async fn raw_streams(
        &mut self,
        requests: Vec<(String, PeerId, Vec<u8>)>,
    ) -> Vec<Result<Vec<u8>, String>> {
        let n = requests.len();
        let exchanges = requests.into_iter().map(|(protocol, peer, bytes)| {
            let mut control = self.swarm.behaviour().streams.new_control();
            async move {
                let protocol = StreamProtocol::try_from_owned(protocol).map_err(|e| e.to_string())?;
                let mut stream = control
                    .open_stream(peer, protocol)
                    .await
                    .map_err(|e| e.to_string())?;
                // Written and flushed, this side left open: a requester that closes its side has gone away.
                stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
                stream.flush().await.map_err(|e| e.to_string())?;
                let mut buf = Vec::new();
                stream
                    .take(65536)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(buf)
            }
        });
        let all = futures::future::join_all(exchanges);
        let swarm = &mut self.swarm;
        let drive = async {
            loop {
                swarm.select_next_some().await;
            }
        };
        let both = async {
            tokio::select! {
                r = all => r,
                () = drive => unreachable!("the swarm stream never ends"),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .unwrap_or_else(|_| vec![Err("timeout".into()); n])
    }

    /// Subscribes to `topic`, waits until `peer` is subscribed too, and publishes `data`. Bounded.
    pub async fn publish_when_ready(&mut self, topic: &str, peer: PeerId, data: Vec<u8>) {
        let topic = gossipsub::IdentTopic::new(topic);
        self.swarm.behaviour_mut().gossipsub.subscribe(&topic).unwrap();
        let fut = async {
            loop {
                let ready = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .all_peers()
                    .any(|(p, t)| *p == peer && !t.is_empty());
                if ready
                    && self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(topic.clone(), data.clone())
                        .is_ok()
                {
                    // Let the message leave.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        loop {
                            self.swarm.select_next_some().await;
                        }
                    })
                    .await;
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), self.swarm.select_next_some()).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .expect("published within 30 s");
    }
}
