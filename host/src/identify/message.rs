//! The identify message and its codec, with no I/O: what arrives on an identify stream is
//! one or more frames, each `uvarint(length) ‖ protobuf Identify`, up to the end of the
//! stream. [`decode_frames`] turns such bytes into a validated [`IdentifyInfo`]; the async
//! side in [`super::protocol`] reads the same frames from a stream with the same checks.
//!
//! Several frames are merged as protobuf messages merge (repeated fields append, later
//! scalars win): go-libp2p splits a large identify message in two (the signed peer
//! record goes in its own frame) and reads up to 10 frames.

use std::io;

use prost::Message as _;
use strata_core::identity::DecodingError;
use strata_core::{Multiaddr, PeerId, PublicKey};

use crate::peerstore::{MAX_ADDRS_PER_PEER, MAX_PROTOCOLS_PER_PEER};

/// Protocol ID of identify: the peer that opens the stream asks, the other answers.
pub const IDENTIFY_PROTOCOL: &str = "/ipfs/id/1.0.0";
/// Protocol ID of identify push: the peer that opens the stream sends its new info.
pub const IDENTIFY_PUSH_PROTOCOL: &str = "/ipfs/id/push/1.0.0";

/// Largest identify message accepted, for one frame and for all frames of a stream
/// together. rust-libp2p refuses past 4 KiB and go-libp2p reads frames of up to 8 KiB
/// (keeping its own message near 4 KiB); 64 KiB accepts anything either sends, an RSA
/// key and a signed peer record included, while bounding what one stream can make us hold.
pub const MAX_IDENTIFY_MSG_LEN: usize = 64 * 1024;
/// Most frames read from one stream, as go-libp2p's `maxMessages`.
pub const MAX_IDENTIFY_PARTS: usize = 10;
/// Longest protocol ID kept from a remote's list; go's multistream refuses longer ones.
pub const MAX_PROTOCOL_ID_LEN: usize = 1024;
pub use crate::varint::MAX_UVARINT_LEN;

/// The identify protobuf, as in the libp2p spec. The signed peer record (field 8) is not
/// declared: the decoder skips it like any unknown field.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Identify {
    /// Family of protocols spoken, for example `ipfs/0.1.0`.
    #[prost(string, optional, tag = "5")]
    pub protocol_version: Option<String>,
    /// Free-form implementation name, `name/version`.
    #[prost(string, optional, tag = "6")]
    pub agent_version: Option<String>,
    /// The sender's public key, protobuf-encoded as in the peer ID spec.
    #[prost(bytes = "vec", optional, tag = "1")]
    pub public_key: Option<Vec<u8>>,
    /// Addresses the sender listens on, as multiaddr bytes.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub listen_addrs: Vec<Vec<u8>>,
    /// The address the sender sees the receiver at, as multiaddr bytes.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub observed_addr: Option<Vec<u8>>,
    /// Protocols the sender supports.
    #[prost(string, repeated, tag = "3")]
    pub protocols: Vec<String>,
}

