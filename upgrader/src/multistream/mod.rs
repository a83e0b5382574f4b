//! multistream-select 1.0, written once and used for security, muxer and per-stream
//! protocol negotiation.
//!
//! The dialer pipelines the header with its first proposal. With a single proposal it
//! can negotiate lazily ([`dialer_select_lazy`]): it writes its proposal and application
//! data at once and checks the answer when it first reads, so a stream costs no round
//! trip. Reads are exact (never past the last negotiation message), so the bytes that
//! follow stay in the connection for whoever takes it over.
//!
//! The upgrader negotiates security optimistically: the dialer sends its proposal and
//! its first handshake message in one flight. A listener that refuses the proposal skips
//! that message ([`listener_select_pipelined`]) and reads the next proposal.

mod message;
mod negotiate;

pub use message::{
    decode_body, decode_length, encode, encode_uvarint, Message, MessageError, HEADER, LS,
    MAX_MESSAGE_LEN, NA,
};
pub use negotiate::{
    dialer_propose_lazy, dialer_select, dialer_select_lazy, listener_select,
    listener_select_pipelined, FirstMessage, LazyNegotiated, NegotiationError, MAX_PROPOSALS,
};
