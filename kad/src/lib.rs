//! # strata-kad: the Kademlia DHT on a Strata host
//!
//! Finds peers, values and content providers on the same DHT as go-libp2p-kad-dht,
//! rust-libp2p's `libp2p-kad` and js-libp2p's `@libp2p/kad-dht` (`/ipfs/kad/1.0.0` by
//! default). It sits on the host's public API only: a stream handler, `new_stream`, the
//! host's events and its peerstore. Compose it as go-libp2p does with `dht.New(ctx, h)`:
//!
//! ```no_run
//! # async fn run(host: strata_host::Host, bootstrap: strata_core::PeerId,
//! #              addr: strata_core::Multiaddr) -> Result<(), strata_kad::KadError> {
//! use strata_kad::{Kad, KadConfig};
//! let kad = Kad::new(host, KadConfig::default());
//! kad.add_address(bootstrap, &[addr]);
//! kad.bootstrap().await?;
//! let peers = kad.get_closest_peers(b"some key").await?;
//! # Ok(()) }
//! ```
//!
//! The layers, each testable on its own:
//!
//! * [`key`]: positions in the keyspace (SHA-256 of the key bytes) and XOR distance.
//! * [`proto`]: the wire message and its codec, bounded as it decodes.
//! * [`routing`]: k-buckets with the least-recently-seen check and subnet diversity
//!   limits, a state machine with no I/O.
//! * [`query`]: the iterative lookup (`alpha` requests in flight, done when the `k`
//!   closest have answered), a state machine with no I/O.
//! * [`store`]: records and provider records, bounded in count, bytes, per peer and
//!   time, and reserved from the resource manager.
//! * [`record`]: validators by namespace (`/pk/` built in).
//! * [`Kad`]: the DHT on a host: the server side, the operations, and the supervised
//!   service (`libp2p.dht`) that feeds and refreshes the routing table and republishes.
//! * [`sweep`]: [`Kad::provide_many`], providing many keys region by region.
//!
//! Everything a remote sends is bounded: a message's length is checked before it is
//! read and its bytes are reserved as they arrive; the peers a message lists are capped
//! as they are decoded; the stores cap what each peer may store; lookups hold a bounded
//! number of candidates however many peers the answers list.

pub mod config;
pub mod dht;
pub mod error;
pub mod key;
pub mod proto;
pub mod query;
pub mod record;
pub mod routing;
pub mod rpc;
pub mod store;
pub mod sweep;

pub use config::{AddressFilter, KadConfig, Mode, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PROTOCOL};
pub use dht::{Kad, ProviderStream, RoutingEvent, StoreStats, MAX_PROVIDERS_PER_QUERY};
pub use error::{KadError, RpcError};
pub use key::KadKey;
pub use proto::PeerInfo;
pub use record::{
    public_key_record, AcceptAnyValidator, PublicKeyValidator, RecordError, Validator, Validators,
};
pub use routing::DiversityLimits;
pub use rpc::{KadStats, SERVICE_NAME};
pub use store::{StoreError, StoreLimits};
pub use sweep::ProvideManyReport;

/// The provider key of a CID given as text: its multihash's bytes, as go-libp2p and
/// js-libp2p announce it.
pub fn provider_key(cid: &str) -> Result<Vec<u8>, ProviderKeyError> {
    let cid = cid::Cid::try_from(cid).map_err(|e| ProviderKeyError(e.to_string()))?;
    Ok(cid.hash().to_bytes())
}

/// Text that is not a CID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a CID: {0}")]
pub struct ProviderKeyError(pub String);
