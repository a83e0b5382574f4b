//! Reading what a remote announces, under the memory rule of
//! [`strata_core::rcmgr`]: a length prefix is checked against the protocol's limit
//! first, then the body is read in chunks, each reserved before the buffer grows for it,
//! so that a peer announcing a megabyte and sending three bytes costs three bytes, and a
//! peer whose bytes do not fit the scope's memory gets an error instead of an allocation.
//!
//! The protocols above the host (identify here; the DHT, pubsub and relay on top) read
//! their frames with [`read_body_reserved`] and keep the returned [`Reservation`] with
//! the bytes for as long as they hold them.

use bytes::Bytes;
use strata_core::rcmgr::priority;
use strata_core::{Reservation, ResourceError, ScopeMemory};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a body's buffer grows by at once: what one read may add before the next
/// reservation.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The scope had no memory for the next chunk.
    #[error("no memory to read the frame: {0}")]
    Resource(#[from] ResourceError),
    /// The stream ended before the body did.
    #[error("the stream ended inside a frame")]
    Truncated,
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads exactly `len` bytes (a length already checked against the protocol's limit)
/// from `stream`. Nothing is allocated before bytes arrive: each read first lands in a
/// small buffer on the stack, and only then does the body's buffer grow, by at most
/// [`READ_CHUNK`] (reserved from `memory` first) into which further reads go directly.
/// Returns the bytes and their reservation, which the caller keeps as long as it keeps
/// the bytes.
pub async fn read_body_reserved<S>(
    stream: &mut S,
    len: usize,
    memory: &ScopeMemory,
) -> Result<(Bytes, Reservation), BodyError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut held = memory.empty();
    let mut body: Vec<u8> = Vec::new();
    let mut first = [0u8; 512];
    while body.len() < len {
        let left = len - body.len();
        if body.capacity() == body.len() {
            // No room: wait for bytes before making any.
            let want = left.min(first.len());
            let n = stream.read(&mut first[..want]).await?;
            if n == 0 {
                return Err(BodyError::Truncated);
            }
            let chunk = left.min(READ_CHUNK);
            held.grow(chunk, priority::ALWAYS)?;
            body.reserve_exact(chunk);
            body.extend_from_slice(&first[..n]);
            continue;
        }
        let start = body.len();
        let room = (body.capacity() - start).min(left);
        body.resize(start + room, 0);
        let n = stream.read(&mut body[start..]).await?;
        body.truncate(start + n);
        if n == 0 {
            return Err(BodyError::Truncated);
        }
    }
    Ok((Bytes::from(body), held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::rcmgr::CountedMemory;

    #[tokio::test]
    async fn a_body_is_reserved_as_it_arrives_and_released_with_it() {
        let ops = CountedMemory::new(1 << 20, "stream");
        let memory = ops.memory();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let (body, held) = read_body_reserved(&mut &data[..], data.len(), &memory)
            .await
            .unwrap();
        assert_eq!(&body[..], &data[..]);
        assert_eq!(held.size(), data.len());
        assert_eq!(ops.held(), data.len());
        drop(held);
        assert_eq!(ops.held(), 0);
    }

    #[tokio::test]
    async fn a_peer_that_announces_much_and_sends_little_costs_little() {
        let ops = CountedMemory::new(1 << 20, "stream");
        let memory = ops.memory();
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut theirs, b"abc")
            .await
            .unwrap();
        let read = read_body_reserved(&mut ours, 1 << 20, &memory);
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut read)
                .await
                .is_err()
        );
        // One chunk reserved once three bytes came, not the megabyte announced.
        assert_eq!(ops.held(), READ_CHUNK);
        drop(theirs);
        assert!(matches!(read.await, Err(BodyError::Truncated)));
        assert_eq!(ops.held(), 0);
    }

    #[tokio::test]
    async fn nothing_is_reserved_before_a_byte_arrives() {
        let ops = CountedMemory::new(1 << 20, "stream");
        let memory = ops.memory();
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let read = read_body_reserved(&mut ours, 60_000, &memory);
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut read)
                .await
                .is_err()
        );
        assert_eq!(ops.held(), 0);
        drop(theirs);
        assert!(matches!(read.await, Err(BodyError::Truncated)));
    }

    #[tokio::test]
    async fn a_body_past_the_memory_is_refused() {
        let ops = CountedMemory::new(40_000, "stream");
        let memory = ops.memory();
        let data = vec![7u8; 100_000];
        let err = read_body_reserved(&mut &data[..], data.len(), &memory)
            .await
            .unwrap_err();
        assert!(matches!(err, BodyError::Resource(_)), "{err}");
        assert_eq!(ops.held(), 0);
    }
}

/// Helpers for the hand-written, bounded protobuf decoders of the protocols above the
/// host (a generic decoder allocates for every repeated entry a remote lists; these let
/// a decoder skip entries past its caps without allocating for them).
pub mod protobuf {
    pub use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

    /// Why bytes are not the protobuf message a decoder expects.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("invalid protobuf: {0}")]
    pub struct ProtobufError(pub String);

    impl From<prost::DecodeError> for ProtobufError {
        fn from(e: prost::DecodeError) -> Self {
            ProtobufError(e.to_string())
        }
    }

    /// The bytes of a length-delimited field, `buf` moved past them.
    pub fn delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ProtobufError> {
        let len = decode_varint(buf)?;
        if len > buf.len() as u64 {
            return Err(ProtobufError("field length past the end".into()));
        }
        let (field, rest) = buf.split_at(len as usize);
        *buf = rest;
        Ok(field)
    }

    /// `Ok` when a field came with the wire type its tag has.
    pub fn expect_wire(wire: WireType, want: WireType) -> Result<(), ProtobufError> {
        if wire == want {
            Ok(())
        } else {
            Err(ProtobufError(format!(
                "wire type {wire:?} where {want:?} belongs"
            )))
        }
    }

    /// Skips a field of a tag the decoder does not read.
    pub fn skip(wire: WireType, tag: u32, buf: &mut &[u8]) -> Result<(), ProtobufError> {
        skip_field(wire, tag, buf, DecodeContext::default())?;
        Ok(())
    }
}
