//! Unsigned-varint length prefixes (identify frames, message frames), read from a stream a
//! byte at a time so that nothing past the prefix is consumed. Decoding is the
//! `unsigned-varint` crate's; this adds the incremental read and the 9-byte cap.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The multiformats unsigned-varint spec caps a varint at 9 bytes (63 bits).
pub const MAX_UVARINT_LEN: usize = 9;

/// A length prefix that could not be read.
#[derive(Debug)]
pub(crate) enum PrefixError {
    /// The stream ended inside the prefix.
    Truncated,
    /// Longer than [`MAX_UVARINT_LEN`] bytes, or not minimally encoded.
    Invalid,
    /// The stream failed.
    Io(std::io::Error),
}

/// Decodes a uvarint at the start of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)`
/// when `buf` ends before the varint does.
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(u64, usize)>, PrefixError> {
    let prefix = &buf[..buf.len().min(MAX_UVARINT_LEN)];
    match unsigned_varint::decode::u64(prefix) {
        Ok((value, rest)) => Ok(Some((value, prefix.len() - rest.len()))),
        Err(unsigned_varint::decode::Error::Insufficient) if buf.len() < MAX_UVARINT_LEN => {
            Ok(None)
        }
        Err(_) => Err(PrefixError::Invalid),
    }
}

/// Reads one length prefix; `None` on a clean end of stream before its first byte.
pub(crate) async fn read<S>(stream: &mut S) -> Result<Option<u64>, PrefixError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut buf = [0u8; MAX_UVARINT_LEN];
    for i in 0..buf.len() {
        let n = stream
            .read(&mut buf[i..=i])
            .await
            .map_err(PrefixError::Io)?;
        if n == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(PrefixError::Truncated)
            };
        }
        if let Some((len, _)) = decode(&buf[..=i])? {
            return Ok(Some(len));
        }
    }
    Err(PrefixError::Invalid)
}

/// Appends `n` as an unsigned varint.
pub(crate) fn encode(n: u64, out: &mut Vec<u8>) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(n, &mut buf));
}
