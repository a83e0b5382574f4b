//! Identify (`/ipfs/id/1.0.0`) and identify push (`/ipfs/id/push/1.0.0`): peers tell each
//! other their key, listen addresses, protocols and agent, and the address they see the
//! other at.
//!
//! [`message`] is the codec with no I/O (a fuzzer drives [`decode_frames`]);
//! [`protocol`] moves it over a stream and records the result in a
//! [`Peerstore`](crate::peerstore::Peerstore).

pub mod message;
pub mod protocol;

pub use message::{
    decode_frames, decode_uvarint, encode_frame, FrameBudget, Identify, IdentifyError,
    IdentifyInfo, IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, MAX_IDENTIFY_MSG_LEN,
    MAX_IDENTIFY_PARTS, MAX_PROTOCOL_ID_LEN,
};
pub use protocol::{
    apply_to_peerstore, recv_identify, recv_identify_reserving, recv_identify_within,
    send_identify, send_identify_within, IDENTIFY_TIMEOUT,
};
