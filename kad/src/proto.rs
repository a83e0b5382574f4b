//! The Kademlia wire message (`dht.proto` of the libp2p specs) and its codec, with no
//! I/O: each message is `uvarint(length) ‖ protobuf Message`. Decoding checks the length
//! against the limit before anything is read for it, and turns the peers a message lists
//! into [`PeerInfo`]s, dropping what does not decode and keeping at most a bounded number
//! (a response with 10,000 closer peers costs no more than one with a hundred).

use prost::Message as _;
use strata_core::{Multiaddr, PeerId};

/// The message types, with their wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MessageType {
    /// Store a record.
    PutValue = 0,
    /// Ask for a record (and closer peers).
    GetValue = 1,
    /// Announce that the sender provides a key.
    AddProvider = 2,
    /// Ask for providers of a key (and closer peers).
    GetProviders = 3,
    /// Ask for the peers closest to a key.
    FindNode = 4,
    /// Deprecated liveness check: answered with an empty PING.
    Ping = 5,
}

/// How the sender is connected to a listed peer (informational).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ConnectionType {
    /// Not connected, no recent connection.
    NotConnected = 0,
    /// Connected now.
    Connected = 1,
    /// Connected recently.
    CanConnect = 2,
    /// Tried and failed recently.
    CannotConnect = 3,
}

/// A peer as a message lists it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    /// The peer ID's bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Its addresses, as multiaddr bytes.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub addrs: Vec<Vec<u8>>,
    /// How the sender is connected to it.
    #[prost(enumeration = "ConnectionType", tag = "3")]
    pub connection: i32,
}

/// A record, as go-libp2p-record's `Record` (fields 3 and 4, author and signature, are
/// obsolete and skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// The record's key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// Its value.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// When the sender received it (RFC 3339), set by the peer that stores it.
    #[prost(string, tag = "5")]
    pub time_received: String,
}

/// The Kademlia message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    /// What kind of message.
    #[prost(enumeration = "MessageType", tag = "1")]
    pub r#type: i32,
    /// Obsolete (go sends 0).
    #[prost(int32, tag = "10")]
    pub cluster_level_raw: i32,
    /// The key asked about or stored under.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// A record (PUT_VALUE, and GET_VALUE answers).
    #[prost(message, optional, tag = "3")]
    pub record: Option<Record>,
    /// Peers closer to the key (answers).
    #[prost(message, repeated, tag = "8")]
    pub closer_peers: Vec<Peer>,
    /// Providers of the key (GET_PROVIDERS answers, ADD_PROVIDER requests).
    #[prost(message, repeated, tag = "9")]
    pub provider_peers: Vec<Peer>,
}

impl Message {
    /// A request of `kind` about `key`.
    pub fn request(kind: MessageType, key: Vec<u8>) -> Self {
        Message {
            r#type: kind as i32,
            key,
            ..Message::default()
        }
    }

    /// The message type, if it is one we know.
    pub fn kind(&self) -> Option<MessageType> {
        MessageType::try_from(self.r#type).ok()
    }
}

/// A peer as it is used: its ID and the addresses that decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer.
    pub id: PeerId,
    /// Its addresses.
    pub addrs: Vec<Multiaddr>,
}

impl PeerInfo {
    /// The wire form, with `connection` as the sender's connectedness.
    pub fn to_wire(&self, connection: ConnectionType) -> Peer {
        Peer {
            id: self.id.to_bytes(),
            addrs: self.addrs.iter().map(|a| a.to_vec()).collect(),
            connection: connection as i32,
        }
    }
}

/// Most peers taken from one message's list; the rest is ignored.
pub const MAX_PEERS_PER_MESSAGE: usize = 64;
/// Most addresses taken for one listed peer; the rest is ignored.
pub const MAX_ADDRS_PER_PEER: usize = 32;

/// The peers a message lists, as [`PeerInfo`]s: entries whose ID does not decode are
/// skipped, as are addresses that do not; at most [`MAX_PEERS_PER_MESSAGE`] peers of at
/// most [`MAX_ADDRS_PER_PEER`] addresses each, duplicates merged.
pub fn peers_of(list: &[Peer]) -> Vec<PeerInfo> {
    let mut out: Vec<PeerInfo> = Vec::new();
    for p in list {
        if out.len() >= MAX_PEERS_PER_MESSAGE {
            break;
        }
        let Ok(id) = PeerId::from_bytes(&p.id) else {
            continue;
        };
        let addrs: Vec<Multiaddr> = p
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .filter_map(|a| without_own_p2p(a, &id))
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        match out.iter_mut().find(|o| o.id == id) {
            Some(o) => {
                for a in addrs {
                    if o.addrs.len() < MAX_ADDRS_PER_PEER && !o.addrs.contains(&a) {
                        o.addrs.push(a);
                    }
                }
            }
            None => out.push(PeerInfo { id, addrs }),
        }
    }
    out
}

