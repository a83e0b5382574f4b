//! The pubsub wire format (`rpc.proto` of the libp2p pubsub spec) and its codec, with no
//! I/O: each RPC is `uvarint(length) ‖ protobuf RPC`.
//!
//! Decoding is hand-written and bounded as it goes: past the caps in [`DecodeLimits`]
//! further entries of a list are skipped without being allocated (and counted in
//! [`Rpc::skipped`]), so what an RPC decodes into stays within a small constant of its
//! size however it is shaped. Messages' fields are copied out of the frame, so a message
//! kept in the message cache does not keep the rest of its RPC alive.

use bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint};
use strata_host::framing::protobuf::{
    decode_key, decode_varint, delimited, expect_wire, skip, ProtobufError, WireType,
};

/// The prefix of the bytes a message's signature covers.
pub const SIGNING_PREFIX: &[u8] = b"libp2p-pubsub:";

/// One RPC: subscriptions, messages and control, any of them empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rpc {
    /// Topics the sender joins or leaves.
    pub subscriptions: Vec<SubOpts>,
    /// Messages published or forwarded.
    pub publish: Vec<RawMessage>,
    /// GossipSub control messages.
    pub control: Option<Control>,
    /// Entries the decoder skipped because a list was past its cap (not on the wire).
    pub skipped: usize,
}

/// A subscription change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubOpts {
    /// Joins (`true`) or leaves.
    pub subscribe: bool,
    /// The topic.
    pub topic: String,
}

/// A message as it travels: each optional field keeps whether it was present, because
/// the signature covers the encoding of exactly what the author set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// The author's peer ID bytes.
    pub from: Option<Bytes>,
    /// The payload.
    pub data: Option<Bytes>,
    /// The author's sequence number, 8 bytes big-endian.
    pub seqno: Option<Bytes>,
    /// The topic.
    pub topic: String,
    /// The author's signature.
    pub signature: Option<Bytes>,
    /// The author's public key, when its peer ID does not embed it.
    pub key: Option<Bytes>,
}

/// GossipSub control messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// "I have these messages."
    pub ihave: Vec<IHave>,
    /// "Send me these messages."
    pub iwant: Vec<IWant>,
    /// "Add me to your mesh of this topic."
    pub graft: Vec<Graft>,
    /// "I removed you from my mesh of this topic."
    pub prune: Vec<Prune>,
    /// "Do not send me these messages" (v1.2).
    pub idontwant: Vec<IDontWant>,
}

impl Control {
    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        self.ihave.is_empty()
            && self.iwant.is_empty()
            && self.graft.is_empty()
            && self.prune.is_empty()
            && self.idontwant.is_empty()
    }
}

/// IHAVE: message IDs of a topic the sender has in its cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IHave {
    /// The topic.
    pub topic: String,
    /// The message IDs.
    pub ids: Vec<Bytes>,
}

/// IWANT: message IDs the sender asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IWant {
    /// The message IDs.
    pub ids: Vec<Bytes>,
}

/// GRAFT: the sender added us to its mesh of a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graft {
    /// The topic.
    pub topic: String,
}

/// PRUNE: the sender removed us from its mesh of a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prune {
    /// The topic.
    pub topic: String,
    /// Peer exchange: other peers of the topic (v1.1).
    pub peers: Vec<PxPeer>,
    /// Seconds before we may GRAFT again (v1.1).
    pub backoff: Option<u64>,
}

/// A peer offered in peer exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PxPeer {
    /// Its peer ID bytes.
    pub peer_id: Option<Bytes>,
    /// Its signed peer record (an envelope), if the sender had one.
    pub signed_peer_record: Option<Bytes>,
}

/// IDONTWANT: message IDs the sender already has (v1.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IDontWant {
    /// The message IDs.
    pub ids: Vec<Bytes>,
}

