//! A request-response codec for lendmesh's wire messages: postcard frames (see `lendmesh_protocol::wire`) with the
//! message type's size limit enforced while reading, before anything is decoded. request-response enforces no
//! limit of its own; a peer sending more gets a stream error, counted by the network actor, and nothing else.

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use lendmesh_protocol::wire::{self, WireMessage};
use libp2p::StreamProtocol;
use tracing::warn;

use crate::metrics::NodeMetrics;

/// Codec for one protocol's request and response types. It counts refused frames itself: request-response does not
/// report a failed `read_request` to the behaviour.
#[derive(Debug)]
pub struct WireCodec<Req, Resp> {
    counters: Arc<NodeMetrics>,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> WireCodec<Req, Resp> {
    /// A codec that counts refused frames in `counters.inbound_failures`.
    pub fn new(counters: Arc<NodeMetrics>) -> Self {
        WireCodec {
            counters,
            _types: PhantomData,
        }
    }

    fn counted<T>(&self, r: io::Result<T>, what: &str) -> io::Result<T> {
        if let Err(e) = &r {
            self.counters.inc(&self.counters.inbound_failures);
            warn!(%e, "refused an inbound {what} frame");
        }
        r
    }
}

impl<Req, Resp> Clone for WireCodec<Req, Resp> {
    fn clone(&self) -> Self {
        WireCodec {
            counters: self.counters.clone(),
            _types: PhantomData,
        }
    }
}

/// Reads one frame of at most `T::MAX_LEN` bytes and decodes it.
async fn read_frame<T: WireMessage, R: AsyncRead + Unpin + Send>(io: &mut R) -> io::Result<T> {
    let mut buf = Vec::new();
    io.take(T::MAX_LEN as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > T::MAX_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame exceeds the {}-byte limit", T::MAX_LEN),
        ));
    }
    wire::decode::<T>(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Encodes before any await, so the message itself never crosses one.
async fn write_frame<W: AsyncWrite + Unpin + Send>(io: &mut W, bytes: io::Result<Vec<u8>>) -> io::Result<()> {
    io.write_all(&bytes?).await
}

fn frame<T: WireMessage>(msg: &T) -> io::Result<Vec<u8>> {
    wire::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

impl<Req, Resp> libp2p::request_response::Codec for WireCodec<Req, Resp>
where
    Req: WireMessage + Send,
    Resp: WireMessage + Send,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Req> {
        let r = read_frame(io).await;
        self.counted(r, "request")
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Resp> {
        let r = read_frame(io).await;
        self.counted(r, "response")
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        write_frame(io, frame(&req)).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        write_frame(io, frame(&resp)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lendmesh_protocol::token::TokenHash;
    use lendmesh_protocol::wire::ClaimRequest;

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_refused() {
        let msg = ClaimRequest::Release(lendmesh_protocol::claims::Claim {
            token_hash: TokenHash([1; 32]),
            epoch: 3,
            lender: lendmesh_protocol::PeerId::from_public_key(
                &ed25519_dalek::SigningKey::from_bytes(&[2; 32]).verifying_key(),
            ),
            request_id: [2; 16],
            roster: [4; 32],
        });
        let good = wire::encode(&msg).unwrap();
        let mut cur = futures::io::Cursor::new(good);
        assert_eq!(read_frame::<ClaimRequest, _>(&mut cur).await.unwrap(), msg);

        let mut big = futures::io::Cursor::new(vec![0u8; ClaimRequest::MAX_LEN + 10]);
        let err = read_frame::<ClaimRequest, _>(&mut big).await.unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");

        let mut garbage = futures::io::Cursor::new(vec![1u8, 7, 0xff, 0xff]);
        assert_eq!(
            read_frame::<ClaimRequest, _>(&mut garbage)
                .await
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
    }
}
