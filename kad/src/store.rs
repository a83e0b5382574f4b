//! The records and provider records a DHT server keeps for others, in memory.
//!
//! Strangers fill these stores, so each is bounded four ways: entries in all, bytes in
//! all, entries per peer that stored them (one peer cannot fill a store), and time (every
//! entry expires). Every entry's bytes are reserved from the DHT's resource scope before
//! it is stored and released when it goes, as the resource manager's memory rule asks;
//! a store that cannot reserve refuses the entry.
//!
//! Both are plain state with no I/O; the DHT wraps each in a mutex.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use strata_core::rcmgr::priority;
use strata_core::{Multiaddr, PeerId, Reservation, ScopeMemory};

use crate::proto::{PeerInfo, MAX_ADDRS_PER_PEER};
use crate::record::RecordError;

/// Bookkeeping bytes charged per stored record besides its key and value (the map entry
/// with the table's spare room, the struct, the allocator's rounding), as measured by
/// `benches/kad.rs`.
pub const RECORD_OVERHEAD: usize = 600;
/// Bookkeeping bytes charged per provider record besides its addresses.
pub const PROVIDER_OVERHEAD: usize = 176;
/// Bookkeeping bytes charged per address of a provider record besides its bytes (the
/// shared allocation a multiaddr lives in).
pub const ADDR_OVERHEAD: usize = 56;
/// Bookkeeping bytes charged per provided key besides the key's bytes.
pub const PROVIDER_KEY_OVERHEAD: usize = 112;

/// What one provider record's addresses are charged.
fn addrs_cost(addrs: &[Multiaddr]) -> usize {
    addrs.iter().map(|a| a.len() + ADDR_OVERHEAD).sum()
}

/// The limits of both stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLimits {
    /// Records in all.
    pub max_records: usize,
    /// Bytes of all records' keys and values.
    pub max_record_bytes: usize,
    /// The largest value accepted.
    pub max_value_bytes: usize,
    /// The longest key accepted (records and provider keys).
    pub max_key_bytes: usize,
    /// Records that one remote peer may have stored here.
    pub max_records_per_peer: usize,
    /// How long a record is kept after it was stored.
    pub record_ttl: Duration,
    /// Provider records in all (one per key and provider).
    pub max_provider_records: usize,
    /// Providers kept per key.
    pub max_providers_per_key: usize,
    /// Keys one remote peer may provide here.
    pub max_provided_keys_per_peer: usize,
    /// How long a provider record is kept after it was announced.
    pub provider_ttl: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_records: 1024,
            max_record_bytes: 16 << 20,
            max_value_bytes: 64 << 10,
            max_key_bytes: 512,
            max_records_per_peer: 64,
            record_ttl: Duration::from_secs(36 * 3600),
            max_provider_records: 100_000,
            max_providers_per_key: 20,
            max_provided_keys_per_peer: 4096,
            provider_ttl: Duration::from_secs(48 * 3600),
        }
    }
}

/// Why a store did not take an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record itself was refused.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The key is longer than the store takes.
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The store holds as many entries or bytes as it may.
    #[error("the store is full")]
    Full,
    /// The peer has stored as many entries here as one peer may.
    #[error("{0} has stored as many entries as one peer may")]
    PeerFull(PeerId),
    /// The resource manager refused the memory.
    #[error("no memory for the entry: {0}")]
    Memory(String),
}

/// One entry of `peer` fewer in a per-peer count.
fn forget_one(counts: &mut HashMap<PeerId, usize>, peer: &PeerId) {
    if let Some(n) = counts.get_mut(peer) {
        *n -= 1;
        if *n == 0 {
            counts.remove(peer);
        }
    }
}

/// A record as a store keeps it.
#[derive(Debug)]
struct StoredRecord {
    value: Vec<u8>,
    received: SystemTime,
    expires: Instant,
    /// The remote peer that stored it (`None`: we did).
    from: Option<PeerId>,
    _held: Reservation,
}

/// A stored record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEntry {
    /// Its value.
    pub value: Vec<u8>,
    /// When it was stored here.
    pub received: SystemTime,
}