/// The most entries of each kind one RPC may make us hold; the rest is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Subscription changes.
    pub subscriptions: usize,
    /// Messages.
    pub messages: usize,
    /// Message IDs over all IHAVEs.
    pub ihave_ids: usize,
    /// Message IDs over all IWANTs.
    pub iwant_ids: usize,
    /// Message IDs over all IDONTWANTs.
    pub idontwant_ids: usize,
    /// GRAFTs and PRUNEs each.
    pub grafts: usize,
    /// Peers over all PRUNEs' peer exchange.
    pub px_peers: usize,
    /// The longest topic name.
    pub topic_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            subscriptions: 1_000,
            messages: 5_000,
            ihave_ids: 5_000,
            iwant_ids: 5_000,
            idontwant_ids: 5_000,
            grafts: 1_000,
            px_peers: 64,
            topic_len: 1_024,
        }
    }
}

/// Why bytes are not an RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announces more than the limit.
    #[error("pubsub RPC of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Not a valid protobuf RPC.
    #[error("invalid pubsub RPC: {0}")]
    Protobuf(String),
    /// A topic name that is not UTF-8 or longer than the limit.
    #[error("invalid topic name")]
    InvalidTopic,
}

impl From<ProtobufError> for DecodeError {
    fn from(e: ProtobufError) -> Self {
        DecodeError::Protobuf(e.0)
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError::Protobuf(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Decodes an RPC body (no length prefix).
pub fn decode_rpc(body: &[u8], limits: &DecodeLimits) -> Result<Rpc, DecodeError> {
    let mut buf = body;
    let mut rpc = Rpc::default();
    let mut counts = Counts::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        match tag {
            1 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                let field = delimited(&mut buf)?;
                if rpc.subscriptions.len() < limits.subscriptions {
                    rpc.subscriptions.push(decode_subopts(field, limits)?);
                } else {
                    rpc.skipped += 1;
                }
            }
            2 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                let field = delimited(&mut buf)?;
                if rpc.publish.len() < limits.messages {
                    rpc.publish.push(decode_message(field, limits)?);
                } else {
                    rpc.skipped += 1;
                }
            }
            3 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                let field = delimited(&mut buf)?;
                let mut control = rpc.control.take().unwrap_or_default();
                decode_control(field, limits, &mut control, &mut counts, &mut rpc.skipped)?;
                rpc.control = Some(control);
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(rpc)
}

#[derive(Default)]
struct Counts {
    ihave_ids: usize,
    iwant_ids: usize,
    idontwant_ids: usize,
    px_peers: usize,
}

fn topic(field: &[u8], limits: &DecodeLimits) -> Result<String, DecodeError> {
    if field.len() > limits.topic_len {
        return Err(DecodeError::InvalidTopic);
    }
    std::str::from_utf8(field)
        .map(str::to_owned)
        .map_err(|_| DecodeError::InvalidTopic)
}

fn decode_subopts(mut buf: &[u8], limits: &DecodeLimits) -> Result<SubOpts, DecodeError> {
    let mut sub = SubOpts::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        match tag {
            1 => {
                expect_wire(wire, WireType::Varint)?;
                sub.subscribe = decode_varint(&mut buf)? != 0;
            }
            2 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                sub.topic = topic(delimited(&mut buf)?, limits)?;
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(sub)
}

fn owned(field: &[u8]) -> Bytes {
    Bytes::copy_from_slice(field)
}

fn decode_message(mut buf: &[u8], limits: &DecodeLimits) -> Result<RawMessage, DecodeError> {
    let mut msg = RawMessage::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        if (1..=6).contains(&tag) {
            expect_wire(wire, WireType::LengthDelimited)?;
            let field = delimited(&mut buf)?;
            match tag {
                1 => msg.from = Some(owned(field)),
                2 => msg.data = Some(owned(field)),
                3 => msg.seqno = Some(owned(field)),
                4 => msg.topic = topic(field, limits)?,
                5 => msg.signature = Some(owned(field)),
                _ => msg.key = Some(owned(field)),
            }
        } else {
            skip(wire, tag, &mut buf)?;
        }
    }
    Ok(msg)
}

/// Message IDs of one IHAVE/IWANT/IDONTWANT entry, field `id_tag`, at most `room` of
/// them kept (`room` counts down); the entry's topic (field 1) where it has one.
fn decode_ids(
    mut buf: &[u8],
    id_tag: u32,
    room: &mut usize,
    skipped: &mut usize,
    limits: &DecodeLimits,
) -> Result<(String, Vec<Bytes>), DecodeError> {
    let mut ids = Vec::new();
    let mut name = String::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        if tag == id_tag {
            expect_wire(wire, WireType::LengthDelimited)?;
            let id = delimited(&mut buf)?;
            if *room > 0 {
                *room -= 1;
                ids.push(owned(id));
            } else {
                *skipped += 1;
            }
        } else if tag == 1 && id_tag == 2 {
            expect_wire(wire, WireType::LengthDelimited)?;
            name = topic(delimited(&mut buf)?, limits)?;
        } else {
            skip(wire, tag, &mut buf)?;
        }
    }
    Ok((name, ids))
}

fn decode_control(
    mut buf: &[u8],
    limits: &DecodeLimits,
    control: &mut Control,
    counts: &mut Counts,
    skipped: &mut usize,
) -> Result<(), DecodeError> {
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        if !(1..=5).contains(&tag) {
            skip(wire, tag, &mut buf)?;
            continue;
        }
        expect_wire(wire, WireType::LengthDelimited)?;
        let field = delimited(&mut buf)?;
        match tag {
            1 => {
                let mut room = limits.ihave_ids - counts.ihave_ids;
                let (topic, ids) = decode_ids(field, 2, &mut room, skipped, limits)?;
                counts.ihave_ids = limits.ihave_ids - room;
                if !ids.is_empty() {
                    control.ihave.push(IHave { topic, ids });
                }
            }
            2 | 5 => {
                let (limit, count) = if tag == 2 {
                    (limits.iwant_ids, &mut counts.iwant_ids)
                } else {
                    (limits.idontwant_ids, &mut counts.idontwant_ids)
                };
                let mut room = limit - *count;
                let (_, ids) = decode_ids(field, 1, &mut room, skipped, limits)?;
                *count = limit - room;
                if ids.is_empty() {
                    continue;
                }
                if tag == 2 {
                    control.iwant.push(IWant { ids });
                } else {
                    control.idontwant.push(IDontWant { ids });
                }
            }
            3 => {
                if control.graft.len() < limits.grafts {
                    let graft = decode_graft(field, limits)?;
                    control.graft.push(graft);
                } else {
                    *skipped += 1;
                }
            }
            _ => {
                if control.prune.len() < limits.grafts {
                    let prune = decode_prune(field, limits, counts, skipped)?;
                    control.prune.push(prune);
                } else {
                    *skipped += 1;
                }
            }
        }
    }
    Ok(())
}

