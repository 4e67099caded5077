//! What lab found in its two WebTransport libraries, each shown by a minimal test that
//! fails once the library changes, so that lab's workaround can go.
//!
//! 1. web-transport-quinn 0.13.5's `Request::reject` closes the HTTP/3 control streams
//!    (below); lab's `wtq` server answers a refusal another way.
//! 3. wtransport 0.7.2 puts a stream's reset code on the wire as it is given, and hands
//!    over the one it receives as it came, where WebTransport maps application codes
//!    into an HTTP/3 range (draft-ietf-webtrans-http3, "Resetting Data Streams"), as
//!    web-transport-quinn and browsers do. lab maps them itself around wtransport
//!    (`lab_codec::wt::to_http3`, `from_http3`).
//! 2. wtransport 0.7.2's server loses a client's SETTINGS frame that arrives in pieces
//!    while a request stream comes in (the rest of this file).
//!
//! Its connection driver reads the control stream inside a `tokio::select!` that it
//! builds again on every turn of its loop, and a frame is read in three awaits (type,
//! length, payload). When the driver has read the frame's type and waits for the rest,
//! and another branch fires (the CONNECT request's stream arriving), the read is
//! dropped with the type byte it consumed. The next read starts in the middle of the
//! frame: the server then never sees the client's SETTINGS and never answers the
//! CONNECT (lab's server closes such a session at its header deadline), or it takes
//! the rest for another frame and closes the connection with an HTTP/3 error.
//!
//! wtransport's own client writes a frame in three writes, so with a multi-threaded
//! runtime its SETTINGS can leave in more than one packet: lab's clients run each
//! endpoint on a single-threaded runtime so that they cannot (`lab_clients::quic_rt`).
//! These tests are a raw QUIC client playing the HTTP/3 client by hand, so that the
//! frame arrives split on purpose. If wtransport mends this, the split case's test
//! fails, and the workaround can go. web-transport-quinn (lab's second stack, `wtq`)
//! reads the SETTINGS frame to its end before it looks for the request, and sets the
//! same session up.

use lab_codec::transport::Quic;
use lab_codec::trust::Trust;
use lab_servers::tls::CertKey;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use wtransport::proto::frame::Frame;
use wtransport::proto::session::SessionRequest;
use wtransport::proto::settings::Settings;
use wtransport::quinn;

fn bytes(f: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    f.write(&mut out).expect("a Vec takes any frame");
    out
}

/// What a WebTransport client's control stream carries: the stream type (0x00,
/// control), then its SETTINGS frame.
fn control_stream() -> Vec<u8> {
    let settings = Settings::builder()
        .qpack_max_table_capacity(0u32.into())
        .qpack_blocked_streams(0u32.into())
        .enable_webtransport()
        .enable_h3_datagrams()
        .webtransport_max_sessions(1u32.into())
        .build();
    let mut out = vec![0x00];
    out.extend(bytes(&settings.generate_frame()));
    out
}

/// The WebTransport server under test.
#[derive(Clone, Copy)]
enum Stack {
    Wtransport,
    WebTransportQuinn,
}