/// Records by key.
#[derive(Debug)]
pub struct RecordStore {
    limits: StoreLimits,
    memory: ScopeMemory,
    records: HashMap<Vec<u8>, StoredRecord>,
    bytes: usize,
    per_peer: HashMap<PeerId, usize>,
}

impl RecordStore {
    /// An empty store that reserves from `memory`.
    pub fn new(limits: StoreLimits, memory: ScopeMemory) -> Self {
        RecordStore {
            limits,
            memory,
            records: HashMap::new(),
            bytes: 0,
            per_peer: HashMap::new(),
        }
    }

    /// Checks what a record's size allows before anything else looks at it.
    pub fn check_size(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.len() > self.limits.max_key_bytes {
            return Err(StoreError::KeyTooLarge {
                len: key.len(),
                max: self.limits.max_key_bytes,
            });
        }
        if value.len() > self.limits.max_value_bytes {
            return Err(RecordError::TooLarge {
                len: value.len(),
                max: self.limits.max_value_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Stores `value` under `key` (validated, and chosen over any stored one, by the
    /// caller), put by `from` (`None`: by us).
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        from: Option<PeerId>,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.check_size(key, &value)?;
        let cost = key.len() + value.len();
        let old = self.records.get(key);
        let old_cost = old.map_or(0, |r| key.len() + r.value.len());
        let old_from = old.and_then(|r| r.from);
        if old.is_none() && self.records.len() >= self.limits.max_records {
            return Err(StoreError::Full);
        }
        if self.bytes - old_cost + cost > self.limits.max_record_bytes {
            return Err(StoreError::Full);
        }
        if let Some(peer) = from {
            let held = self.per_peer.get(&peer).copied().unwrap_or(0);
            if old_from != Some(peer) && held >= self.limits.max_records_per_peer {
                return Err(StoreError::PeerFull(peer));
            }
        }
        let held = self
            .memory
            .reserve(cost + RECORD_OVERHEAD, priority::MEDIUM)
            .map_err(|e| StoreError::Memory(e.to_string()))?;
        if self.records.contains_key(key) {
            self.remove(key);
        }
        if let Some(peer) = from {
            *self.per_peer.entry(peer).or_default() += 1;
        }
        self.bytes += cost;
        self.records.insert(
            key.to_vec(),
            StoredRecord {
                value,
                received: SystemTime::now(),
                expires: now + self.limits.record_ttl,
                from,
                _held: held,
            },
        );
        Ok(())
    }

    /// The record under `key`, unless it expired.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<RecordEntry> {
        self.records
            .get(key)
            .filter(|r| r.expires > now)
            .map(|r| RecordEntry {
                value: r.value.clone(),
                received: r.received,
            })
    }

    /// Removes the record under `key`.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let Some(r) = self.records.remove(key) else {
            return false;
        };
        self.bytes -= key.len() + r.value.len();
        if let Some(peer) = r.from {
            forget_one(&mut self.per_peer, &peer);
        }
        true
    }

    /// Drops expired records; how many.
    pub fn gc(&mut self, now: Instant) -> usize {
        let expired: Vec<Vec<u8>> = self
            .records
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.remove(k);
        }
        expired.len()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records that `peer` stored here.
    pub fn stored_by(&self, peer: &PeerId) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }
}

/// One provider of a key.
#[derive(Debug)]
struct Provider {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    expires: Instant,
    held: Reservation,
}

#[derive(Debug)]
struct ProvidedKey {
    providers: Vec<Provider>,
    _held: Reservation,
}

/// Provider records: who provides which key.
#[derive(Debug)]
pub struct ProviderStore {
    limits: StoreLimits,
    memory: ScopeMemory,
    keys: HashMap<Vec<u8>, ProvidedKey>,
    records: usize,
    per_peer: HashMap<PeerId, usize>,
    local: PeerId,
}

impl ProviderStore {
    /// An empty store for the node `local` (whose own records are not capped per peer),
    /// reserving from `memory`.
    pub fn new(local: PeerId, limits: StoreLimits, memory: ScopeMemory) -> Self {
        ProviderStore {
            limits,
            memory,
            keys: HashMap::new(),
            records: 0,
            per_peer: HashMap::new(),
            local,
        }
    }