fn decode_graft(mut buf: &[u8], limits: &DecodeLimits) -> Result<Graft, DecodeError> {
    let mut graft = Graft::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        if tag == 1 {
            expect_wire(wire, WireType::LengthDelimited)?;
            graft.topic = topic(delimited(&mut buf)?, limits)?;
        } else {
            skip(wire, tag, &mut buf)?;
        }
    }
    Ok(graft)
}

fn decode_prune(
    mut buf: &[u8],
    limits: &DecodeLimits,
    counts: &mut Counts,
    skipped: &mut usize,
) -> Result<Prune, DecodeError> {
    let mut prune = Prune::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        match tag {
            1 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                prune.topic = topic(delimited(&mut buf)?, limits)?;
            }
            2 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                let field = delimited(&mut buf)?;
                if counts.px_peers < limits.px_peers {
                    counts.px_peers += 1;
                    prune.peers.push(decode_px(field)?);
                } else {
                    *skipped += 1;
                }
            }
            3 => {
                expect_wire(wire, WireType::Varint)?;
                prune.backoff = Some(decode_varint(&mut buf)?);
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(prune)
}

fn decode_px(mut buf: &[u8]) -> Result<PxPeer, DecodeError> {
    let mut px = PxPeer::default();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        match tag {
            1 | 2 => {
                expect_wire(wire, WireType::LengthDelimited)?;
                let field = owned(delimited(&mut buf)?);
                if tag == 1 {
                    px.peer_id = Some(field);
                } else {
                    px.signed_peer_record = Some(field);
                }
            }
            _ => skip(wire, tag, &mut buf)?,
        }
    }
    Ok(px)
}

