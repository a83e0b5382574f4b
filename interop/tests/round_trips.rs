//! Round trips, counted through relays that delay each direction by a set time (TCP's own
//! handshake is not delayed): a dial is usable after one round trip over TCP+TLS,
//! TCP+Noise and QUIC, and a ping answers one round trip later; a listener that refuses
//! the first security proposal costs one round trip more, no more.
//!
//! Times are divided by the relay's round trip and asserted as counts, with a margin for
//! the handshakes' own CPU time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strata_core::addr::{quic_socket_addr, tcp_socket_addr};
use strata_core::{Multiaddr, Protocol};
use strata_host::{Host, HostBuilder, Security};
use strata_interop::relay::{TcpDelayRelay, UdpDelayRelay};
use tokio::time::timeout;

const ONE_WAY: Duration = Duration::from_millis(100);
const ROUND_TRIP: Duration = Duration::from_millis(200);
const LIMIT: Duration = Duration::from_secs(20);

/// One measurement at a time: parallel handshakes would lend each other CPU time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp,
    Quic,
}

async fn listener(transport: Transport, security: Vec<Security>) -> Host {
    let (builder, addr) = match transport {
        Transport::Tcp => (HostBuilder::new().no_quic(), "/ip4/127.0.0.1/tcp/0"),
        Transport::Quic => (HostBuilder::new().no_tcp(), "/ip4/127.0.0.1/udp/0/quic-v1"),
    };
    let (host, outcomes) = builder
        .security(security)
        .listen_on(addr.parse().unwrap())
        .build()
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    host
}

async fn dialer(transport: Transport, security: Vec<Security>) -> Host {
    let builder = match transport {
        Transport::Tcp => HostBuilder::new().no_quic(),
        Transport::Quic => HostBuilder::new().no_tcp(),
    };
    builder.security(security).build().await.unwrap().0
}

/// A relay, kept alive while its address is dialed.
type Relay = Box<dyn std::any::Any + Send>;

async fn relay_to(host: &Host, transport: Transport) -> (Relay, Multiaddr) {
    let target = host.addrs()[0].clone();
    let (relay, at): (Relay, SocketAddr) = match transport {
        Transport::Tcp => {
            let r = TcpDelayRelay::start(tcp_socket_addr(&target).unwrap(), ONE_WAY)
                .await
                .unwrap();
            let at = r.addr();
            (Box::new(r) as Relay, at)
        }
        Transport::Quic => {
            let r = UdpDelayRelay::start(quic_socket_addr(&target).unwrap(), ONE_WAY)
                .await
                .unwrap();
            let at = r.addr();
            (Box::new(r) as Relay, at)
        }
    };
    let addr: Multiaddr = match transport {
        Transport::Tcp => format!("/ip4/127.0.0.1/tcp/{}", at.port()),
        Transport::Quic => format!("/ip4/127.0.0.1/udp/{}/quic-v1", at.port()),
    }
    .parse()
    .unwrap();
    (relay, addr.with(Protocol::P2p(host.id())))
}

fn round_trips(d: Duration) -> f64 {
    d.as_secs_f64() / ROUND_TRIP.as_secs_f64()
}

/// Round trips from the start of a dial to a usable connection, and to the answer of a
/// ping on a new stream.
async fn measure(
    transport: Transport,
    dialer_offers: Vec<Security>,
    listener_offers: Vec<Security>,
) -> (f64, f64) {
    let server = listener(transport, listener_offers).await;
    let client = dialer(transport, dialer_offers).await;
    let (_relay, addr) = relay_to(&server, transport).await;
    let start = Instant::now();
    timeout(LIMIT, client.connect(server.id(), &[addr]))
        .await
        .unwrap()
        .unwrap();
    let connected = start.elapsed();
    timeout(LIMIT, client.ping(server.id()))
        .await
        .unwrap()
        .unwrap();
    let answered = start.elapsed();
    client.close().await;
    server.close().await;
    (round_trips(connected), round_trips(answered))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connects_in_one_round_trip_and_pings_in_the_next() {
    let _serial = SERIAL.lock().await;
    for (name, offers) in [
        ("TLS", vec![Security::Tls]),
        ("Noise", vec![Security::Noise]),
        ("TLS then Noise", vec![Security::Tls, Security::Noise]),
        ("Noise then TLS", vec![Security::Noise, Security::Tls]),
    ] {
        let (connect, first_response) =
            measure(Transport::Tcp, offers.clone(), offers.clone()).await;
        eprintln!("{name}: connect {connect:.2} round trips, ping answered at {first_response:.2}");
        assert!(
            (0.9..=1.2).contains(&connect),
            "{name}: connect took {connect:.2}"
        );
        assert!(
            (1.9..=2.2).contains(&first_response),
            "{name}: the first response came at {first_response:.2}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connects_in_one_round_trip_and_pings_in_the_next() {
    let _serial = SERIAL.lock().await;
    let (connect, first_response) =
        measure(Transport::Quic, vec![Security::Tls], vec![Security::Tls]).await;
    eprintln!("QUIC: connect {connect:.2} round trips, ping answered at {first_response:.2}");
    assert!((0.9..=1.2).contains(&connect), "connect took {connect:.2}");
    assert!(
        (1.9..=2.2).contains(&first_response),
        "the first response came at {first_response:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_proposal_costs_one_round_trip_more() {
    let _serial = SERIAL.lock().await;
    for (offers, spoken) in [
        (vec![Security::Tls, Security::Noise], Security::Noise),
        (vec![Security::Noise, Security::Tls], Security::Tls),
    ] {
        let (connect, _) = measure(Transport::Tcp, offers, vec![spoken.clone()]).await;
        eprintln!("only {spoken:?} spoken: connect {connect:.2} round trips");
        assert!(
            (1.9..=2.2).contains(&connect),
            "{spoken:?}: connect took {connect:.2}"
        );
    }
}