/// `addr` without a trailing `/p2p/<id>` of `peer` (rust-libp2p sends addresses with
/// it, go without); `None` for an address that names another peer.
fn without_own_p2p(mut addr: Multiaddr, peer: &PeerId) -> Option<Multiaddr> {
    match addr.iter().last() {
        Some(strata_core::Protocol::P2p(id)) if &id == peer => {
            addr.pop();
            Some(addr)
        }
        Some(strata_core::Protocol::P2p(_)) => None,
        _ => Some(addr),
    }
}

/// Why bytes are not a Kademlia message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than the limit.
    #[error("kademlia message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid uvarint.
    #[error("invalid kademlia length prefix")]
    InvalidLength,
    /// The bytes end before the message does.
    #[error("truncated kademlia message")]
    Truncated,
    /// Not a valid protobuf `Message`.
    #[error("invalid kademlia protobuf: {0}")]
    Protobuf(String),
    /// A message type we do not know.
    #[error("unknown kademlia message type {0}")]
    UnknownType(i32),
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError::Protobuf(e.to_string())
    }
}

/// Encodes `msg` with its length prefix.
pub fn encode(msg: &Message) -> Vec<u8> {
    msg.encode_length_delimited_to_vec()
}

/// Decodes one message from the start of `buf`, its length checked against `max` first:
/// the message and the bytes it took.
pub fn decode(buf: &[u8], max: usize) -> Result<(Message, usize), DecodeError> {
    let (len, rest) = unsigned_varint_decode(buf).ok_or(DecodeError::InvalidLength)?;
    if len > max as u64 {
        return Err(DecodeError::TooLarge { len, max });
    }
    let used = buf.len() - rest.len();
    let body = rest.get(..len as usize).ok_or(DecodeError::Truncated)?;
    let msg = decode_body(body)?;
    Ok((msg, used + len as usize))
}