/// Starts a server of `stack` on loopback, and a task that reports the first session
/// request it gets (or the error that ended the connection).
async fn server(
    stack: Stack,
) -> (
    SocketAddr,
    String,
    tokio::sync::oneshot::Receiver<Result<String, String>>,
) {
    let ck = CertKey::generate(&["localhost".into()]).unwrap();
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = udp.local_addr().unwrap();
    let tls = ck.h3_server_config().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    match stack {
        Stack::Wtransport => {
            let endpoint = lab_servers::wt::endpoint(udp, tls, &Quic::default()).unwrap();
            tokio::spawn(async move {
                let got = match endpoint.accept().await.await {
                    Ok(req) => Ok(req.path().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(got);
                // Keep the endpoint until the test has its answer.
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
        Stack::WebTransportQuinn => {
            let endpoint = lab_servers::quic::endpoint(udp, tls, &Quic::default()).unwrap();
            tokio::spawn(async move {
                let incoming = endpoint.accept().await.unwrap();
                // As lab's wtq server takes it: in 0.5-RTT.
                let (conn, _) = incoming.accept().unwrap().into_0rtt().ok().unwrap();
                let got = match web_transport_quinn::Request::accept(conn).await {
                    Ok(req) => Ok(req.url.path().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(got);
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    }
    (addr, ck.sha256_hex(), rx)
}

/// Connects as an HTTP/3 client would, with the control stream's bytes written in
/// `pieces` (a pause after each), and the CONNECT request sent after piece `connect_after`
/// (counted from 0). What the server made of it, or `None` if it had nothing in 2 s.
async fn session(
    stack: Stack,
    pieces: &[&[u8]],
    connect_after: usize,
) -> Option<Result<String, String>> {
    let (addr, pin, got) = server(stack).await;
    let tls = Trust::from_args(Some(&pin), None, false)
        .unwrap()
        .h3_client_config()
        .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let mut control = conn.open_uni().await.unwrap();
    let request = SessionRequest::new(format!("https://localhost:{}/wt", addr.port())).unwrap();
    let connect = bytes(&request.headers().generate_frame());
    let mut request_stream = None;
    for (i, piece) in pieces.iter().enumerate() {
        control.write_all(piece).await.unwrap();
        // Time for the server to read this piece and wait for the next.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if i == connect_after {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&connect).await.unwrap();
            request_stream = Some((send, recv));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(2), got)
        .await
        .ok()
        .map(|r| r.unwrap());
    drop(request_stream);
    conn.close(0u32.into(), b"");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_frame_before_the_request_sets_the_session_up() {
    let stream = control_stream();
    for stack in [Stack::Wtransport, Stack::WebTransportQuinn] {
        let whole = session(stack, &[&stream], 0).await;
        assert_eq!(whole, Some(Ok("/wt".to_string())));
        // In pieces is fine too, as long as nothing else comes in between.
        let split = session(stack, &[&stream[..2], &stream[2..]], 1).await;
        assert_eq!(split, Some(Ok("/wt".to_string())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_frame_split_around_the_request_is_lost_by_wtransport_0_7() {
    let stream = control_stream();
    // The stream type and the frame's type byte, then (after the CONNECT) the rest.
    let got = session(Stack::Wtransport, &[&stream[..2], &stream[2..]], 0).await;
    // What it makes of the rest depends on the bytes (and the settings' order, which is
    // a hash map's): it waits for a frame that never ends, or closes the connection
    // with an HTTP/3 error (here mostly H3_EXCESSIVE_LOAD, 0x107).
    assert!(
        !matches!(got, Some(Ok(_))),
        "the server set the session up: wtransport now reads a SETTINGS frame that comes \
         in pieces, and lab_clients::quic_rt's workaround may go ({got:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_transport_quinn_sets_up_a_session_whose_settings_came_split_around_the_request() {
    let stream = control_stream();
    let got = session(Stack::WebTransportQuinn, &[&stream[..2], &stream[2..]], 0).await;
    assert_eq!(got, Some(Ok("/wt".to_string())));
}

/// web-transport-quinn 0.13.5's `Request::reject` drops the request's HTTP/3 control
/// streams: the client's control stream is stopped (STOP_SENDING) and the server's
/// finished. RFC 9114 (6.2.1) makes closing a control stream a connection error
/// (H3_CLOSED_CRITICAL_STREAM), so a strict client such as aioquic ends the connection
/// before it reads the 404. lab's `wtq` server refuses a session with a 404 response
/// that keeps them (`servers/src/wtq.rs`; `lab/tests/peers.rs` checks aioquic gets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_transport_quinns_reject_closes_the_http3_control_streams() {
    let ck = CertKey::generate(&["localhost".into()]).unwrap();
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = udp.local_addr().unwrap();
    let endpoint =
        lab_servers::quic::endpoint(udp, ck.h3_server_config().unwrap(), &Quic::default()).unwrap();
    tokio::spawn(async move {
        let incoming = endpoint.accept().await.unwrap();
        let (conn, _) = incoming.accept().unwrap().into_0rtt().ok().unwrap();
        let req = web_transport_quinn::Request::accept(conn.clone())
            .await
            .unwrap();
        req.reject(http::StatusCode::NOT_FOUND).await.unwrap();
        // The connection stays: only the request is gone.
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(conn);
    });
    let tls = Trust::from_args(Some(&ck.sha256_hex()), None, false)
        .unwrap()
        .h3_client_config()
        .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let mut control = conn.open_uni().await.unwrap();
    control.write_all(&control_stream()).await.unwrap();
    let request = SessionRequest::new(format!("https://localhost:{}/other", addr.port())).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&bytes(&request.headers().generate_frame()))
        .await
        .unwrap();
    // The 404 comes on the request stream ...
    let answer = tokio::time::timeout(Duration::from_secs(2), recv.read_to_end(4096))
        .await
        .expect("the response within 2 s")
        .unwrap();
    assert!(!answer.is_empty(), "no response");
    // ... and the client's control stream, a critical stream, is stopped.
    let stopped = tokio::time::timeout(Duration::from_secs(2), control.stopped()).await;
    assert!(
        matches!(stopped, Ok(Ok(Some(_)))),
        "web-transport-quinn kept the control stream on reject ({stopped:?}): the workaround in servers/src/wtq.rs may go"
    );
    conn.close(0u32.into(), b"");
}

/// A wtransport server session on loopback whose first stream is reset with `code`
/// (wtransport's `reset`, as given); its address and certificate pin.
async fn wtransport_resets_with(code: u32) -> (SocketAddr, String) {
    let ck = CertKey::generate(&["localhost".into()]).unwrap();
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = udp.local_addr().unwrap();
    let endpoint =
        lab_servers::wt::endpoint(udp, ck.h3_server_config().unwrap(), &Quic::default()).unwrap();
    tokio::spawn(async move {
        let conn = endpoint
            .accept()
            .await
            .await
            .unwrap()
            .accept()
            .await
            .unwrap();
        let (mut send, _recv) = conn.accept_bi().await.unwrap();
        send.reset(wtransport::VarInt::from_u32(code)).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    (addr, ck.sha256_hex())
}

/// A web-transport-quinn server session on loopback whose first stream is reset with
/// `code`; its address and certificate pin.
async fn web_transport_quinn_resets_with(code: u32) -> (SocketAddr, String) {
    let ck = CertKey::generate(&["localhost".into()]).unwrap();
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = udp.local_addr().unwrap();
    let endpoint =
        lab_servers::quic::endpoint(udp, ck.h3_server_config().unwrap(), &Quic::default()).unwrap();
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let req = web_transport_quinn::Request::accept(conn).await.unwrap();
        let session = req.ok().await.unwrap();
        let (mut send, _recv) = session.accept_bi().await.unwrap();
        send.reset(code).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    (addr, ck.sha256_hex())
}

fn quinn_client(pin: &str) -> quinn::Endpoint {
    let tls = Trust::from_args(Some(pin), None, false)
        .unwrap()
        .h3_client_config()
        .unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    client
}

/// (Current-thread runtime: wtransport's client then sends its SETTINGS whole.)
#[tokio::test]
async fn wtransport_sends_and_reads_reset_codes_unmapped() {
    let code = lab_codec::wt::ERR_FRAMING;
    // wtransport's reset, read by web-transport-quinn: the raw code is outside the
    // WebTransport range, so web-transport-quinn cannot take it for one.
    let (addr, pin) = wtransport_resets_with(code).await;
    let conn = quinn_client(&pin)
        .connect(addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let url = url_of(addr);
    let session = web_transport_quinn::Session::connect(conn, url)
        .await
        .unwrap();
    let (mut send, mut recv) = session.open_bi().await.unwrap();
    send.write_all(b"1:x").await.unwrap();
    let got = recv.read(&mut [0u8; 64]).await;
    assert!(
        matches!(got, Err(web_transport_quinn::ReadError::InvalidReset(v)) if v.into_inner() == u64::from(code)),
        "wtransport now maps its reset codes ({got:?}): lab's mapping around it (servers/src/streams.rs) may go"
    );
    // web-transport-quinn's reset, read by wtransport: the code on the wire is the
    // mapped one, and wtransport hands it over unmapped.
    let (addr, pin) = web_transport_quinn_resets_with(code).await;
    let cfg = wtransport::ClientConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().unwrap())
        .with_custom_tls(
            Trust::from_args(Some(&pin), None, false)
                .unwrap()
                .h3_client_config()
                .unwrap(),
        )
        .build();
    let ep = wtransport::Endpoint::client(cfg).unwrap();
    let conn = ep.connect(url_of(addr).to_string()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap().await.unwrap();
    send.write_all(b"1:x").await.unwrap();
    let got = recv.read(&mut [0u8; 64]).await;
    assert!(
        matches!(&got, Err(wtransport::error::StreamReadError::Reset(v)) if v.into_inner() == lab_codec::wt::to_http3(code)),
        "wtransport now maps the reset codes it reads ({got:?}): lab's mapping around it (clients/src/streams.rs) may go"
    );
}

fn url_of(addr: SocketAddr) -> url::Url {
    url::Url::parse(&format!("https://localhost:{}/wt", addr.port())).unwrap()
}