/// Why an identify exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// The stream failed (reset, connection closed, ...).
    #[error("identify stream: {0}")]
    Io(#[from] io::Error),
    /// The remote did not finish in time.
    #[error("identify timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// A length prefix (or the frames together) exceeds [`MAX_IDENTIFY_MSG_LEN`].
    #[error("identify message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The announced length (or running total).
        len: u64,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_IDENTIFY_PARTS`] frames on one stream.
    #[error("more than {max} identify frames on one stream")]
    TooManyParts {
        /// The limit.
        max: usize,
    },
    /// A length prefix is not a valid uvarint.
    #[error("invalid identify length prefix")]
    InvalidLength,
    /// The stream ended inside a frame.
    #[error("identify stream ended inside a frame")]
    Truncated,
    /// The stream's scope had no memory for what the remote sent.
    #[error("no memory for the identify message: {0}")]
    Resource(#[from] strata_core::ResourceError),
    /// A frame is not a valid identify protobuf.
    #[error("invalid identify protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The message carries no public key.
    #[error("identify message carries no public key")]
    MissingPublicKey,
    /// The public key does not decode.
    #[error("invalid public key in identify message: {0}")]
    InvalidPublicKey(#[source] DecodingError),
    /// The public key belongs to another peer than the one on the connection.
    #[error("identify public key is of peer {actual}, the connection is to {expected}")]
    PeerIdMismatch {
        /// The authenticated peer of the connection.
        expected: PeerId,
        /// The peer the announced key belongs to.
        actual: PeerId,
    },
}

/// A validated identify message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyInfo {
    /// The sender's public key.
    pub public_key: PublicKey,
    /// Family of protocols spoken; empty when not sent.
    pub protocol_version: String,
    /// Implementation name and version; empty when not sent.
    pub agent_version: String,
    /// Addresses the sender listens on (at most [`MAX_ADDRS_PER_PEER`]).
    pub listen_addrs: Vec<Multiaddr>,
    /// The address the sender sees the receiver at.
    pub observed_addr: Option<Multiaddr>,
    /// Protocols the sender supports (at most [`MAX_PROTOCOLS_PER_PEER`], no duplicates).
    pub protocols: Vec<String>,
}

impl IdentifyInfo {
    /// The peer ID of the announced key.
    pub fn peer_id(&self) -> PeerId {
        self.public_key.to_peer_id()
    }

    /// The protobuf to send.
    pub fn to_message(&self) -> Identify {
        Identify {
            protocol_version: Some(self.protocol_version.clone()),
            agent_version: Some(self.agent_version.clone()),
            public_key: Some(self.public_key.encode_protobuf()),
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_vec()).collect(),
            observed_addr: self.observed_addr.as_ref().map(|a| a.to_vec()),
            protocols: self.protocols.clone(),
        }
    }

    /// Validates a received protobuf. The public key is required and must decode;
    /// addresses that do not parse are skipped (one odd address from a newer
    /// implementation must not cost the rest), as are empty or overlong protocol IDs and
    /// duplicates. Past the per-peer caps of the peerstore the rest is dropped.
    pub fn from_message(msg: Identify) -> Result<Self, IdentifyError> {
        let key = msg.public_key.ok_or(IdentifyError::MissingPublicKey)?;
        let public_key =
            PublicKey::try_decode_protobuf(&key).map_err(IdentifyError::InvalidPublicKey)?;
        let listen_addrs: Vec<Multiaddr> = msg
            .listen_addrs
            .into_iter()
            .filter_map(|b| Multiaddr::try_from(b).ok())
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        let observed_addr = msg.observed_addr.and_then(|b| Multiaddr::try_from(b).ok());
        let mut protocols: Vec<String> = Vec::new();
        for p in msg.protocols {
            if protocols.len() == MAX_PROTOCOLS_PER_PEER {
                break;
            }
            if !p.is_empty() && p.len() <= MAX_PROTOCOL_ID_LEN && !protocols.contains(&p) {
                protocols.push(p);
            }
        }
        Ok(IdentifyInfo {
            public_key,
            protocol_version: msg.protocol_version.unwrap_or_default(),
            agent_version: msg.agent_version.unwrap_or_default(),
            listen_addrs,
            observed_addr,
            protocols,
        })
    }

    /// Checks that the key is that of `expected`, the authenticated peer of the connection.
    pub fn check_peer(&self, expected: PeerId) -> Result<(), IdentifyError> {
        let actual = self.peer_id();
        if actual == expected {
            Ok(())
        } else {
            Err(IdentifyError::PeerIdMismatch { expected, actual })
        }
    }
}

/// Encodes `info` as one frame: `uvarint(length) ‖ protobuf`. Refused when the protobuf
/// exceeds [`MAX_IDENTIFY_MSG_LEN`], since the remote would refuse it.
pub fn encode_frame(info: &IdentifyInfo) -> Result<Vec<u8>, IdentifyError> {
    let msg = info.to_message();
    let len = msg.encoded_len();
    if len > MAX_IDENTIFY_MSG_LEN {
        return Err(IdentifyError::MessageTooLarge {
            len: len as u64,
            max: MAX_IDENTIFY_MSG_LEN,
        });
    }
    Ok(msg.encode_length_delimited_to_vec())
}

/// Decodes a uvarint at the start of `buf`: `Ok(Some((value, bytes used)))`, `Ok(None)`
/// when `buf` ends before the varint does, an error when it runs past
/// [`MAX_UVARINT_LEN`] bytes (the multiformats unsigned-varint cap) or is not minimally
/// encoded.
pub fn decode_uvarint(buf: &[u8]) -> Result<Option<(u64, usize)>, IdentifyError> {
    crate::varint::decode(buf).map_err(IdentifyError::from)
}

impl From<crate::varint::PrefixError> for IdentifyError {
    fn from(e: crate::varint::PrefixError) -> Self {
        match e {
            crate::varint::PrefixError::Truncated => IdentifyError::Truncated,
            crate::varint::PrefixError::Invalid => IdentifyError::InvalidLength,
            crate::varint::PrefixError::Io(e) => IdentifyError::Io(e),
        }
    }
}

/// Tracks the frames of one stream against the limits: how many, and how many bytes.
#[derive(Debug, Default, Clone)]
pub struct FrameBudget {
    parts: usize,
    total: u64,
}

impl FrameBudget {
    /// Admits a frame of `len` bytes, before anything is allocated for it.
    pub fn admit(&mut self, len: u64) -> Result<usize, IdentifyError> {
        if self.parts == MAX_IDENTIFY_PARTS {
            return Err(IdentifyError::TooManyParts {
                max: MAX_IDENTIFY_PARTS,
            });
        }
        let total = self.total.saturating_add(len);
        if total > MAX_IDENTIFY_MSG_LEN as u64 {
            return Err(IdentifyError::MessageTooLarge {
                len: total,
                max: MAX_IDENTIFY_MSG_LEN,
            });
        }
        self.parts += 1;
        self.total = total;
        // Fits: total is at most MAX_IDENTIFY_MSG_LEN, itself a usize.
        Ok(len as usize)
    }
}

/// Decodes everything an identify stream carried (all its frames, up to EOF) into a
/// validated [`IdentifyInfo`]. Pure, for tests and fuzzers; the stream reader applies the
/// same limits as it reads.
pub fn decode_frames(mut buf: &[u8]) -> Result<IdentifyInfo, IdentifyError> {
    let mut budget = FrameBudget::default();
    let mut msg = Identify::default();
    while !buf.is_empty() {
        let (len, used) = decode_uvarint(buf)?.ok_or(IdentifyError::Truncated)?;
        let len = budget.admit(len)?;
        let body = buf.get(used..used + len).ok_or(IdentifyError::Truncated)?;
        msg.merge(body)?;
        buf = &buf[used + len..];
    }
    IdentifyInfo::from_message(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::identity::keypair_from_seed;

    fn info() -> IdentifyInfo {
        IdentifyInfo {
            public_key: keypair_from_seed(7).public(),
            protocol_version: "ipfs/0.1.0".into(),
            agent_version: "strata/0.1.0".into(),
            listen_addrs: vec![
                "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
                "/ip6/::1/udp/4001/quic-v1".parse().unwrap(),
            ],
            observed_addr: Some("/ip4/10.0.0.1/tcp/5555".parse().unwrap()),
            protocols: vec![IDENTIFY_PROTOCOL.into(), "/ipfs/ping/1.0.0".into()],
        }
    }

    #[test]
    fn frame_round_trip() {
        let frame = encode_frame(&info()).unwrap();
        assert_eq!(decode_frames(&frame).unwrap(), info());
    }

    #[test]
    fn uvarint_edges() {
        assert_eq!(decode_uvarint(&[0]).unwrap(), Some((0, 1)));
        assert_eq!(decode_uvarint(&[0xac, 0x02]).unwrap(), Some((300, 2)));
        assert_eq!(decode_uvarint(&[0x80]).unwrap(), None);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(decode_uvarint(&max).unwrap(), Some((u64::MAX >> 1, 9)));
        let past_the_cap = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(
            decode_uvarint(&past_the_cap),
            Err(IdentifyError::InvalidLength)
        ));
        assert!(matches!(
            decode_uvarint(&[0x80, 0x00]),
            Err(IdentifyError::InvalidLength)
        ));
        assert!(matches!(
            decode_uvarint(&[0x80; 11]),
            Err(IdentifyError::InvalidLength)
        ));
    }

    #[test]
    fn split_frames_merge_like_go() {
        // go sends the signed peer record in a second frame; fields of both frames merge.
        let mut first = info().to_message();
        first.protocols.truncate(1);
        let second = Identify {
            protocols: vec!["/ipfs/ping/1.0.0".into()],
            ..Default::default()
        };
        let mut bytes = first.encode_length_delimited_to_vec();
        bytes.extend(second.encode_length_delimited_to_vec());
        assert_eq!(decode_frames(&bytes).unwrap(), info());
    }

    #[test]
    fn signed_peer_record_field_is_skipped() {
        let mut body = info().to_message().encode_to_vec();
        // Field 8, wire type 2 (bytes): tag 0x42, length 3.
        body.extend([0x42, 3, 1, 2, 3]);
        let mut frame = Vec::new();
        prost::encoding::encode_varint(body.len() as u64, &mut frame);
        frame.extend(body);
        assert_eq!(decode_frames(&frame).unwrap(), info());
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body() {
        let mut frame = Vec::new();
        prost::encoding::encode_varint(MAX_IDENTIFY_MSG_LEN as u64 + 1, &mut frame);
        assert!(matches!(
            decode_frames(&frame),
            Err(IdentifyError::MessageTooLarge { .. })
        ));
        // And the total over several frames counts too.
        let mut budget = FrameBudget::default();
        budget.admit(MAX_IDENTIFY_MSG_LEN as u64 - 1).unwrap();
        assert!(budget.admit(2).is_err());
    }

    #[test]
    fn too_many_parts() {
        let empty = [0u8]; // a zero-length frame
        let bytes = empty.repeat(MAX_IDENTIFY_PARTS + 1);
        assert!(matches!(
            decode_frames(&bytes),
            Err(IdentifyError::TooManyParts { .. })
        ));
    }

    #[test]
    fn garbage_and_truncation_are_typed() {
        assert!(matches!(
            decode_frames(&[3, 0xff, 0xff, 0xff]),
            Err(IdentifyError::Decode(_))
        ));
        assert!(matches!(
            decode_frames(&[5, 1, 2]),
            Err(IdentifyError::Truncated)
        ));
        assert!(matches!(
            decode_frames(&[0x80]),
            Err(IdentifyError::Truncated)
        ));
        assert!(matches!(
            decode_frames(&[]),
            Err(IdentifyError::MissingPublicKey)
        ));
        let bad_key = Identify {
            public_key: Some(vec![1, 2, 3]),
            ..Default::default()
        };
        assert!(matches!(
            decode_frames(&bad_key.encode_length_delimited_to_vec()),
            Err(IdentifyError::InvalidPublicKey(_))
        ));
    }

    #[test]
    fn bad_addrs_skipped_and_counts_capped() {
        let mut msg = info().to_message();
        msg.listen_addrs.insert(0, vec![0xff, 0xff]);
        msg.observed_addr = Some(vec![0xfe]);
        msg.protocols.push(String::new());
        msg.protocols.push("x".repeat(MAX_PROTOCOL_ID_LEN + 1));
        msg.protocols.push(IDENTIFY_PROTOCOL.into());
        let got = IdentifyInfo::from_message(msg).unwrap();
        assert_eq!(got.listen_addrs, info().listen_addrs);
        assert_eq!(got.observed_addr, None);
        assert_eq!(got.protocols, info().protocols);

        let mut many = info().to_message();
        let addr = many.listen_addrs[0].clone();
        many.listen_addrs = vec![addr; MAX_ADDRS_PER_PEER + 10];
        many.protocols = (0..MAX_PROTOCOLS_PER_PEER + 10)
            .map(|i| format!("/p/{i}"))
            .collect();
        let got = IdentifyInfo::from_message(many).unwrap();
        assert_eq!(got.listen_addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(got.protocols.len(), MAX_PROTOCOLS_PER_PEER);
    }

    proptest::proptest! {
        /// Whatever arrives, decoding returns (an info or a typed error) without panic.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = decode_frames(&bytes);
        }

        /// Any valid frame, cut anywhere, is a typed error or (at a frame boundary) an
        /// info, never a panic; whole, it round-trips.
        #[test]
        fn truncated_frames_are_typed(cut in 0usize..200) {
            let frame = encode_frame(&info()).unwrap();
            let cut = cut.min(frame.len());
            let _ = decode_frames(&frame[..cut]);
            proptest::prop_assert_eq!(decode_frames(&frame).unwrap(), info());
        }
    }

    #[test]
    fn check_peer_detects_mismatch() {
        let i = info();
        i.check_peer(i.peer_id()).unwrap();
        let other = keypair_from_seed(8).public().to_peer_id();
        assert!(matches!(
            i.check_peer(other),
            Err(IdentifyError::PeerIdMismatch { expected, .. }) if expected == other
        ));
    }
}
