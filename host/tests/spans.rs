//! Tracing spans: every connection gets a `conn` span naming its peer, address and
//! direction, and every inbound stream a `stream` span that records its protocol once
//! negotiated. Captured with a recording layer over two hosts on real TCP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_host::{Host, HostBuilder, Security};
use tokio::time::timeout;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

mod common;
use common::{echo, serve_echo, ECHO, LIMIT};

/// A span's fields, as text.
type FieldMap = HashMap<String, String>;

/// Every span seen, by ID: its name and its fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<HashMap<u64, (String, FieldMap)>>>);

struct Fields<'a>(&'a mut FieldMap);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").replace('"', ""),
        );
    }
}

impl<S: tracing::Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.insert(id.into_u64(), (attrs.metadata().name().to_string(), fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, fields)) = spans.get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<FieldMap> {
        let spans = self.0.lock().unwrap();
        spans
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

async fn tcp_host() -> Host {
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .security(vec![Security::Tls])
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
    host
}

// One thread: the recording layer is this thread's default subscriber, and every task
// of the hosts runs here.
#[tokio::test]
async fn connections_and_streams_have_spans_with_peer_address_direction_and_protocol() {
    let spans = Spans::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

    let server = tcp_host().await;
    serve_echo(&server);
    let client = tcp_host().await;
    let server_addr = server.addrs()[0].clone();
    timeout(
        LIMIT,
        client.connect(server.id(), std::slice::from_ref(&server_addr)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(echo(&client, server.id(), b"hello").await, b"hello");

    let conns = spans.named("conn");
    let outbound = conns
        .iter()
        .find(|f| f.get("direction").map(String::as_str) == Some("Outbound"))
        .unwrap_or_else(|| panic!("no outbound conn span in {conns:?}"));
    assert_eq!(outbound["peer"], server.id().to_string());
    assert_eq!(outbound["addr"], server_addr.to_string());
    let inbound = conns
        .iter()
        .find(|f| f.get("direction").map(String::as_str) == Some("Inbound"))
        .unwrap_or_else(|| panic!("no inbound conn span in {conns:?}"));
    assert_eq!(inbound["peer"], client.id().to_string());
    assert!(inbound["addr"].starts_with("/ip4/127.0.0.1/tcp/"));

    let streams = spans.named("stream");
    let echo = streams
        .iter()
        .find(|f| f.get("protocol").map(String::as_str) == Some(ECHO))
        .unwrap_or_else(|| panic!("no stream span with the echo protocol in {streams:?}"));
    assert_eq!(echo["peer"], client.id().to_string());
    assert_eq!(echo["direction"], "inbound");

    client.close().await;
    server.close().await;
}