// ---------------------------------------------------------------------------------------
// Encoding (fields in tag order, as go-libp2p's generated code writes them: a signature
// is checked against a re-encoding, so the order is part of the wire)

fn bytes_field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

impl RawMessage {
    /// The encoded length of the fields a signature covers (1 to 4).
    fn signed_len(&self) -> usize {
        let opt = |tag, f: &Option<Bytes>| f.as_ref().map_or(0, |b| bytes_field_len(tag, b.len()));
        opt(1, &self.from)
            + opt(2, &self.data)
            + opt(3, &self.seqno)
            + bytes_field_len(4, self.topic.len())
    }

    /// The encoded length of the whole message.
    pub fn encoded_len(&self) -> usize {
        let opt = |tag, f: &Option<Bytes>| f.as_ref().map_or(0, |b| bytes_field_len(tag, b.len()));
        self.signed_len() + opt(5, &self.signature) + opt(6, &self.key)
    }

    fn put_signed_fields(&self, buf: &mut Vec<u8>) {
        for (tag, field) in [(1, &self.from), (2, &self.data), (3, &self.seqno)] {
            if let Some(b) = field {
                put_bytes(buf, tag, b);
            }
        }
        put_bytes(buf, 4, self.topic.as_bytes());
    }

    fn put(&self, buf: &mut Vec<u8>) {
        self.put_signed_fields(buf);
        for (tag, field) in [(5, &self.signature), (6, &self.key)] {
            if let Some(b) = field {
                put_bytes(buf, tag, b);
            }
        }
    }

    /// What the author signs: [`SIGNING_PREFIX`] ‖ the message encoded without its
    /// signature and key.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(SIGNING_PREFIX.len() + self.signed_len());
        buf.put_slice(SIGNING_PREFIX);
        self.put_signed_fields(&mut buf);
        buf
    }
}

fn ids_len(tag: u32, ids: &[Bytes]) -> usize {
    ids.iter().map(|i| bytes_field_len(tag, i.len())).sum()
}

fn put_ids(buf: &mut Vec<u8>, tag: u32, ids: &[Bytes]) {
    for id in ids {
        put_bytes(buf, tag, id);
    }
}

impl Prune {
    fn body_len(&self) -> usize {
        bytes_field_len(1, self.topic.len())
            + self
                .peers
                .iter()
                .map(|p| bytes_field_len(2, p.body_len()))
                .sum::<usize>()
            + self.backoff.map_or(0, |b| 1 + encoded_len_varint(b))
    }
}

impl PxPeer {
    fn body_len(&self) -> usize {
        self.peer_id
            .as_ref()
            .map_or(0, |b| bytes_field_len(1, b.len()))
            + self
                .signed_peer_record
                .as_ref()
                .map_or(0, |b| bytes_field_len(2, b.len()))
    }
}

impl Control {
    fn body_len(&self) -> usize {
        let ihave: usize = self
            .ihave
            .iter()
            .map(|h| bytes_field_len(1, bytes_field_len(1, h.topic.len()) + ids_len(2, &h.ids)))
            .sum();
        let iwant: usize = self
            .iwant
            .iter()
            .map(|w| bytes_field_len(2, ids_len(1, &w.ids)))
            .sum();
        let graft: usize = self
            .graft
            .iter()
            .map(|g| bytes_field_len(3, bytes_field_len(1, g.topic.len())))
            .sum();
        let prune: usize = self
            .prune
            .iter()
            .map(|p| bytes_field_len(4, p.body_len()))
            .sum();
        let idontwant: usize = self
            .idontwant
            .iter()
            .map(|d| bytes_field_len(5, ids_len(1, &d.ids)))
            .sum();
        ihave + iwant + graft + prune + idontwant
    }

