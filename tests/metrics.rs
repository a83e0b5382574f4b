//! Metrics scraped over real HTTP from `strata::metrics::MetricsServer`: after N
//! connections and M streams between real hosts on loopback, the counters say N and M,
//! the handshake histogram has N samples, the bytes match, and failed dials are counted
//! by kind. The endpoint refuses what is not `GET /metrics` and survives junk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strata::host::prometheus_client::registry::Registry;
use strata::host::{Host, Security};
use strata::metrics::{MetricsServer, OPENMETRICS_CONTENT_TYPE};
use strata::swarm::SwarmEvent;
use strata::{HostBuilder, Multiaddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);
const ECHO: &str = "/echo/1.0.0";

/// Sends `request` as is and returns the whole answer (the server closes after it).
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(answer).unwrap()
}

/// Scrapes `/metrics`: checks the status and content type, returns the body.
async fn scrape(addr: SocketAddr) -> String {
    let answer = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-type: {OPENMETRICS_CONTENT_TYPE}")),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "not OpenMetrics text: {body}");
    body.to_string()
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
        if all {
            value.parse().ok()
        } else {
            None
        }
    })
}

async fn host(registry: &mut Registry) -> Host {
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .security(vec![Security::Noise])
        .metrics(registry)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    host.set_stream_handler(ECHO, |mut stream| async move {
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_ok() {
            let _ = stream.write_all(&buf).await;
            let _ = stream.close_write().await;
        }
    });
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counts_match_connections_streams_and_bytes() {
    const CONNS: usize = 3;
    const STREAMS: usize = 5;
    const BYTES: usize = 10_000;

    let mut server_registry = Registry::default();
    let server = host(&mut server_registry).await;
    let server_endpoint =
        MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Arc::new(server_registry))
            .await
            .unwrap();
    let mut client_registry = Registry::default();
    let client = host(&mut client_registry).await;
    let client_endpoint =
        MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Arc::new(client_registry))
            .await
            .unwrap();

    let mut server_events = server.network().events();
    let server_addr = server.addrs_with_peer_id().remove(0);
    for _ in 0..CONNS {
        timeout(LIMIT, client.network().dial_addr(server_addr.clone()))
            .await
            .unwrap()
            .unwrap();
    }
    let payload = vec![7u8; BYTES];
    for _ in 0..STREAMS {
        let mut s = timeout(LIMIT, client.new_stream(server.id(), &[ECHO]))
            .await
            .unwrap()
            .unwrap();
        s.write_all(&payload).await.unwrap();
        s.close_write().await.unwrap();
        let mut back = Vec::new();
        timeout(LIMIT, s.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, payload);
    }
    // A dial that fails: nothing listens on the port any more.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere: Multiaddr = format!("/ip4/127.0.0.1/tcp/{closed_port}").parse().unwrap();
    assert!(client.network().dial_addr(nowhere).await.is_err());

    let tcp_noise = [
        ("transport", "tcp"),
        ("security", "/noise"),
        ("muxer", "/yamux/1.0.0"),
    ];
    let inbound = [&tcp_noise[..], &[("direction", "inbound")]].concat();
    let text = scrape(server_endpoint.local_addr()).await;
    let n = CONNS as f64;
    assert_eq!(
        sample(&text, "strata_connections_opened_total", &inbound),
        Some(n),
        "{text}"
    );
    assert_eq!(
        sample(&text, "strata_handshake_duration_seconds_count", &tcp_noise),
        Some(n)
    );
    let echo_in = [("protocol", ECHO), ("direction", "inbound")];
    assert_eq!(
        sample(&text, "strata_streams_opened_total", &echo_in),
        Some(STREAMS as f64)
    );
    let total = (STREAMS * BYTES) as f64;
    let echo = [("protocol", ECHO)];
    assert_eq!(
        sample(&text, "strata_stream_bytes_received_total", &echo),
        Some(total)
    );
    assert_eq!(
        sample(&text, "strata_stream_bytes_sent_total", &echo),
        Some(total)
    );
    let listener = server.addrs()[0].to_string();
    assert_eq!(
        sample(
            &text,
            "strata_accept_queue_length",
            &[("listener", &listener)]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "strata_rcmgr_connections",
            &[("scope", "system"), ("direction", "inbound")]
        ),
        Some(n)
    );
    assert_eq!(sample(&text, "strata_notifiee_late_total", &[]), Some(0.0));

    let text = scrape(client_endpoint.local_addr()).await;
    let outbound = [&tcp_noise[..], &[("direction", "outbound")]].concat();
    assert_eq!(
        sample(&text, "strata_connections_opened_total", &outbound),
        Some(n)
    );
    let echo_out = [("protocol", ECHO), ("direction", "outbound")];
    assert_eq!(
        sample(&text, "strata_streams_opened_total", &echo_out),
        Some(STREAMS as f64)
    );
    assert_eq!(
        sample(
            &text,
            "strata_dials_completed_total",
            &[("outcome", "success")]
        ),
        Some(n)
    );
    assert_eq!(
        sample(
            &text,
            "strata_dials_completed_total",
            &[("outcome", "failure")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "strata_dial_errors_total",
            &[("transport", "tcp"), ("error", "connection_refused")]
        ),
        Some(1.0),
        "{text}"
    );

    // The client leaves: the server counts every connection closed.
    client.close().await;
    let mut closed = 0;
    while closed < CONNS {
        match timeout(LIMIT, server_events.recv()).await.unwrap() {
            Ok(SwarmEvent::ConnectionClosed { .. }) => closed += 1,
            Ok(_) => {}
            Err(e) => panic!("server events: {e}"),
        }
    }
    let text = scrape(server_endpoint.local_addr()).await;
    assert_eq!(
        sample(&text, "strata_connections_closed_total", &inbound),
        Some(n)
    );
    assert_eq!(
        sample(
            &text,
            "strata_rcmgr_connections",
            &[("scope", "system"), ("direction", "inbound")]
        ),
        Some(0.0)
    );

    server.close().await;
    client_endpoint.close().await;
    server_endpoint.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_refuses_other_requests_and_survives_junk() {
    let mut registry = Registry::default();
    let server = host(&mut registry).await;
    let endpoint = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
        .await
        .unwrap();
    let addr = endpoint.local_addr();

    let answer = http(
        addr,
        b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = http(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    // Not HTTP at all: refused (an error status or a closed connection), nothing more.
    let answer = http(addr, &[0xff; 4096]).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // A client asking to keep the connection gets its answer and then the end of the
    // connection: an idle scraper holds no slot (`http` reads to EOF within its limit).
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("# EOF\n"), "{answer}");
    // Clients that connect and say nothing do not hold up a scrape meanwhile.
    let silent: Vec<TcpStream> =
        futures::future::join_all((0..10).map(|_| TcpStream::connect(addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let text = scrape(addr).await;
    assert!(
        text.contains("strata_accept_queue_length{listener="),
        "{text}"
    );
    drop(silent);

    server.close().await;
    timeout(LIMIT, endpoint.close()).await.unwrap();
}
