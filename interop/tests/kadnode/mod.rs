//! A rust-libp2p Kademlia node (libp2p-kad 0.49 of libp2p 0.57, with identify) in this
//! process, driven by commands, and the Strata DHT nodes it meets: for the interop tests
//! and the lookup-latency bench.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::{
    self, GetProvidersOk, GetRecordOk, QueryId, QueryResult, Quorum, Record, RecordKey,
};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, StreamProtocol, SwarmBuilder};
use strata_core::{Multiaddr, PeerId};
use strata_host::{Host, HostBuilder};
use strata_kad::{AcceptAnyValidator, Kad, KadConfig};
use tokio::sync::{mpsc, oneshot};

/// The DHT protocol both sides speak.
pub const KAD: &str = "/ipfs/kad/1.0.0";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Cmd {
    AddAddress(PeerId, Multiaddr),
    Bootstrap(Reply<()>),
    Put(Vec<u8>, Vec<u8>, Reply<()>),
    Get(Vec<u8>, Reply<Vec<u8>>),
    Provide(Vec<u8>, Reply<()>),
    Providers(Vec<u8>, Reply<HashSet<PeerId>>),
    Closest(Vec<u8>, Reply<Vec<(PeerId, Vec<Multiaddr>)>>),
    Table(oneshot::Sender<Vec<PeerId>>),
}

/// What a running query answers to.
enum Pending {
    Bootstrap(Reply<()>),
    Put(Reply<()>),
    Get(Reply<Vec<u8>>),
    Provide(Reply<()>),
    Providers(Reply<HashSet<PeerId>>),
    Closest(Reply<Vec<(PeerId, Vec<Multiaddr>)>>),
}

