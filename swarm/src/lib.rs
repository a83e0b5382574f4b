//! # strata-swarm: listeners, connections, dialing and notifiees
//!
//! Owns the listeners and the capable connections, dials peers, accepts and opens streams
//! and tells notifiees about every listener and connection. It hands the host its
//! connections and streams.
//!
//! Not built yet: this crate exports nothing so far.
