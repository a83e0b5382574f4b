//! multistream-select 1.0 messages as pure functions: no I/O, so unit tests and fuzzers
//! can drive them directly.
//!
//! Each message is `uvarint(length) ‖ UTF-8 text ‖ "\n"`, the length counting the newline.

/// The protocol ID of multistream-select 1.0, sent as the first message by both sides.
pub const HEADER: &str = "/multistream/1.0.0";
/// The refusal of a proposed protocol.
pub const NA: &str = "na";
/// A request for the list of supported protocols.
pub const LS: &str = "ls";

/// The largest message we accept, newline included. Protocol IDs are short; go-libp2p
/// and rust-libp2p both stay far below this.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// One multistream-select message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `/multistream/1.0.0`.
    Header,
    /// A protocol proposal, or its confirmation.
    Protocol(String),
    /// `na`: the proposal is refused.
    NotAvailable,
    /// `ls`: list the supported protocols.
    ListProtocols,
    /// The answer to `ls`: the supported protocols.
    Protocols(Vec<String>),
}

/// A message that breaks the multistream-select rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The length prefix is not a valid uvarint of at most two bytes.
    #[error("malformed length prefix")]
    BadLength,
    /// The length prefix announces more than [`MAX_MESSAGE_LEN`] bytes.
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLong(usize),
    /// The message does not end with a newline.
    #[error("message does not end with a newline")]
    NoNewline,
    /// The message is not UTF-8 text, or is empty, or holds a newline of its own.
    #[error("message is not a single line of UTF-8 text")]
    BadText,
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Header => encode_line(HEADER.as_bytes(), out),
        Message::Protocol(p) => encode_line(p.as_bytes(), out),
        Message::NotAvailable => encode_line(NA.as_bytes(), out),
        Message::ListProtocols => encode_line(LS.as_bytes(), out),
        Message::Protocols(list) => {
            // The `ls` answer is one message whose body is the protocols, each encoded as
            // a message of its own, followed by a newline.
            let mut body = Vec::new();
            for p in list {
                encode_line(p.as_bytes(), &mut body);
            }
            body.push(b'\n');
            encode_uvarint(body.len(), out);
            out.extend_from_slice(&body);
        }
    }
}

fn encode_line(text: &[u8], out: &mut Vec<u8>) {
    encode_uvarint(text.len() + 1, out);
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Appends `n` as an unsigned varint (multiformats unsigned-varint, LEB128).
pub fn encode_uvarint(n: usize, out: &mut Vec<u8>) {
    let mut buf = unsigned_varint::encode::usize_buffer();
    out.extend_from_slice(unsigned_varint::encode::usize(n, &mut buf));
}

/// Reads a length prefix from the start of `buf`: `Ok(Some((length, prefix bytes)))`,
/// `Ok(None)` when more bytes are needed. Prefixes longer than two bytes (16383) are
/// refused: no valid message is that long.
pub fn decode_length(buf: &[u8]) -> Result<Option<(usize, usize)>, MessageError> {
    let prefix = &buf[..buf.len().min(2)];
    match unsigned_varint::decode::u16(prefix) {
        Ok((value, rest)) => {
            let value = usize::from(value);
            if value > MAX_MESSAGE_LEN {
                return Err(MessageError::TooLong(value));
            }
            Ok(Some((value, prefix.len() - rest.len())))
        }
        Err(unsigned_varint::decode::Error::Insufficient) if buf.len() < 2 => Ok(None),
        // Two bytes that both continue, or a trailing zero byte (not minimally encoded).
        Err(_) => Err(MessageError::BadLength),
    }
}

/// Decodes one message body (the bytes the length prefix announced, newline included).
/// `expect_list` says whether the body is the answer to an `ls` we sent.
pub fn decode_body(body: &[u8], expect_list: bool) -> Result<Message, MessageError> {
    let text = body.strip_suffix(b"\n").ok_or(MessageError::NoNewline)?;
    if expect_list {
        return decode_list(text).map(Message::Protocols);
    }
    if text.is_empty() || text.contains(&b'\n') {
        return Err(MessageError::BadText);
    }
    let text = std::str::from_utf8(text).map_err(|_| MessageError::BadText)?;
    Ok(match text {
        HEADER => Message::Header,
        NA => Message::NotAvailable,
        LS => Message::ListProtocols,
        p => Message::Protocol(p.to_string()),
    })
}

fn decode_list(mut rest: &[u8]) -> Result<Vec<String>, MessageError> {
    let mut list = Vec::new();
    while !rest.is_empty() {
        let (len, prefix) = decode_length(rest)?.ok_or(MessageError::BadLength)?;
        let end = prefix + len;
        let item = rest.get(prefix..end).ok_or(MessageError::BadLength)?;
        match decode_body(item, false)? {
            Message::Protocol(p) => list.push(p),
            _ => return Err(MessageError::BadText),
        }
        rest = &rest[end..];
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: Message, is_list: bool) {
        let mut buf = Vec::new();
        encode(&msg, &mut buf);
        let (len, prefix) = decode_length(&buf).unwrap().unwrap();
        assert_eq!(prefix + len, buf.len());
        assert_eq!(decode_body(&buf[prefix..], is_list).unwrap(), msg);
    }

    #[test]
    fn wire_bytes_of_the_header() {
        let mut buf = Vec::new();
        encode(&Message::Header, &mut buf);
        assert_eq!(buf, b"\x13/multistream/1.0.0\n");
        let mut buf = Vec::new();
        encode(&Message::NotAvailable, &mut buf);
        assert_eq!(buf, b"\x03na\n");
    }

    #[test]
    fn messages_round_trip() {
        round_trip(Message::Header, false);
        round_trip(Message::NotAvailable, false);
        round_trip(Message::ListProtocols, false);
        round_trip(Message::Protocol("/yamux/1.0.0".into()), false);
        round_trip(Message::Protocol("x".repeat(500)), false);
        round_trip(
            Message::Protocols(vec!["/a".into(), "/b/1.0.0".into()]),
            true,
        );
        round_trip(Message::Protocols(vec![]), true);
    }

    #[test]
    fn lengths_need_more_bytes_or_fail() {
        assert_eq!(decode_length(&[]), Ok(None));
        assert_eq!(decode_length(&[0x80]), Ok(None));
        assert_eq!(decode_length(&[0x85, 0x01]), Ok(Some((133, 2))));
        assert_eq!(
            decode_length(&[0xff, 0xff, 0x01]),
            Err(MessageError::BadLength)
        );
        assert_eq!(
            decode_length(&[0x80, 0x7f]),
            Err(MessageError::TooLong(0x7f << 7))
        );
        assert_eq!(decode_length(&[0x81, 0x00]), Err(MessageError::BadLength));
    }

    #[test]
    fn bad_bodies_are_errors() {
        assert_eq!(decode_body(b"abc", false), Err(MessageError::NoNewline));
        assert_eq!(decode_body(b"\n", false), Err(MessageError::BadText));
        assert_eq!(decode_body(b"a\nb\n", false), Err(MessageError::BadText));
        assert_eq!(
            decode_body(b"\xff\xfe\n", false),
            Err(MessageError::BadText)
        );
        assert_eq!(
            decode_body(b"\x05abc\n\n", true),
            Err(MessageError::BadLength)
        );
    }
}
