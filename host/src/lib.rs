//! # strata-host: the API applications hold
//!
//! Composes a swarm with a protocol mux, a peerstore and the standard services (identify,
//! ping) behind a small API.
//!
//! Not built yet: this crate exports nothing so far.
