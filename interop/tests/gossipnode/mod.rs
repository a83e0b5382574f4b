//! A rust-libp2p GossipSub node (libp2p-gossipsub 0.50 of libp2p 0.57, with identify) in
//! this process, driven by commands: for the interop tests and the pubsub bench.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, SwarmBuilder};
use strata_core::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
}

enum Cmd {
    Dial(Multiaddr),
    Subscribe(String),
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), String>>),
    Mesh(String, oneshot::Sender<Vec<PeerId>>),
    TopicPeers(String, oneshot::Sender<Vec<PeerId>>),
}

/// A message a rust-libp2p node received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: std::time::Instant,
    pub source: Option<PeerId>,
    pub data: Vec<u8>,
    pub topic: String,
}

/// A rust-libp2p GossipSub node; dropping it stops it.
pub struct RustGossip {
    pub peer: PeerId,
    pub addr: Multiaddr,
    cmds: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RustGossip {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustGossip {
    /// A node with identity `seed` on `ip` (TCP, Noise, yamux), StrictSign, default
    /// parameters but for `idontwant` (IDONTWANT on or off) and a 100 ms heartbeat
    /// delay. Received messages go to the returned receiver.
    pub async fn start(
        seed: u64,
        ip: &str,
        idontwant: bool,
    ) -> (RustGossip, mpsc::UnboundedReceiver<Received>) {
        Self::start_with_metrics(seed, ip, idontwant, None).await
    }

    /// As [`RustGossip::start`], recording gossipsub's own metrics (duplicates among
    /// them) in `registry`.
    pub async fn start_with_metrics(
        seed: u64,
        ip: &str,
        idontwant: bool,
        registry: Option<std::sync::Arc<std::sync::Mutex<prometheus_client::registry::Registry>>>,
    ) -> (RustGossip, mpsc::UnboundedReceiver<Received>) {
        // The identity a Strata node of the same seed would have.
        let ours = strata_core::identity::keypair_from_seed(seed);
        let key = libp2p::identity::Keypair::from_protobuf_encoding(
            &ours.to_protobuf_encoding().unwrap(),
        )
        .unwrap();
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                let mut cfg = gossipsub::ConfigBuilder::default();
                cfg.max_transmit_size(1024 * 1024 + 4096);
                if !idontwant {
                    cfg.idontwant_message_size_threshold(usize::MAX);
                }
                let cfg = cfg.build().unwrap();
                let mut gossipsub =
                    gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), cfg)
                        .unwrap();
                if let Some(registry) = &registry {
                    let mut registry = registry.lock().unwrap();
                    gossipsub = gossipsub.with_metrics(&mut registry, Default::default());
                }
                Behaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        "ipfs/0.1.0".into(),
                        key.public(),
                    )),
                    gossipsub,
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        swarm
            .listen_on(format!("/ip4/{ip}/tcp/0").parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let peer = *swarm.local_peer_id();
        let (cmds, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let (received_tx, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { return };
                        match cmd {
                            Cmd::Dial(a) => {
                                let _ = swarm.dial(a);
                            }
                            Cmd::Subscribe(t) => {
                                let _ = swarm.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(t));
                            }
                            Cmd::Publish(t, d, r) => {
                                let res = swarm.behaviour_mut().gossipsub.publish(IdentTopic::new(t), d);
                                let _ = r.send(res.map(|_| ()).map_err(|e| e.to_string()));
                            }
                            Cmd::Mesh(t, r) => {
                                let hash = IdentTopic::new(t).hash();
                                let _ = r.send(swarm.behaviour().gossipsub.mesh_peers(&hash).copied().collect());
                            }
                            Cmd::TopicPeers(t, r) => {
                                let hash = IdentTopic::new(t).hash();
                                let peers = swarm
                                    .behaviour()
                                    .gossipsub
                                    .all_peers()
                                    .filter(|(_, topics)| topics.contains(&&hash))
                                    .map(|(p, _)| *p)
                                    .collect();
                                let _ = r.send(peers);
                            }
                        }
                    }
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) = event {
                            let _ = received_tx.send(Received {
                                at: std::time::Instant::now(),
                                source: message.source,
                                data: message.data,
                                topic: message.topic.into_string(),
                            });
                        }
                    }
                }
            }
        });
        (
            RustGossip {
                peer,
                addr,
                cmds,
                task,
            },
            received,
        )
    }

    /// Dials `addr`.
    pub fn dial(&self, addr: Multiaddr) {
        let _ = self.cmds.send(Cmd::Dial(addr));
    }

    /// Subscribes to `topic`.
    pub fn subscribe(&self, topic: &str) {
        let _ = self.cmds.send(Cmd::Subscribe(topic.to_owned()));
    }

    /// Publishes `data` to `topic`.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::Publish(topic.to_owned(), data, tx));
        rx.await.map_err(|_| "stopped".to_string())?
    }

    /// Its mesh of `topic`.
    pub async fn mesh(&self, topic: &str) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::Mesh(topic.to_owned(), tx));
        rx.await.unwrap_or_default()
    }

    /// Peers it knows subscribed to `topic`.
    pub async fn topic_peers(&self, topic: &str) -> Vec<PeerId> {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmds.send(Cmd::TopicPeers(topic.to_owned(), tx));
        rx.await.unwrap_or_default()
    }
}