    /// Records that `provider` provides `key` at `addrs` (merged with what is known; a
    /// known provider's record is renewed).
    pub fn add(
        &mut self,
        key: &[u8],
        provider: PeerId,
        addrs: &[Multiaddr],
        now: Instant,
    ) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > self.limits.max_key_bytes {
            return Err(StoreError::KeyTooLarge {
                len: key.len(),
                max: self.limits.max_key_bytes,
            });
        }
        let expires = now + self.limits.provider_ttl;
        let addrs: Vec<Multiaddr> = addrs.iter().take(MAX_ADDRS_PER_PEER).cloned().collect();
        let addr_bytes = addrs_cost(&addrs);
        if let Some(entry) = self.keys.get_mut(key) {
            if let Some(p) = entry.providers.iter_mut().find(|p| p.peer == provider) {
                // A renewal: new addresses replace the old ones if they fit.
                if !addrs.is_empty()
                    && p.held
                        .resize(PROVIDER_OVERHEAD + addr_bytes, priority::MEDIUM)
                        .is_ok()
                {
                    p.addrs = addrs;
                }
                p.expires = expires;
                return Ok(());
            }
            if entry.providers.len() >= self.limits.max_providers_per_key {
                return Err(StoreError::Full);
            }
        }
        if self.records >= self.limits.max_provider_records {
            return Err(StoreError::Full);
        }
        let counted = provider != self.local;
        if counted
            && self.per_peer.get(&provider).copied().unwrap_or(0)
                >= self.limits.max_provided_keys_per_peer
        {
            return Err(StoreError::PeerFull(provider));
        }
        let held = self
            .memory
            .reserve(PROVIDER_OVERHEAD + addr_bytes, priority::MEDIUM)
            .map_err(|e| StoreError::Memory(e.to_string()))?;
        if !self.keys.contains_key(key) {
            let key_held = self
                .memory
                .reserve(PROVIDER_KEY_OVERHEAD + key.len(), priority::MEDIUM)
                .map_err(|e| StoreError::Memory(e.to_string()))?;
            self.keys.insert(
                key.to_vec(),
                ProvidedKey {
                    providers: Vec::new(),
                    _held: key_held,
                },
            );
        }
        if let Some(entry) = self.keys.get_mut(key) {
            // Exactly one more place: a key holds at most a few dozen providers, and a
            // vector's doubling would leave up to half of its room unused.
            entry.providers.reserve_exact(1);
            entry.providers.push(Provider {
                peer: provider,
                addrs,
                expires,
                held,
            });
        }
        self.records += 1;
        if counted {
            *self.per_peer.entry(provider).or_default() += 1;
        }
        Ok(())
    }

    /// The providers of `key` that have not expired, with the addresses they announced.
    pub fn get(&self, key: &[u8], now: Instant) -> Vec<PeerInfo> {
        self.keys.get(key).map_or_else(Vec::new, |e| {
            e.providers
                .iter()
                .filter(|p| p.expires > now)
                .map(|p| PeerInfo {
                    id: p.peer,
                    addrs: p.addrs.clone(),
                })
                .collect()
        })
    }

    /// Drops expired records; how many.
    pub fn gc(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        let per_peer = &mut self.per_peer;
        let local = self.local;
        self.keys.retain(|_, entry| {
            entry.providers.retain(|p| {
                let keep = p.expires > now;
                if !keep {
                    dropped += 1;
                    if p.peer != local {
                        forget_one(per_peer, &p.peer);
                    }
                }
                keep
            });
            !entry.providers.is_empty()
        });
        self.records -= dropped;
        dropped
    }

    /// Provider records held.
    pub fn len(&self) -> usize {
        self.records
    }

    /// True when no provider record is held.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Keys with at least one provider.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Keys that `peer` provides here.
    pub fn provided_by(&self, peer: &PeerId) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use strata_core::rcmgr::CountedMemory;

    fn peer(seed: u64) -> PeerId {
        strata_core::identity::peer_id_from_seed(seed)
    }

    fn counted(limit: usize) -> (Arc<CountedMemory>, ScopeMemory) {
        let ops = CountedMemory::new(limit, "service:libp2p.dht");
        let memory = ops.memory();
        (ops, memory)
    }

    #[test]
    fn records_are_bounded_per_peer_in_count_and_in_bytes() {
        let (ops, memory) = counted(usize::MAX);
        let limits = StoreLimits {
            max_records: 100,
            max_records_per_peer: 5,
            max_record_bytes: 10_000,
            max_value_bytes: 4_000,
            ..StoreLimits::default()
        };
        let mut s = RecordStore::new(limits, memory);
        let now = Instant::now();
        let flooder = peer(1);
        for i in 0..5 {
            s.put(
                format!("/x/{i}").as_bytes(),
                vec![0; 10],
                Some(flooder),
                now,
            )
            .unwrap();
        }
        assert_eq!(
            s.put(b"/x/5", vec![0; 10], Some(flooder), now),
            Err(StoreError::PeerFull(flooder))
        );
        // Replacing one of its own records is fine.
        s.put(b"/x/0", vec![1; 20], Some(flooder), now).unwrap();
        assert_eq!(s.stored_by(&flooder), 5);
        // Too large a value, and too many bytes in all.
        assert!(matches!(
            s.put(b"/y/a", vec![0; 4_001], Some(peer(2)), now),
            Err(StoreError::Record(RecordError::TooLarge { .. }))
        ));
        for i in 0..2 {
            s.put(
                format!("/y/{i}").as_bytes(),
                vec![0; 4_000],
                Some(peer(10 + i)),
                now,
            )
            .unwrap();
        }
        assert_eq!(
            s.put(b"/y/9", vec![0; 4_000], Some(peer(20)), now),
            Err(StoreError::Full)
        );
        // The books follow the entries, and expiry frees everything.
        let expected = s.bytes() + s.len() * RECORD_OVERHEAD;
        assert_eq!(ops.held(), expected);
        let later = now + StoreLimits::default().record_ttl;
        assert!(s.get(b"/x/0", later).is_none());
        assert_eq!(s.gc(later), 7);
        assert_eq!(ops.held(), 0);
        assert_eq!(s.stored_by(&flooder), 0);
    }

    #[test]
    fn a_store_without_memory_refuses() {
        let (_, memory) = counted(100);
        let mut s = RecordStore::new(StoreLimits::default(), memory);
        assert!(matches!(
            s.put(b"/x/1", vec![0; 10], Some(peer(1)), Instant::now()),
            Err(StoreError::Memory(_))
        ));
        assert!(s.is_empty());
    }

    #[test]
    fn provider_records_are_bounded_per_key_per_peer_and_expire() {
        let (ops, memory) = counted(usize::MAX);
        let me = peer(0);
        let limits = StoreLimits {
            max_providers_per_key: 3,
            max_provided_keys_per_peer: 10,
            ..StoreLimits::default()
        };
        let mut s = ProviderStore::new(me, limits, memory);
        let now = Instant::now();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        for i in 1..=3 {
            s.add(b"key", peer(i), std::slice::from_ref(&addr), now)
                .unwrap();
        }
        assert_eq!(s.add(b"key", peer(4), &[], now), Err(StoreError::Full));
        // Renewal of a known provider is always taken.
        s.add(b"key", peer(1), &[], now).unwrap();
        assert_eq!(s.get(b"key", now).len(), 3);
        // One peer, thousands of keys: stopped at its cap.
        let flooder = peer(9);
        let taken = (0..5000u32)
            .filter(|i| s.add(&i.to_be_bytes(), flooder, &[], now).is_ok())
            .count();
        assert_eq!(taken, 10);
        assert_eq!(s.provided_by(&flooder), 10);
        // Our own records are not capped.
        let ours = (0..50u32)
            .filter(|i| s.add(&(i + 10_000).to_be_bytes(), me, &[], now).is_ok())
            .count();
        assert_eq!(ours, 50);
        assert!(ops.held() > 0);
        let later = now + StoreLimits::default().provider_ttl;
        assert!(s.get(b"key", later).is_empty());
        assert_eq!(s.gc(later), 63);
        assert_eq!(s.keys(), 0);
        assert_eq!(ops.held(), 0);
        assert!(matches!(
            s.add(&[], peer(1), &[], now),
            Err(StoreError::KeyTooLarge { .. })
        ));
    }
}
