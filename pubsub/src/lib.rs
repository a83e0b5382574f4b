//! # strata-pubsub: GossipSub v1.2 on a Strata host
//!
//! Topic-based publish/subscribe over a mesh, with gossip, v1.1 peer scoring and v1.2
//! IDONTWANT, on the same wire as go-libp2p-pubsub, rust-libp2p's `libp2p-gossipsub` and
//! js-libp2p's `@chainsafe/libp2p-gossipsub` (`/meshsub/1.2.0`, `/meshsub/1.1.0`,
//! `/meshsub/1.0.0`, and `/floodsub/1.0.0`). It sits on the host's public API only:
//! stream handlers, `new_stream`, the host's events, its peerstore and a supervised
//! service. Compose it as go-libp2p does with `pubsub.NewGossipSub(ctx, h)`:
//!
//! ```no_run
//! # async fn run(host: strata_host::Host) -> Result<(), strata_pubsub::PublishError> {
//! use strata_pubsub::{Gossipsub, GossipsubConfig};
//! let pubsub = Gossipsub::new(host, GossipsubConfig::default());
//! let mut sub = pubsub.subscribe("chat");
//! pubsub.publish("chat", &b"hello"[..]).await?;
//! while let Some(msg) = sub.next().await {
//!     println!("{:?}: {:?}", msg.source, msg.data);
//! }
//! # Ok(()) }
//! ```
//!
//! The layers, each testable on its own:
//!
//! * [`proto`]: the RPC and its codec, bounded as it decodes.
//! * [`message`]: messages, their IDs, signing and verification.
//! * [`cache`]: the message cache (IWANT and gossip) and the seen cache.
//! * [`score`]: peer scoring, a state machine with no I/O.
//! * [`router`]: the router (mesh, fanout, gossip, backoff, promises, IDONTWANT), a
//!   state machine with no I/O.
//! * [`Gossipsub`]: the router on a host: one long-lived outbound stream per peer with a
//!   bounded queue (control first, forwards to a slow peer dropped and counted),
//!   subscriptions with bounded buffers, asynchronous validators with a deadline, and
//!   the heartbeat as the supervised service `libp2p.pubsub`.
//!
//! Everything a remote feeds is bounded and reserved from the resource manager: an RPC's
//! length is checked against `max_transmit_size` before it is read and its bytes are
//! reserved as they arrive; what one RPC may list is capped as it is decoded; what the
//! router keeps per peer (topics, IDONTWANTs, recent IDs) is reserved from the peer's
//! span, the message cache and subscription buffers from the service's; the seen cache
//! and the promises are capped in count. A graylisted peer's RPCs are dropped unread.

pub mod cache;
pub mod config;
pub mod gossipsub;
pub mod message;
pub mod proto;
pub mod router;
pub mod score;

pub use config::{
    GossipsubConfig, PeerScoreParams, PeerScoreThresholds, TopicScoreParams, FLOODSUB, MESHSUB_V10,
    MESHSUB_V11, MESHSUB_V12,
};
pub use gossipsub::{Gossipsub, GossipsubStats, Snapshot, Subscription, Validator, SERVICE_NAME};
pub use message::{
    content_message_id, default_message_id, rust_libp2p_message_id, Message, MessageId,
    MessageIdFn, SignatureError, SignaturePolicy,
};
pub use proto::{DecodeError, DecodeLimits};
pub use router::{
    GossipsubEvent, PeerKind, PeerSnapshot, PublishError, RouterStats, ValidationResult,
};
