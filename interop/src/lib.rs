//! # strata-interop: Strata against rust-libp2p
//!
//! A dev-only crate. Its tests run a rust-libp2p node in the same process and check that
//! Strata's upgrader (TLS and Noise, yamux, multistream-select) speaks the same wire
//! protocol, both ways. Its library holds the test tools they share: [`relay`], relays
//! that delay traffic to measure round trips, and [`yamux_diff`], a differential test of
//! Strata's yamux against the `yamux` crate (for property tests and the fuzz target).

pub mod relay;
pub mod yamux_diff;
