//! The DHT's settings, with the defaults of the libp2p Kademlia spec and go-libp2p-kad-dht
//! where they agree.

use std::sync::Arc;
use std::time::Duration;

use strata_core::Multiaddr;

use crate::record::Validators;
use crate::routing::DiversityLimits;
use crate::store::StoreLimits;

/// The protocol of the public IPFS DHT ("Amino"), the default.
pub const DEFAULT_PROTOCOL: &str = "/ipfs/kad/1.0.0";

/// The largest message read or sent: go-libp2p's `network.MessageSizeMax` (4 MiB), so
/// that what go sends is accepted. Each message is reserved from its stream's memory as it
/// arrives, and decoded within a small constant of its size.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;

/// Whether the node answers DHT requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers requests and announces the protocol in identify, so other nodes put it in
    /// their routing tables.
    Server,
    /// Only asks: no handler, not announced (for nodes behind NATs, or short-lived ones).
    Client,
}

/// Which addresses of other peers are kept (in the routing table, and from answers) and
/// which of ours are announced. True keeps the address.
pub type AddressFilter = Arc<dyn Fn(&Multiaddr) -> bool + Send + Sync>;

/// The DHT's settings.
#[derive(Clone)]
pub struct KadConfig {
    /// The protocol ID (`/ipfs/kad/1.0.0`; `/ipfs/lan/kad/1.0.0` for a LAN DHT).
    pub protocol: String,
    /// Server or client at the start (switch later with [`crate::Kad::set_mode`]).
    pub mode: Mode,
    /// Bucket size and replication factor: records go to the `k` closest peers.
    pub k: usize,
    /// Requests in flight per lookup.
    pub alpha: usize,
    /// How long one request may take, dial included.
    pub request_timeout: Duration,
    /// How long one lookup may take.
    pub query_timeout: Duration,
    /// Buckets not looked up for this long are refreshed (a lookup of a random key in
    /// them).
    pub refresh_interval: Duration,
    /// Table peers not seen alive for this long are asked whether they are still there at
    /// the next refresh (go-libp2p's threshold is about 43 minutes).
    pub liveness_interval: Duration,
    /// How often the keys this node provides are announced again.
    pub republish_interval: Duration,
    /// How long an inbound stream may wait for its next request.
    pub stream_idle_timeout: Duration,
    /// The largest message read.
    pub max_message_size: usize,
    /// Peers of one subnet in a bucket and in the table.
    pub diversity: DiversityLimits,
    /// The stores' bounds and TTLs.
    pub store: StoreLimits,
    /// Valid records answers needed before `get_value` returns (the local store counts).
    pub get_quorum: usize,
    /// Peers that must take a record for `put_value` to succeed.
    pub put_quorum: usize,
    /// Validators by namespace (the default knows `/pk/`).
    pub validators: Validators,
    /// Addresses kept and announced; the default keeps everything identify accepted.
    pub address_filter: AddressFilter,
}

impl Default for KadConfig {
    fn default() -> Self {
        KadConfig {
            protocol: DEFAULT_PROTOCOL.to_owned(),
            mode: Mode::Server,
            k: 20,
            alpha: 3,
            request_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(10 * 60),
            liveness_interval: Duration::from_secs(45 * 60),
            republish_interval: Duration::from_secs(22 * 3600),
            stream_idle_timeout: Duration::from_secs(60),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            diversity: DiversityLimits::default(),
            store: StoreLimits::default(),
            get_quorum: 1,
            put_quorum: 1,
            validators: Validators::default(),
            address_filter: Arc::new(|_| true),
        }
    }
}

impl std::fmt::Debug for KadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KadConfig")
            .field("protocol", &self.protocol)
            .field("mode", &self.mode)
            .field("k", &self.k)
            .field("alpha", &self.alpha)
            .field("request_timeout", &self.request_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("refresh_interval", &self.refresh_interval)
            .field("liveness_interval", &self.liveness_interval)
            .field("republish_interval", &self.republish_interval)
            .field("max_message_size", &self.max_message_size)
            .field("diversity", &self.diversity)
            .field("store", &self.store)
            .field("get_quorum", &self.get_quorum)
            .field("put_quorum", &self.put_quorum)
            .field("validators", &self.validators)
            .finish_non_exhaustive()
    }
}

impl KadConfig {
    /// Keeps only addresses that are public (drops loopback, private, link-local and
    /// unique-local IPs): for a node on the public DHT.
    pub fn public_addresses_only(mut self) -> Self {
        self.address_filter = Arc::new(|a| !crate::routing::is_local_addr(a));
        self
    }
}
