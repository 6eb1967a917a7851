//! The request-response codec of every federation protocol: one frame each way,
//! a 4-byte big-endian length then that many bytes, with the length checked
//! against the protocol's limit before anything is read or allocated.

use std::io;

use futures::{AsyncReadExt, AsyncWriteExt, prelude::*};
use libp2p::{StreamProtocol, request_response};

/// Why a frame was refused, carried inside an `io::Error` of kind `InvalidData`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
}

impl FrameError {
    /// The frame error inside an IO error, if that is what it is.
    pub(crate) fn of(error: &io::Error) -> Option<FrameError> {
        error.get_ref()?.downcast_ref::<FrameError>().copied()
    }
}

/// The buffer a frame starts with; it grows as the bytes arrive.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// What [`FrameCodec`] hands up for a request whose length is over the limit.
pub(crate) const OVERSIZED: &[u8] = &[];
/// What [`FrameCodec`] hands up for a request of length zero.
pub(crate) const MALFORMED: &[u8] = &[0];

/// A length-prefixed frame codec with separate request and response limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameCodec {
    max_request: usize,
    max_response: usize,
}

impl FrameCodec {
    pub(crate) fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
        }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::Oversized { len, max },
        ));
    }
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::Empty,
        ));
    }
    // Memory grows with the bytes that arrive, not with the length announced:
    // a peer that announces a large frame and stalls holds only what it sent.
    let mut buf = Vec::with_capacity(len.min(INITIAL_CAPACITY));
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max || bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            FrameError::Oversized {
                len: bytes.len(),
                max,
            },
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    /// A request whose length prefix is over the limit (or zero) is not read;
    /// it comes out as a marker, [`OVERSIZED`] or [`MALFORMED`], so that the
    /// node learns which peer sent it. (libp2p-request-response reports no
    /// event at all for a request whose read fails, so an error here would let
    /// a peer flood unseen.) No real request is that short.
    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, self.max_request).await {
            Err(e) => match FrameError::of(&e) {
                Some(FrameError::Oversized { .. }) => Ok(OVERSIZED.to_vec()),
                Some(FrameError::Empty) => Ok(MALFORMED.to_vec()),
                None => Err(e),
            },
            ok => ok,
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_response).await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    use super::*;

    fn proto() -> StreamProtocol {
        StreamProtocol::new("/exo-fed/query/1")
    }

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused_before_reading() {
        futures::executor::block_on(async {
            let mut codec = FrameCodec::new(8, 16);
            let mut out = Cursor::new(Vec::new());
            codec
                .write_request(&proto(), &mut out, b"hello".to_vec())
                .await
                .unwrap();
            let bytes = out.into_inner();
            assert_eq!(&bytes[..4], &5u32.to_be_bytes());
            let got = codec
                .read_request(&proto(), &mut Cursor::new(bytes))
                .await
                .unwrap();
            assert_eq!(got, b"hello");

            // A length over the limit is not read: the request comes up as a
            // marker the driver turns into a cut-off; a response fails, naming the size.
            let mut huge = u32::MAX.to_be_bytes().to_vec();
            huge.extend_from_slice(b"x");
            let marker = codec
                .read_request(&proto(), &mut Cursor::new(huge.clone()))
                .await
                .unwrap();
            assert_eq!(marker, OVERSIZED);
            let e = codec
                .read_response(&proto(), &mut Cursor::new(huge))
                .await
                .unwrap_err();
            assert_eq!(
                FrameError::of(&e),
                Some(FrameError::Oversized {
                    len: u32::MAX as usize,
                    max: 16
                })
            );
            let zero = codec
                .read_request(&proto(), &mut Cursor::new(vec![0, 0, 0, 0]))
                .await
                .unwrap();
            assert_eq!(zero, MALFORMED);
            // Truncated input is an IO error, not a panic.
            let e = codec
                .read_request(&proto(), &mut Cursor::new(vec![0, 0, 0, 5, 1]))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            // The response limit is separate.
            let mut out = Cursor::new(Vec::new());
            codec
                .write_response(&proto(), &mut out, vec![7; 16])
                .await
                .unwrap();
            assert_eq!(
                codec
                    .read_response(&proto(), &mut Cursor::new(out.into_inner()))
                    .await
                    .unwrap()
                    .len(),
                16
            );
            assert!(
                codec
                    .write_request(&proto(), &mut Cursor::new(Vec::new()), vec![0; 9])
                    .await
                    .is_err()
            );
        });
    }
}
