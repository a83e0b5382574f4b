//! Plaintext ("/plaintext/2.0.0"): an exchange of peer IDs and keys with no encryption.
//!
//! For tests only. Each side sends a uvarint-length-prefixed protobuf `Exchange` with its
//! peer ID and public key; each checks that the ID matches the key. Nothing proves the
//! remote holds the private key, and nothing after the exchange is protected.

use async_trait::async_trait;
use prost::Message;
use strata_core::{BoxRawConn, Keypair, PeerId, PublicKey, SecurityError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::security::{SecureTransport, Secured, SecurityScope};

/// The protocol ID negotiated with multistream-select.
pub const PROTOCOL_ID: &str = "/plaintext/2.0.0";

/// The largest `Exchange` message accepted. A peer ID and a public key fit with room to
/// spare (an RSA-4096 key is about 550 bytes); anything longer is refused unread.
pub const MAX_EXCHANGE_LEN: usize = 4096;

/// The `Exchange` protobuf message of the plaintext spec.
///
/// `pubkey` is an embedded `PublicKey` message; it is kept as its encoded bytes, which is
/// the same on the wire and is what `libp2p-identity` encodes and decodes.
#[derive(Clone, PartialEq, Message)]
pub struct Exchange {
    /// The sender's peer ID, as binary multihash.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// The sender's public key, as the libp2p `PublicKey` protobuf message.
    #[prost(bytes = "vec", tag = "2")]
    pub pubkey: Vec<u8>,
}

/// Encodes our `Exchange`, length prefix included.
pub fn encode_exchange(identity: &PublicKey) -> Vec<u8> {
    Exchange {
        id: identity.to_peer_id().to_bytes(),
        pubkey: identity.encode_protobuf(),
    }
    .encode_length_delimited_to_vec()
}

/// Decodes a remote `Exchange` (without its length prefix) and checks that the claimed
/// peer ID is the one its key gives.
pub fn decode_exchange(bytes: &[u8]) -> Result<(PeerId, PublicKey), SecurityError> {
    let exchange = Exchange::decode(bytes)
        .map_err(|e| SecurityError::InvalidPayload(format!("not a plaintext exchange: {e}")))?;
    let key = PublicKey::try_decode_protobuf(&exchange.pubkey)
        .map_err(|e| SecurityError::InvalidPayload(format!("bad public key: {e}")))?;
    let id = PeerId::from_bytes(&exchange.id)
        .map_err(|e| SecurityError::InvalidPayload(format!("bad peer ID: {e}")))?;
    if key.to_peer_id() != id {
        return Err(SecurityError::InvalidPayload(format!(
            "claimed peer ID {id} is not the one of the key sent ({})",
            key.to_peer_id()
        )));
    }
    Ok((id, key))
}

/// Reads a uvarint length one byte at a time, so that nothing past the message is read.
async fn read_len<R: AsyncRead + Unpin>(io: &mut R) -> Result<usize, SecurityError> {
    let too_long = || {
        SecurityError::InvalidPayload(format!(
            "plaintext exchange longer than {MAX_EXCHANGE_LEN} bytes"
        ))
    };
    // A length up to MAX_EXCHANGE_LEN needs two varint bytes; a third means too long.
    let mut buf = [0u8; 3];
    for i in 0..buf.len() {
        buf[i] = io.read_u8().await?;
        match unsigned_varint::decode::usize(&buf[..=i]) {
            Ok((len, _)) if len <= MAX_EXCHANGE_LEN => return Ok(len),
            Ok(_) => return Err(too_long()),
            Err(unsigned_varint::decode::Error::Insufficient) => {}
            Err(e) => {
                return Err(SecurityError::InvalidPayload(format!(
                    "plaintext exchange length: {e}"
                )))
            }
        }
    }
    Err(too_long())
}

/// The plaintext security transport. It encrypts nothing and authenticates nothing but
/// the claimed key's match with the claimed peer ID; use it in tests only.
pub struct PlaintextTransport {
    public: PublicKey,
}

impl std::fmt::Debug for PlaintextTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaintextTransport")
            .field("local_peer", &self.public.to_peer_id())
            .finish()
    }
}

impl PlaintextTransport {
    /// A plaintext transport for `identity`.
    ///
    /// No encryption, and no authentication of anything but the claimed key: any peer
    /// can claim any public key. For tests only.
    pub fn insecure_for_tests(identity: Keypair) -> Self {
        PlaintextTransport {
            public: identity.public(),
        }
    }

    async fn exchange(
        &self,
        mut io: BoxRawConn,
        expected: Option<PeerId>,
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError> {
        // Both sides send first; the message is small enough for any transport's buffer.
        io.write_all(&encode_exchange(&self.public)).await?;
        io.flush().await?;
        let len = read_len(&mut io).await?;
        let _held = scope
            .memory
            .reserve(len, strata_core::rcmgr::priority::ALWAYS)
            .map_err(|e| SecurityError::Handshake(format!("no memory for the exchange: {e}")))?;
        let mut msg = vec![0u8; len];
        io.read_exact(&mut msg).await?;
        scope.progressed();
        let (remote_peer, remote_public_key) = decode_exchange(&msg)?;
        if let Some(expected) = expected {
            if remote_peer != expected {
                return Err(SecurityError::PeerIdMismatch {
                    expected,
                    actual: remote_peer,
                });
            }
        }
        Ok(Secured {
            io: Box::new(io),
            remote_peer,
            remote_public_key,
            early_muxer: None,
        })
    }
}

#[async_trait]
impl SecureTransport for PlaintextTransport {
    fn protocol_id(&self) -> &'static str {
        PROTOCOL_ID
    }

    async fn secure_outbound_scoped(
        &self,
        io: BoxRawConn,
        expected: Option<PeerId>,
        _muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError> {
        self.exchange(io, expected, scope).await
    }

    async fn secure_inbound_scoped(
        &self,
        io: BoxRawConn,
        _muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError> {
        self.exchange(io, None, scope).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_round_trips() {
        let key = Keypair::generate_ed25519().public();
        let bytes = encode_exchange(&key);
        let len = prost::encoding::decode_varint(&mut &bytes[..]).unwrap() as usize;
        let body = &bytes[bytes.len() - len..];
        let (id, decoded) = decode_exchange(body).unwrap();
        assert_eq!(id, key.to_peer_id());
        assert_eq!(decoded, key);
    }

    #[test]
    fn exchange_with_a_foreign_id_is_refused() {
        let key = Keypair::generate_ed25519().public();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let bytes = Exchange {
            id: other.to_bytes(),
            pubkey: key.encode_protobuf(),
        }
        .encode_to_vec();
        assert!(matches!(
            decode_exchange(&bytes),
            Err(SecurityError::InvalidPayload(_))
        ));
        assert!(matches!(
            decode_exchange(&[0xff, 0x01]),
            Err(SecurityError::InvalidPayload(_))
        ));
    }

    #[tokio::test]
    async fn length_prefix_is_bounded() {
        let mut ok: &[u8] = &[0x80, 0x20]; // 4096
        assert_eq!(read_len(&mut ok).await.unwrap(), 4096);
        let mut big: &[u8] = &[0x81, 0x20]; // 4097
        assert!(matches!(
            read_len(&mut big).await,
            Err(SecurityError::InvalidPayload(_))
        ));
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            read_len(&mut huge).await,
            Err(SecurityError::InvalidPayload(_))
        ));
        let mut cut: &[u8] = &[0x80];
        assert!(matches!(
            read_len(&mut cut).await,
            Err(SecurityError::Io(_))
        ));
    }
}
