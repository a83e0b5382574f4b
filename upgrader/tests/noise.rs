//! Noise over real connections: memory pipes and one TCP loopback connection.

use std::time::Duration;

use strata_core::{BoxRawConn, Keypair, PeerId, RawListener, SecurityError};
use strata_transport::{MemoryTransport, TcpTransport};
use strata_upgrader::security::noise::payload;
use strata_upgrader::{NoiseTransport, SecureTransport, Secured};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const YAMUX: &str = "/yamux/1.0.0";

/// A connected pair over the memory transport: (dialed, accepted).
async fn memory_pair() -> (BoxRawConn, BoxRawConn) {
    let t = MemoryTransport::new();
    let mut l = t.listen_memory(&"/memory/0".parse().unwrap()).unwrap();
    let addr = RawListener::multiaddr(&l).clone();
    let dialed = t.dial_memory(&addr).unwrap();
    let accepted = RawListener::accept(&mut l).await.unwrap();
    (Box::new(dialed), accepted)
}

fn muxers(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Runs both sides of a handshake concurrently.
async fn handshake(
    dialer: &NoiseTransport,
    listener: &NoiseTransport,
    expected: Option<PeerId>,
    dialer_muxers: &[String],
    listener_muxers: &[String],
) -> (
    Result<Secured, SecurityError>,
    Result<Secured, SecurityError>,
) {
    let (dialed, accepted) = memory_pair().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            dialer.secure_outbound(dialed, expected, dialer_muxers),
            listener.secure_inbound(accepted, listener_muxers),
        )
    })
    .await
    .expect("the handshake must not hang")
}

/// Deterministic test data that is not periodic at frame boundaries.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}

#[tokio::test]
async fn handshake_proves_both_peer_ids_and_keys() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let (out, inb) = handshake(
        &NoiseTransport::new(a.clone()),
        &NoiseTransport::new(b.clone()),
        Some(b.public().to_peer_id()),
        &[],
        &[],
    )
    .await;
    let (out, inb) = (out.unwrap(), inb.unwrap());
    assert_eq!(out.remote_peer, b.public().to_peer_id());
    assert_eq!(out.remote_public_key, b.public());
    assert_eq!(inb.remote_peer, a.public().to_peer_id());
    assert_eq!(inb.remote_public_key, a.public());
    assert_eq!(NoiseTransport::new(a).protocol_id(), "/noise");
}

