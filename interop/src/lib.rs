//! # strata-interop: Strata against rust-libp2p
//!
//! A dev-only crate. Its tests run a rust-libp2p node in the same process and check that
//! Strata's upgrader (TLS and Noise, yamux, multistream-select) speaks the same wire
//! protocol, both ways. It exports nothing.