/// A rust-libp2p DHT server; dropping it stops it.
pub struct RustKad {
    pub peer: PeerId,
    pub addr: Multiaddr,
    cmds: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RustKad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustKad {
    /// A node with identity `seed` listening on `ip` over TCP with Noise and yamux, in
    /// server mode, adding every peer identify reports as a DHT server (rust-libp2p's
    /// documented pattern), and announcing its listen address as external so that its
    /// provider records carry it.
    pub async fn start(seed: u64, ip: &str) -> RustKad {
        let key = libp2p::identity::Keypair::ed25519_from_bytes(seed_bytes(seed)).unwrap();
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                let mut cfg = kad::Config::new(StreamProtocol::new(KAD));
                cfg.set_query_timeout(Duration::from_secs(60));
                let mut kad =
                    kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), cfg);
                kad.set_mode(Some(kad::Mode::Server));
                Behaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        "ipfs/0.1.0".into(),
                        key.public(),
                    )),
                    kad,
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        swarm
            .listen_on(format!("/ip4/{ip}/tcp/0").parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        swarm.add_external_address(addr.clone());
        let peer = *swarm.local_peer_id();
        let (cmds, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let task = tokio::spawn(async move {
            let mut pending: HashMap<QueryId, Pending> = HashMap::new();
            let mut found_providers: HashMap<QueryId, HashSet<PeerId>> = HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { return };
                        let kad = &mut swarm.behaviour_mut().kad;
                        match cmd {
                            Cmd::AddAddress(p, a) => {
                                kad.add_address(&p, a);
                            }
                            Cmd::Bootstrap(r) => match kad.bootstrap() {
                                Ok(id) => { pending.insert(id, Pending::Bootstrap(r)); }
                                Err(e) => { let _ = r.send(Err(e.to_string())); }
                            },
                            Cmd::Put(k, v, r) => match kad.put_record(Record::new(RecordKey::new(&k), v), Quorum::One) {
                                Ok(id) => { pending.insert(id, Pending::Put(r)); }
                                Err(e) => { let _ = r.send(Err(e.to_string())); }
                            },
                            Cmd::Get(k, r) => {
                                let id = kad.get_record(RecordKey::new(&k));
                                pending.insert(id, Pending::Get(r));
                            }
                            Cmd::Provide(k, r) => match kad.start_providing(RecordKey::new(&k)) {
                                Ok(id) => { pending.insert(id, Pending::Provide(r)); }
                                Err(e) => { let _ = r.send(Err(e.to_string())); }
                            },
                            Cmd::Providers(k, r) => {
                                let id = kad.get_providers(RecordKey::new(&k));
                                pending.insert(id, Pending::Providers(r));
                            }
                            Cmd::Closest(k, r) => {
                                let id = kad.get_closest_peers(k);
                                pending.insert(id, Pending::Closest(r));
                            }
                            Cmd::Table(r) => {
                                let mut peers = Vec::new();
                                for bucket in kad.kbuckets() {
                                    for e in bucket.iter() {
                                        peers.push(*e.node.key.preimage());
                                    }
                                }
                                let _ = r.send(peers);
                            }
                        }
                    }
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                            if info.protocols.iter().any(|p| p.as_ref() == KAD) =>
                        {
                            for a in info.listen_addrs {
                                swarm.behaviour_mut().kad.add_address(&peer_id, a);
                            }
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. })) => {
                            let last = step.last;
                            let mut finish = false;
                            match (result, pending.remove(&id)) {
                                (QueryResult::Bootstrap(r), Some(Pending::Bootstrap(tx))) => {
                                    if last { let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string())); }
                                    else { pending.insert(id, Pending::Bootstrap(tx)); }
                                }
                                (QueryResult::PutRecord(r), Some(Pending::Put(tx))) => {
                                    let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
                                }
                                (QueryResult::StartProviding(r), Some(Pending::Provide(tx))) => {
                                    let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
                                }
                                (QueryResult::GetRecord(r), Some(Pending::Get(tx))) => match r {
                                    Ok(GetRecordOk::FoundRecord(rec)) => {
                                        let _ = tx.send(Ok(rec.record.value));
                                        finish = !last;
                                    }
                                    Ok(_) if !last => { pending.insert(id, Pending::Get(tx)); }
                                    Ok(_) => { let _ = tx.send(Err("not found".into())); }
                                    Err(e) => { let _ = tx.send(Err(e.to_string())); }
                                },
                                (QueryResult::GetProviders(r), Some(Pending::Providers(tx))) => {
                                    let found = found_providers.entry(id).or_default();
                                    if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = &r {
                                        found.extend(providers.iter().copied());
                                    }
                                    if !found.is_empty() || last {
                                        let found = found_providers.remove(&id).unwrap_or_default();
                                        let _ = tx.send(if found.is_empty() { Err(format!("no providers: {r:?}")) } else { Ok(found) });
                                        finish = !last;
                                    } else {
                                        pending.insert(id, Pending::Providers(tx));
                                    }
                                }
                                (QueryResult::GetClosestPeers(r), Some(Pending::Closest(tx))) => {
                                    let _ = tx.send(r.map(|ok| ok.peers.into_iter().map(|p| (p.peer_id, p.addrs)).collect()).map_err(|e| e.to_string()));
                                }
                                (_, Some(other)) => { pending.insert(id, other); }
                                (_, None) => {}
                            }
                            if finish {
                                if let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id) {
                                    q.finish();
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        RustKad {
            peer,
            addr,
            cmds,
            task,
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .map_err(|_| "node stopped".to_string())?;
        tokio::time::timeout(Duration::from_secs(90), rx)
            .await
            .map_err(|_| "no answer in 90 s".to_string())?
            .map_err(|_| "node stopped".to_string())?
    }

    /// Tells the node where a DHT server is.
    pub fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.cmds.send(Cmd::AddAddress(peer, addr));
    }

    /// Bootstraps; returns when the query ends.
    pub async fn bootstrap(&self) -> Result<(), String> {
        self.ask(Cmd::Bootstrap).await
    }

    /// Puts a record (quorum one).
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.ask(|r| Cmd::Put(key.to_vec(), value.to_vec(), r))
            .await
    }

    /// The first record found under `key`.
    pub async fn get(&self, key: &[u8]) -> Result<Vec<u8>, String> {
        self.ask(|r| Cmd::Get(key.to_vec(), r)).await
    }

    /// Starts providing `key`.
    pub async fn provide(&self, key: &[u8]) -> Result<(), String> {
        self.ask(|r| Cmd::Provide(key.to_vec(), r)).await
    }

    /// The first providers found of `key`.
    pub async fn providers(&self, key: &[u8]) -> Result<HashSet<PeerId>, String> {
        self.ask(|r| Cmd::Providers(key.to_vec(), r)).await
    }

    /// The closest peers to `key` (a peer ID's bytes to look a peer up), with addresses.
    pub async fn closest(&self, key: &[u8]) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, String> {
        self.ask(|r| Cmd::Closest(key.to_vec(), r)).await
    }

    /// The peers in its routing table.
    pub async fn table(&self) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::Table(tx));
        rx.await.unwrap_or_default()
    }
}

/// A 32-byte secret from a seed (the rust nodes' identities are fixed per test).
fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8] = 0x5a;
    b
}

/// A Strata DHT node: host on `ip`, server mode, the `test` namespace accepting anything.
pub async fn strata_node(seed: u64, ip: &str) -> (Host, Kad, Multiaddr) {
    let (host, addr) = HostBuilder::tcp_on(seed, ip)
        .build_listening()
        .await
        .unwrap();
    let mut config = KadConfig::default();
    config.validators.insert("test", AcceptAnyValidator);
    let kad = Kad::new(host.clone(), config);
    (host, kad, addr)
}