    fn put(&self, buf: &mut Vec<u8>) {
        for h in &self.ihave {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(
                (bytes_field_len(1, h.topic.len()) + ids_len(2, &h.ids)) as u64,
                buf,
            );
            put_bytes(buf, 1, h.topic.as_bytes());
            put_ids(buf, 2, &h.ids);
        }
        for w in &self.iwant {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(ids_len(1, &w.ids) as u64, buf);
            put_ids(buf, 1, &w.ids);
        }
        for g in &self.graft {
            encode_key(3, WireType::LengthDelimited, buf);
            encode_varint(bytes_field_len(1, g.topic.len()) as u64, buf);
            put_bytes(buf, 1, g.topic.as_bytes());
        }
        for p in &self.prune {
            encode_key(4, WireType::LengthDelimited, buf);
            encode_varint(p.body_len() as u64, buf);
            put_bytes(buf, 1, p.topic.as_bytes());
            for px in &p.peers {
                encode_key(2, WireType::LengthDelimited, buf);
                encode_varint(px.body_len() as u64, buf);
                if let Some(id) = &px.peer_id {
                    put_bytes(buf, 1, id);
                }
                if let Some(r) = &px.signed_peer_record {
                    put_bytes(buf, 2, r);
                }
            }
            if let Some(b) = p.backoff {
                encode_key(3, WireType::Varint, buf);
                encode_varint(b, buf);
            }
        }
        for d in &self.idontwant {
            encode_key(5, WireType::LengthDelimited, buf);
            encode_varint(ids_len(1, &d.ids) as u64, buf);
            put_ids(buf, 1, &d.ids);
        }
    }
}

impl Rpc {
    /// The encoded length of the body (no prefix).
    pub fn encoded_len(&self) -> usize {
        let subs: usize = self
            .subscriptions
            .iter()
            .map(|s| bytes_field_len(1, 2 + bytes_field_len(2, s.topic.len())))
            .sum();
        let msgs: usize = self
            .publish
            .iter()
            .map(|m| bytes_field_len(2, m.encoded_len()))
            .sum();
        let control = self
            .control
            .as_ref()
            .map_or(0, |c| bytes_field_len(3, c.body_len()));
        subs + msgs + control
    }

