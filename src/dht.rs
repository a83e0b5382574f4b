//! `strata dht ...`: one-shot DHT operations, each by a fresh client-mode node that joins
//! through `--bootstrap` addresses, prints exactly one JSON line and exits 0, or prints
//! `strata: error: ...` and exits 1, within 30 s. Every line carries the node's own
//! `peer_id`; `ms` times the operation alone, after joining. The keys are a contract for
//! scripts.

use std::time::{Duration, Instant};

use clap::Subcommand;
use serde::Serialize;
use strata::core::addr::peer_id_of;
use strata::core::identity::{generate_ed25519, keypair_from_seed};
use strata::core::{Multiaddr, PeerId, Protocol};
use strata::host::{Host, HostBuilder};
use strata::kad::{AcceptAnyValidator, Kad, KadConfig, Mode};

use crate::report::round3;

/// The namespace the CLI's records live in (`/strata/...`).
pub const NAMESPACE: &str = "strata";
/// The longest a one-shot command may take, joining included.
pub const LIMIT: Duration = Duration::from_secs(30);
/// How long `provide` stays up after announcing, so that the records settle.
const PROVIDE_LINGER: Duration = Duration::from_secs(2);
/// Providers `providers` collects at most (go-libp2p's default count).
const PROVIDERS_COUNT: usize = 20;

type CliError = Box<dyn std::error::Error + Send + Sync>;

/// The one-shot DHT operations.
#[derive(Subcommand)]
pub enum DhtCommand {
    /// Stores VALUE under KEY (their UTF-8 bytes): `{"ok":true,"ms":F}`.
    Put {
        /// The key, for example /strata/name.
        key: String,
        /// The value.
        value: String,
    },
    /// The value under KEY: `{"value":"...","ms":F}`.
    Get {
        /// The key.
        key: String,
    },
    /// Announces that this node provides CID, then stays up 2 s: `{"ok":true,"ms":F}`.
    Provide {
        /// The CID.
        cid: String,
    },
    /// The providers of CID: `{"providers":["<peer id>",...],"ms":F}`.
    Providers {
        /// The CID.
        cid: String,
    },
    /// A peer's addresses: `{"addrs":["<multiaddr>",...],"ms":F}`.
    FindPeer {
        /// The peer ID.
        peer: String,
    },
    /// The k closest peers found, closest first: `{"peers":["<peer id>",...],"ms":F}`. An
    /// argument that parses as a peer ID is that peer's key; anything else its UTF-8 bytes.
    Closest {
        /// A key or a peer ID.
        key: String,
    },
}

/// What one command prints, in key order; keys not asked for are left out.
#[derive(Debug, Default, Serialize)]
pub struct DhtReport {
    pub peer_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub providers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    pub ms: f64,
}