/// Sends `data` on one side while reading on the other, both directions at once, with
/// the given write chunk size and read buffer size.
async fn exchange_both_ways(out: Secured, inb: Secured, write_chunk: usize, read_buf: usize) {
    const LEN: usize = 1024 * 1024;
    let (out_r, out_w) = tokio::io::split(out.io);
    let (in_r, in_w) = tokio::io::split(inb.io);
    let up = pattern(LEN, 3);
    let down = pattern(LEN, 11);

    let send = |mut w: tokio::io::WriteHalf<Box<dyn strata_upgrader::SecureStream>>,
                data: Vec<u8>| {
        tokio::spawn(async move {
            for chunk in data.chunks(write_chunk) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
            w
        })
    };
    let recv = |mut r: tokio::io::ReadHalf<Box<dyn strata_upgrader::SecureStream>>| {
        tokio::spawn(async move {
            let mut got = Vec::with_capacity(LEN);
            let mut buf = vec![0u8; read_buf];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break (got, r);
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
    };
    let tasks = async {
        let s1 = send(out_w, up.clone());
        let s2 = send(in_w, down.clone());
        let r1 = recv(in_r);
        let r2 = recv(out_r);
        // Every half stays alive until both directions are done: TCP connections close
        // with linger 0, so dropping one side early would reset data still in flight.
        let w1 = s1.await.unwrap();
        let w2 = s2.await.unwrap();
        let (got_up, r1) = r1.await.unwrap();
        let (got_down, r2) = r2.await.unwrap();
        drop((w1, w2, r1, r2));
        (got_up, got_down)
    };
    let (got_up, got_down) = tokio::time::timeout(Duration::from_secs(60), tasks)
        .await
        .expect("the transfer must not hang");
    assert!(got_up == up, "dialer to listener data corrupted");
    assert!(got_down == down, "listener to dialer data corrupted");
}

#[tokio::test]
async fn one_mib_each_way_concurrently() {
    let (out, inb) = handshake(
        &NoiseTransport::new(Keypair::generate_ed25519()),
        &NoiseTransport::new(Keypair::generate_ed25519()),
        None,
        &[],
        &[],
    )
    .await;
    // Large writes and reads: frames are sealed from and opened into caller buffers.
    exchange_both_ways(out.unwrap(), inb.unwrap(), 256 * 1024, 128 * 1024).await;
}

#[tokio::test]
async fn one_mib_each_way_in_odd_small_pieces() {
    let (out, inb) = handshake(
        &NoiseTransport::new(Keypair::generate_ed25519()),
        &NoiseTransport::new(Keypair::generate_ed25519()),
        None,
        &[],
        &[],
    )
    .await;
    // Writes that straddle frames and reads smaller than a frame: gathering and partial reads.
    exchange_both_ways(out.unwrap(), inb.unwrap(), 7919, 1000).await;
}

#[tokio::test]
async fn early_muxer_agreed_when_both_offer_yamux() {
    let (out, inb) = handshake(
        &NoiseTransport::new(Keypair::generate_ed25519()),
        &NoiseTransport::new(Keypair::generate_ed25519()),
        None,
        &muxers(&[YAMUX]),
        &muxers(&[YAMUX]),
    )
    .await;
    assert_eq!(out.unwrap().early_muxer.as_deref(), Some(YAMUX));
    assert_eq!(inb.unwrap().early_muxer.as_deref(), Some(YAMUX));
}

#[tokio::test]
async fn early_muxer_follows_the_initiators_order() {
    let (out, inb) = handshake(
        &NoiseTransport::new(Keypair::generate_ed25519()),
        &NoiseTransport::new(Keypair::generate_ed25519()),
        None,
        &muxers(&["/mplex/6.7.0", YAMUX]),
        &muxers(&[YAMUX, "/mplex/6.7.0"]),
    )
    .await;
    assert_eq!(out.unwrap().early_muxer.as_deref(), Some("/mplex/6.7.0"));
    assert_eq!(inb.unwrap().early_muxer.as_deref(), Some("/mplex/6.7.0"));
}

#[tokio::test]
async fn early_muxer_absent_when_one_side_offers_none() {
    for (d, l) in [(muxers(&[YAMUX]), vec![]), (vec![], muxers(&[YAMUX]))] {
        let (out, inb) = handshake(
            &NoiseTransport::new(Keypair::generate_ed25519()),
            &NoiseTransport::new(Keypair::generate_ed25519()),
            None,
            &d,
            &l,
        )
        .await;
        assert_eq!(out.unwrap().early_muxer, None);
        assert_eq!(inb.unwrap().early_muxer, None);
    }
}

#[tokio::test]
async fn wrong_expected_peer_is_a_peer_id_mismatch() {
    let b = Keypair::generate_ed25519();
    let wanted = Keypair::generate_ed25519().public().to_peer_id();
    let (out, inb) = handshake(
        &NoiseTransport::new(Keypair::generate_ed25519()),
        &NoiseTransport::new(b.clone()),
        Some(wanted),
        &[],
        &[],
    )
    .await;
    match out {
        Err(SecurityError::PeerIdMismatch { expected, actual }) => {
            assert_eq!(expected, wanted);
            assert_eq!(actual, b.public().to_peer_id());
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
    // The dialer gave up before sending its identity; the listener sees the connection end.
    assert!(matches!(inb, Err(SecurityError::Io(_))), "{inb:?}");
}

// ---- A hand-driven initiator, to send what a correct NoiseTransport never would. ----

async fn write_frame(io: &mut BoxRawConn, body: &[u8]) {
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    io.write_all(&frame).await.unwrap();
    io.flush().await.unwrap();
}

async fn read_frame(io: &mut BoxRawConn) -> Vec<u8> {
    let mut prefix = [0u8; 2];
    io.read_exact(&mut prefix).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    io.read_exact(&mut body).await.unwrap();
    body
}

/// Runs the initiator's side of XX by hand with `identity`, signing `signed_static`
/// instead of its real static key when given, and returns the transport state.
async fn manual_initiator(
    io: &mut BoxRawConn,
    identity: &Keypair,
    signed_static: Option<&[u8]>,
) -> snow::TransportState {
    let builder = snow::Builder::new("Noise_XX_25519_ChaChaPoly_SHA256".parse().unwrap());
    let static_key = builder.generate_keypair().unwrap();
    let mut hs = builder
        .local_private_key(&static_key.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let n = hs.write_message(&[], &mut buf).unwrap();
    write_frame(io, &buf[..n]).await;
    let msg2 = read_frame(io).await;
    let mut payload_buf = vec![0u8; 65535];
    hs.read_message(&msg2, &mut payload_buf).unwrap();
    let sig = payload::sign_static_key(
        identity,
        signed_static.unwrap_or(static_key.public.as_slice()),
    )
    .unwrap();
    let ours = payload::encode_payload(&identity.public().encode_protobuf(), &sig, &[]);
    let n = hs.write_message(&ours, &mut buf).unwrap();
    write_frame(io, &buf[..n]).await;
    hs.into_transport_mode().unwrap()
}

#[tokio::test]
async fn identity_sig_over_another_static_key_is_an_invalid_payload() {
    let listener = NoiseTransport::new(Keypair::generate_ed25519());
    let (mut dialed, accepted) = memory_pair().await;
    let identity = Keypair::generate_ed25519();
    let (_, inb) = tokio::join!(
        manual_initiator(&mut dialed, &identity, Some(&[42u8; 32])),
        listener.secure_inbound(accepted, &[]),
    );
    assert!(
        matches!(inb, Err(SecurityError::InvalidPayload(_))),
        "{inb:?}"
    );
}

#[tokio::test]
async fn hand_driven_initiator_is_accepted_and_garbage_frames_fail_reads() {
    let listener = NoiseTransport::new(Keypair::generate_ed25519());
    let (mut dialed, accepted) = memory_pair().await;
    let identity = Keypair::generate_ed25519();
    let (mut state, inb) = tokio::join!(
        manual_initiator(&mut dialed, &identity, None),
        listener.secure_inbound(accepted, &[]),
    );
    let inb = inb.unwrap();
    assert_eq!(inb.remote_peer, identity.public().to_peer_id());
    let mut io = inb.io;

    // A valid sealed frame arrives intact.
    let mut sealed = vec![0u8; 65535];
    let n = state.write_message(b"hello", &mut sealed).unwrap();
    write_frame(&mut dialed, &sealed[..n]).await;
    let mut got = [0u8; 5];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");

    // Then a frame of garbage: the read fails with InvalidData, and keeps failing.
    write_frame(&mut dialed, &[0xAB; 40]).await;
    let err = io.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let err = io.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn zero_length_transport_frame_fails_reads() {
    let listener = NoiseTransport::new(Keypair::generate_ed25519());
    let (mut dialed, accepted) = memory_pair().await;
    let identity = Keypair::generate_ed25519();
    let (_state, inb) = tokio::join!(
        manual_initiator(&mut dialed, &identity, None),
        listener.secure_inbound(accepted, &[]),
    );
    let mut io = inb.unwrap().io;
    dialed.write_all(&[0, 0]).await.unwrap();
    let err = io.read(&mut [0u8; 64]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

/// Sends `bytes` raw to a listener, optionally closes, and returns the handshake error.
async fn inbound_error_after(bytes: &[u8], close: bool) -> SecurityError {
    let listener = NoiseTransport::new(Keypair::generate_ed25519());
    let (mut dialed, accepted) = memory_pair().await;
    dialed.write_all(bytes).await.unwrap();
    if close {
        dialed.shutdown().await.unwrap();
    }
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        listener.secure_inbound(accepted, &[]),
    )
    .await
    .expect("a bad peer must not hang the handshake");
    drop(dialed);
    match result {
        Ok(_) => panic!("garbage must not complete a handshake"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn garbage_first_message_is_a_typed_error() {
    // A complete frame that is too short to hold an ephemeral key.
    let e = inbound_error_after(&[0, 5, 1, 2, 3, 4, 5], false).await;
    assert!(matches!(e, SecurityError::Handshake(_)), "{e:?}");
    // An HTTP request: its first two bytes read as a length it never delivers.
    let e = inbound_error_after(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", true).await;
    assert!(matches!(e, SecurityError::Io(_)), "{e:?}");
    // A zero length.
    let e = inbound_error_after(&[0, 0], false).await;
    assert!(matches!(e, SecurityError::Handshake(_)), "{e:?}");
}

#[tokio::test]
async fn length_prefix_then_close_is_a_typed_error() {
    let e = inbound_error_after(&[0x01, 0x00], true).await;
    match e {
        SecurityError::Io(io) => assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("expected Io, got {other:?}"),
    }
    // The same from the dialer's seat: a responder that answers with half a frame.
    let dialer = NoiseTransport::new(Keypair::generate_ed25519());
    let (dialed, mut accepted) = memory_pair().await;
    let peer = tokio::spawn(async move {
        let _msg1 = read_frame(&mut accepted).await;
        accepted.write_all(&[0x00, 0x60, 1, 2, 3]).await.unwrap();
        accepted.shutdown().await.unwrap();
        accepted
    });
    let result = dialer.secure_outbound(dialed, None, &[]).await;
    assert!(matches!(result, Err(SecurityError::Io(_))), "{result:?}");
    drop(peer.await.unwrap());
}

#[tokio::test]
async fn garbage_second_message_is_a_handshake_error() {
    let dialer = NoiseTransport::new(Keypair::generate_ed25519());
    let (dialed, mut accepted) = memory_pair().await;
    let peer = tokio::spawn(async move {
        let _msg1 = read_frame(&mut accepted).await;
        write_frame(&mut accepted, &[0x5A; 200]).await;
        accepted
    });
    let result = dialer.secure_outbound(dialed, None, &[]).await;
    assert!(
        matches!(result, Err(SecurityError::Handshake(_))),
        "{result:?}"
    );
    drop(peer.await.unwrap());
}

#[tokio::test]
async fn handshake_and_data_over_tcp() {
    let t = TcpTransport::default();
    let mut l = t
        .listen_tcp(&"/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let addr = RawListener::multiaddr(&l).clone();
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let dialer = NoiseTransport::new(a.clone());
    let listener = NoiseTransport::new(b.clone());
    let (dialed, accepted) = tokio::join!(t.dial_tcp(&addr), RawListener::accept(&mut l));
    let dialed: BoxRawConn = Box::new(dialed.unwrap());
    let accepted = accepted.unwrap();
    let ours = muxers(&[YAMUX]);
    let (out, inb) = tokio::join!(
        dialer.secure_outbound(dialed, Some(b.public().to_peer_id()), &ours),
        listener.secure_inbound(accepted, &ours),
    );
    let (out, inb) = (out.unwrap(), inb.unwrap());
    assert_eq!(out.remote_peer, b.public().to_peer_id());
    assert_eq!(inb.remote_peer, a.public().to_peer_id());
    assert_eq!(out.early_muxer.as_deref(), Some(YAMUX));
    assert_eq!(inb.early_muxer.as_deref(), Some(YAMUX));
    exchange_both_ways(out, inb, 100_000, 64 * 1024).await;
}