    /// The RPC with its uvarint length prefix, ready to write.
    pub fn encode(&self) -> Bytes {
        let len = self.encoded_len();
        let mut buf = Vec::with_capacity(encoded_len_varint(len as u64) + len);
        encode_varint(len as u64, &mut buf);
        for s in &self.subscriptions {
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint((2 + bytes_field_len(2, s.topic.len())) as u64, &mut buf);
            encode_key(1, WireType::Varint, &mut buf);
            encode_varint(u64::from(s.subscribe), &mut buf);
            put_bytes(&mut buf, 2, s.topic.as_bytes());
        }
        for m in &self.publish {
            encode_key(2, WireType::LengthDelimited, &mut buf);
            encode_varint(m.encoded_len() as u64, &mut buf);
            m.put(&mut buf);
        }
        if let Some(c) = &self.control {
            encode_key(3, WireType::LengthDelimited, &mut buf);
            encode_varint(c.body_len() as u64, &mut buf);
            c.put(&mut buf);
        }
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rpc {
        Rpc {
            subscriptions: vec![
                SubOpts {
                    subscribe: true,
                    topic: "a".into(),
                },
                SubOpts {
                    subscribe: false,
                    topic: "bb".into(),
                },
            ],
            publish: vec![RawMessage {
                from: Some(Bytes::from_static(b"from")),
                data: Some(Bytes::from_static(b"hello")),
                seqno: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1])),
                topic: "a".into(),
                signature: Some(Bytes::from_static(b"sig")),
                key: None,
            }],
            control: Some(Control {
                ihave: vec![IHave {
                    topic: "a".into(),
                    ids: vec![Bytes::from_static(b"id1"), Bytes::from_static(b"id2")],
                }],
                iwant: vec![IWant {
                    ids: vec![Bytes::from_static(b"id3")],
                }],
                graft: vec![Graft { topic: "a".into() }],
                prune: vec![Prune {
                    topic: "b".into(),
                    peers: vec![PxPeer {
                        peer_id: Some(Bytes::from_static(b"p")),
                        signed_peer_record: None,
                    }],
                    backoff: Some(60),
                }],
                idontwant: vec![IDontWant {
                    ids: vec![Bytes::from_static(b"id4")],
                }],
            }),
            skipped: 0,
        }
    }

    fn body(rpc: &Rpc) -> Bytes {
        let framed = rpc.encode();
        let mut b: &[u8] = &framed;
        let len = decode_varint(&mut b).unwrap() as usize;
        assert_eq!(len, b.len());
        assert_eq!(len, rpc.encoded_len());
        Bytes::copy_from_slice(b)
    }

    #[test]
    fn an_rpc_round_trips() {
        let rpc = sample();
        let back = decode_rpc(&body(&rpc), &DecodeLimits::default()).unwrap();
        assert_eq!(back, rpc);
    }

    #[test]
    fn lists_past_their_caps_are_skipped_and_counted() {
        let mut rpc = sample();
        rpc.subscriptions = (0..10)
            .map(|i| SubOpts {
                subscribe: true,
                topic: format!("t{i}"),
            })
            .collect();
        let c = rpc.control.as_mut().unwrap();
        c.ihave[0].ids = (0..10u8).map(|i| Bytes::from(vec![i])).collect();
        let limits = DecodeLimits {
            subscriptions: 3,
            ihave_ids: 4,
            ..DecodeLimits::default()
        };
        let back = decode_rpc(&body(&rpc), &limits).unwrap();
        assert_eq!(back.subscriptions.len(), 3);
        assert_eq!(back.control.as_ref().unwrap().ihave[0].ids.len(), 4);
        assert_eq!(back.skipped, 7 + 6);
    }

    #[test]
    fn the_signed_bytes_are_the_prefix_and_fields_one_to_four() {
        let msg = sample().publish.remove(0);
        let signed = msg.signing_bytes();
        assert!(signed.starts_with(SIGNING_PREFIX));
        let mut unsigned = msg.clone();
        unsigned.signature = None;
        unsigned.key = None;
        let mut expected = SIGNING_PREFIX.to_vec();
        unsigned.put(&mut expected);
        assert_eq!(signed, expected);
        // A topic is always written, even empty (go-libp2p's is a required field).
        let empty = RawMessage::default();
        assert_eq!(
            &empty.signing_bytes()[SIGNING_PREFIX.len()..],
            &[0x22, 0x00]
        );
    }

    #[test]
    fn invalid_topics_and_truncations_are_errors() {
        // A subscription with a topic that is not UTF-8.
        let bad = [0x0a, 0x04, 0x12, 0x02, 0xff, 0xfe];
        assert_eq!(
            decode_rpc(&bad, &DecodeLimits::default()),
            Err(DecodeError::InvalidTopic)
        );
        let full = body(&sample());
        for cut in 1..full.len() {
            // Every prefix either decodes or is an error; none panics.
            let _ = decode_rpc(&full[..cut], &DecodeLimits::default());
        }
        // A wrong wire type for a field.
        assert!(matches!(
            decode_rpc(&[0x08, 0x01], &DecodeLimits::default()),
            Err(DecodeError::Protobuf(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_rpc(&bytes, &DecodeLimits::default());
        }
    }
}