impl DhtReport {
    /// The report as one line of JSON.
    pub fn to_json_line(&self) -> String {
        // Strings, numbers and lists of strings always serialize.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The DHT settings of the CLI: the `strata` namespace accepts any value (the first of
/// several wins), and every address is kept (loopback included).
pub fn cli_config(mode: Mode) -> KadConfig {
    let mut config = KadConfig {
        mode,
        ..KadConfig::default()
    };
    config.validators.insert(NAMESPACE, AcceptAnyValidator);
    config
}

/// Splits `--bootstrap` addresses into peers and addresses (each needs its /p2p/ID).
pub fn bootstrap_peers(addrs: &[Multiaddr]) -> Result<Vec<(PeerId, Multiaddr)>, CliError> {
    addrs
        .iter()
        .map(|a| {
            let peer = peer_id_of(a)
                .ok_or_else(|| format!("--bootstrap {a} must end with /p2p/<peer id>"))?;
            let mut bare = a.clone();
            if matches!(bare.iter().last(), Some(Protocol::P2p(_))) {
                bare.pop();
            }
            Ok((peer, bare))
        })
        .collect()
}

/// Runs a one-shot command and prints its line; errors come back as `error: ...` for
/// `strata: error: ...`.
pub async fn run(
    command: DhtCommand,
    bootstrap: Vec<Multiaddr>,
    seed: Option<u64>,
) -> Result<(), CliError> {
    let outcome = match tokio::time::timeout(LIMIT, one_shot(command, bootstrap, seed)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no result within {} s", LIMIT.as_secs()).into()),
    };
    match outcome {
        Ok(report) => {
            crate::print_line(report.to_json_line());
            Ok(())
        }
        Err(e) => Err(format!("error: {e}").into()),
    }
}

async fn one_shot(
    command: DhtCommand,
    bootstrap: Vec<Multiaddr>,
    seed: Option<u64>,
) -> Result<DhtReport, CliError> {
    if bootstrap.is_empty() {
        return Err("at least one --bootstrap address is needed".into());
    }
    let peers = bootstrap_peers(&bootstrap)?;
    // Listen where the bootstrap peers are (loopback for loopback), so that a provider
    // record carries an address they can reach.
    let all_loopback = peers.iter().all(|(_, a)| {
        matches!(a.iter().next(), Some(Protocol::Ip4(ip)) if ip.is_loopback())
            || matches!(a.iter().next(), Some(Protocol::Ip6(ip)) if ip.is_loopback())
    });
    let listen: Multiaddr = if all_loopback {
        "/ip4/127.0.0.1/tcp/0".parse()?
    } else {
        "/ip4/0.0.0.0/tcp/0".parse()?
    };
    let (host, _) = HostBuilder::new()
        .identity(seed.map_or_else(generate_ed25519, keypair_from_seed))
        .no_quic()
        .listen_on(listen)
        .build()
        .await?;
    let result = operate(&host, command, &peers).await;
    host.close().await;
    result
}

async fn operate(
    host: &Host,
    command: DhtCommand,
    peers: &[(PeerId, Multiaddr)],
) -> Result<DhtReport, CliError> {
    let kad = Kad::new(host.clone(), cli_config(Mode::Client));
    join(host, &kad, peers).await?;
    let mut report = DhtReport {
        peer_id: host.id().to_string(),
        ..DhtReport::default()
    };
    let started = Instant::now();
    let mut linger = false;
    match command {
        DhtCommand::Put { key, value } => {
            kad.put_value(key.as_bytes(), value.into_bytes()).await?;
            report.ok = Some(true);
        }
        DhtCommand::Get { key } => {
            let value = kad.get_value(key.as_bytes()).await?;
            report.value = Some(String::from_utf8_lossy(&value).into_owned());
        }
        DhtCommand::Provide { cid } => {
            let key = strata::kad::provider_key(&cid)?;
            kad.provide(&key).await?;
            report.ok = Some(true);
            linger = true;
        }
        DhtCommand::Providers { cid } => {
            let key = strata::kad::provider_key(&cid)?;
            let found = kad.find_providers(&key, PROVIDERS_COUNT).await?;
            report.providers = Some(found.iter().map(|p| p.id.to_string()).collect());
        }
        DhtCommand::FindPeer { peer } => {
            let peer: PeerId = peer
                .parse()
                .map_err(|e| format!("{peer:?} is not a peer ID: {e}"))?;
            let info = kad.find_peer(peer).await?;
            report.addrs = Some(info.addrs.iter().map(ToString::to_string).collect());
        }
        DhtCommand::Closest { key } => {
            let bytes = match key.parse::<PeerId>() {
                Ok(peer) => peer.to_bytes(),
                Err(_) => key.into_bytes(),
            };
            let found = kad.get_closest_peers(&bytes).await?;
            report.peers = Some(found.iter().map(|p| p.id.to_string()).collect());
        }
    }
    report.ms = round3(started.elapsed().as_secs_f64() * 1e3);
    if linger {
        // The records settle at the peers before this node goes (ms leaves it out).
        tokio::time::sleep(PROVIDE_LINGER).await;
    }
    Ok(report)
}

/// Tells the DHT about the bootstrap peers and connects to them; fails if none answers.
async fn join(host: &Host, kad: &Kad, peers: &[(PeerId, Multiaddr)]) -> Result<(), CliError> {
    let mut reached = 0;
    let mut last_error = String::new();
    for (peer, addr) in peers {
        kad.add_address(*peer, std::slice::from_ref(addr));
        match host.connect(*peer, std::slice::from_ref(addr)).await {
            Ok(()) => reached += 1,
            Err(e) => last_error = format!("{peer}: {e}"),
        }
    }
    if reached == 0 {
        return Err(format!("no bootstrap peer reachable ({last_error})").into());
    }
    Ok(())
}

/// Runs the DHT server of `strata listen --kad`, joining through `bootstrap` in the
/// background (a failure is reported on stderr; the node keeps serving).
pub fn serve(host: &Host, bootstrap: &[Multiaddr]) -> Result<Kad, CliError> {
    let peers = bootstrap_peers(bootstrap)?;
    let kad = Kad::new(host.clone(), cli_config(Mode::Server));
    if !peers.is_empty() {
        let kad = kad.clone();
        let host = host.clone();
        tokio::spawn(async move {
            if let Err(e) = join(&host, &kad, &peers).await {
                eprintln!("strata: kad: {e}");
                return;
            }
            if let Err(e) = kad.bootstrap().await {
                eprintln!("strata: kad bootstrap: {e}");
            }
        });
    }
    Ok(kad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_command_prints_its_keys_in_order() {
        let mut r = DhtReport {
            peer_id: "12D3".into(),
            ok: Some(true),
            ms: round3(1.23456),
            ..DhtReport::default()
        };
        assert_eq!(
            r.to_json_line(),
            r#"{"peer_id":"12D3","ok":true,"ms":1.235}"#
        );
        r.ok = None;
        r.value = Some("a\"b".into());
        assert_eq!(
            r.to_json_line(),
            r#"{"peer_id":"12D3","value":"a\"b","ms":1.235}"#
        );
        r.value = None;
        r.providers = Some(vec!["p1".into()]);
        assert_eq!(
            r.to_json_line(),
            r#"{"peer_id":"12D3","providers":["p1"],"ms":1.235}"#
        );
    }

    #[test]
    fn bootstrap_addresses_need_their_peer_id() {
        let id = keypair_from_seed(1).public().to_peer_id();
        let with: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}").parse().unwrap();
        let got = bootstrap_peers(&[with]).unwrap();
        assert_eq!(got[0].0, id);
        assert_eq!(got[0].1.to_string(), "/ip4/127.0.0.1/tcp/4001");
        let without: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert!(bootstrap_peers(&[without]).is_err());
    }
}
