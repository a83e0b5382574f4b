//! The yamux frame header, with no I/O: twelve bytes, big-endian.
//!
//! ```text
//! version (8) | type (8) | flags (16) | stream ID (32) | length (32)
//! ```
//!
//! Version is 0. Type: Data (the length is the body that follows), Window Update (the
//! length is a credit delta), Ping (stream 0; the length is an opaque value echoed back),
//! Go Away (stream 0; the length is an error code). Flags: SYN opens a stream, ACK
//! acknowledges it, FIN half-closes it, RST resets it.

/// Bytes in a header.
pub const HEADER_LEN: usize = 12;

/// Every stream starts with this much receive window on each side (the specification's
/// 256 KiB).
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// The kind of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// Stream data; `length` bytes of body follow.
    Data,
    /// A receive-window credit for the stream (`length` is the delta).
    WindowUpdate,
    /// A ping (SYN) or its answer (ACK); `length` is an opaque value.
    Ping,
    /// The sender opens no more streams; `length` is the reason code.
    GoAway,
}

/// Header flags.
pub mod flags {
    /// Opens a stream.
    pub const SYN: u16 = 1;
    /// Acknowledges a stream (or answers a ping).
    pub const ACK: u16 = 2;
    /// Half-closes a stream: the sender sends no more.
    pub const FIN: u16 = 4;
    /// Resets a stream.
    pub const RST: u16 = 8;
}

/// Go Away codes.
pub mod go_away {
    /// A normal end.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// An internal error.
    pub const INTERNAL_ERROR: u32 = 2;
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame type.
    pub typ: FrameType,
    /// The flags ([`flags`]).
    pub flags: u16,
    /// The stream (0 for the session).
    pub stream: u32,
    /// Body length, credit delta, ping value or Go Away code, by type.
    pub length: u32,
}

/// A header that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The version byte is not 0.
    #[error("unsupported yamux version {0}")]
    Version(u8),
    /// The type byte is not 0 to 3.
    #[error("unknown yamux frame type {0}")]
    Type(u8),
}

impl Header {
    /// A header of `typ` with `flags` for `stream`.
    pub fn new(typ: FrameType, flags: u16, stream: u32, length: u32) -> Self {
        Header {
            typ,
            flags,
            stream,
            length,
        }
    }

    /// True when `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The twelve bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let typ = match self.typ {
            FrameType::Data => 0u8,
            FrameType::WindowUpdate => 1,
            FrameType::Ping => 2,
            FrameType::GoAway => 3,
        };
        let mut out = [0u8; HEADER_LEN];
        out[1] = typ;
        out[2..4].copy_from_slice(&self.flags.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream.to_be_bytes());
        out[8..12].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Reads a header from its twelve bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        if b[0] != 0 {
            return Err(FrameError::Version(b[0]));
        }
        let typ = match b[1] {
            0 => FrameType::Data,
            1 => FrameType::WindowUpdate,
            2 => FrameType::Ping,
            3 => FrameType::GoAway,
            t => return Err(FrameError::Type(t)),
        };
        Ok(Header {
            typ,
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        for typ in [
            FrameType::Data,
            FrameType::WindowUpdate,
            FrameType::Ping,
            FrameType::GoAway,
        ] {
            let h = Header::new(typ, flags::SYN | flags::FIN, 0xdead_beef, 0x0102_0304);
            assert_eq!(Header::decode(&h.encode()), Ok(h));
        }
        // A window update opening stream 1 with 1 MiB more credit, byte by byte.
        let h = Header::new(FrameType::WindowUpdate, flags::SYN, 1, 1 << 20);
        assert_eq!(h.encode(), [0, 1, 0, 1, 0, 0, 0, 1, 0, 0x10, 0, 0]);
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut b = Header::new(FrameType::Data, 0, 1, 0).encode();
        b[0] = 1;
        assert_eq!(Header::decode(&b), Err(FrameError::Version(1)));
        b[0] = 0;
        b[1] = 4;
        assert_eq!(Header::decode(&b), Err(FrameError::Type(4)));
    }
}