/// Decodes a message body (no prefix) and checks its type. The peer lists are read
/// bounded as they are decoded: past [`MAX_PEERS_PER_MESSAGE`] entries a list's further
/// entries are skipped, as are a peer's addresses past [`MAX_ADDRS_PER_PEER`] and any
/// address longer than [`MAX_ADDR_LEN`], so that what a message decodes into stays
/// within a small constant of its own size (a generic decoder would turn a message of
/// one-byte addresses into sixteen times its size in heap).
pub fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    let msg = decode_message(body)?;
    if msg.kind().is_none() {
        return Err(DecodeError::UnknownType(msg.r#type));
    }
    Ok(msg)
}

/// The longest address taken from a listed peer (a multiaddr of a few protocols is under
/// a hundred bytes).
pub const MAX_ADDR_LEN: usize = 512;

use strata_host::framing::protobuf::{
    decode_key, decode_varint, delimited, expect_wire as expect, skip, ProtobufError, WireType,
};

impl From<ProtobufError> for DecodeError {
    fn from(e: ProtobufError) -> Self {
        DecodeError::Protobuf(e.0)
    }
}

fn decode_message(mut buf: &[u8]) -> Result<Message, DecodeError> {
    let mut msg = Message::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        match tag {
            1 => {
                expect(wire, WireType::Varint)?;
                msg.r#type = decode_varint(&mut buf)? as i32;
            }
            10 => {
                expect(wire, WireType::Varint)?;
                msg.cluster_level_raw = decode_varint(&mut buf)? as i32;
            }
            2 => {
                expect(wire, WireType::LengthDelimited)?;
                msg.key = delimited(&mut buf)?.to_vec();
            }
            3 => {
                expect(wire, WireType::LengthDelimited)?;
                let field = delimited(&mut buf)?;
                let mut record = msg.record.take().unwrap_or_default();
                record.merge(field)?;
                msg.record = Some(record);
            }
            8 | 9 => {
                expect(wire, WireType::LengthDelimited)?;
                let field = delimited(&mut buf)?;
                let list = if tag == 8 {
                    &mut msg.closer_peers
                } else {
                    &mut msg.provider_peers
                };
                if list.len() < MAX_PEERS_PER_MESSAGE {
                    list.push(decode_peer(field)?);
                }
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(msg)
}

fn decode_peer(mut buf: &[u8]) -> Result<Peer, DecodeError> {
    let mut peer = Peer::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        match tag {
            1 => {
                expect(wire, WireType::LengthDelimited)?;
                peer.id = delimited(&mut buf)?.to_vec();
            }
            2 => {
                expect(wire, WireType::LengthDelimited)?;
                let addr = delimited(&mut buf)?;
                if peer.addrs.len() < MAX_ADDRS_PER_PEER && addr.len() <= MAX_ADDR_LEN {
                    peer.addrs.push(addr.to_vec());
                }
            }
            3 => {
                expect(wire, WireType::Varint)?;
                peer.connection = decode_varint(&mut buf)? as i32;
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(peer)
}

/// A uvarint at the start of `buf` (at most 9 bytes), and what follows it.
fn unsigned_varint_decode(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, b) in buf.iter().take(9).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // Minimal encoding: no trailing zero byte after the first.
            if i > 0 && *b == 0 {
                return None;
            }
            return Some((value, &buf[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u64) -> PeerId {
        strata_core::identity::peer_id_from_seed(seed)
    }

    #[test]
    fn messages_round_trip() {
        let mut msg = Message::request(MessageType::GetValue, b"/pk/abc".to_vec());
        msg.record = Some(Record {
            key: b"/pk/abc".to_vec(),
            value: vec![1, 2, 3],
            time_received: "2026-12-05T00:00:00Z".into(),
        });
        msg.closer_peers.push(
            PeerInfo {
                id: peer(1),
                addrs: vec!["/ip4/1.2.3.4/tcp/5".parse().unwrap()],
            }
            .to_wire(ConnectionType::Connected),
        );
        let bytes = encode(&msg);
        let (back, used) = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, msg);
        assert_eq!(peers_of(&back.closer_peers)[0].id, peer(1));
    }

    #[test]
    fn limits_and_junk_are_typed_errors() {
        let msg = Message::request(MessageType::FindNode, vec![7; 100]);
        let bytes = encode(&msg);
        assert!(matches!(
            decode(&bytes, 50),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], 1000),
            Err(DecodeError::Truncated)
        );
        assert_eq!(decode(&[0xff; 12], 1000), Err(DecodeError::InvalidLength));
        assert_eq!(decode(&[0x80, 0x00], 1000), Err(DecodeError::InvalidLength));
        let mut unknown = Message::request(MessageType::Ping, vec![]);
        unknown.r#type = 42;
        assert_eq!(
            decode(&encode(&unknown), 1000).map(|_| ()),
            Err(DecodeError::UnknownType(42))
        );
        assert!(matches!(
            decode(&[3, 0xff, 0xff, 0xff], 1000),
            Err(DecodeError::Protobuf(_))
        ));
    }

    #[test]
    fn an_address_naming_its_peer_is_stripped_and_one_naming_another_dropped() {
        let own: Multiaddr = format!("/ip4/1.2.3.4/tcp/5/p2p/{}", peer(1))
            .parse()
            .unwrap();
        let other: Multiaddr = format!("/ip4/1.2.3.4/tcp/6/p2p/{}", peer(2))
            .parse()
            .unwrap();
        let wire = Peer {
            id: peer(1).to_bytes(),
            addrs: vec![own.to_vec(), other.to_vec()],
            connection: 0,
        };
        let got = peers_of(&[wire]);
        assert_eq!(
            got[0].addrs,
            vec!["/ip4/1.2.3.4/tcp/5".parse::<Multiaddr>().unwrap()]
        );
    }

    #[test]
    fn a_message_of_tiny_fields_decodes_into_a_bounded_size() {
        // 1 MiB of one-byte addresses in peers of 4,000 addresses each.
        let one = Peer {
            id: peer(1).to_bytes(),
            addrs: vec![vec![0]; 4000],
            connection: 0,
        };
        let mut msg = Message::request(MessageType::FindNode, vec![1]);
        while msg.encoded_len() < 1 << 20 {
            msg.closer_peers.push(one.clone());
        }
        let body = msg.encode_to_vec();
        let back = decode_body(&body).unwrap();
        assert_eq!(back.closer_peers.len(), MAX_PEERS_PER_MESSAGE);
        assert!(back
            .closer_peers
            .iter()
            .all(|p| p.addrs.len() == MAX_ADDRS_PER_PEER));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok((msg, used)) = decode(&bytes, 1 << 20) {
                proptest::prop_assert!(used <= bytes.len());
                proptest::prop_assert!(msg.closer_peers.len() <= MAX_PEERS_PER_MESSAGE);
                let _ = peers_of(&msg.closer_peers);
            }
            let _ = decode_body(&bytes);
        }

        #[test]
        fn what_we_encode_decodes_the_same(
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            kind in 0i32..6,
            peers in 0usize..10,
        ) {
            let mut msg = Message::request(MessageType::try_from(kind).unwrap(), key.clone());
            msg.record = Some(Record { key, value, time_received: String::new() });
            for i in 0..peers {
                msg.closer_peers.push(Peer { id: vec![i as u8; 3], addrs: vec![vec![4, 1, 2, 3, 4]], connection: 1 });
            }
            let bytes = encode(&msg);
            let (back, used) = decode(&bytes, 1 << 20).unwrap();
            proptest::prop_assert_eq!(used, bytes.len());
            proptest::prop_assert_eq!(back, msg);
        }
    }

    #[test]
    fn listed_peers_are_bounded_and_cleaned() {
        let mut list = Vec::new();
        // Junk IDs and addresses, then 10,000 peers.
        list.push(Peer {
            id: vec![1, 2, 3],
            addrs: vec![],
            connection: 0,
        });
        for i in 0..10_000u64 {
            list.push(Peer {
                id: peer(i % 100).to_bytes(),
                addrs: vec![vec![0xff, 0xff], b"junk".to_vec()],
                connection: 7,
            });
        }
        let peers = peers_of(&list);
        assert!(peers.len() <= MAX_PEERS_PER_MESSAGE);
        assert!(peers.iter().all(|p| p.addrs.is_empty()));
        // Duplicates were merged: 64 distinct peers.
        let mut ids: Vec<_> = peers.iter().map(|p| p.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), peers.len());
    }
}
