//! End-to-end tests of the QUIC servers and clients on loopback (raw QUIC and both
//! WebTransport stacks), with the mock at a short TBT: bad framing resets a stream and
//! not its connection, each stack's client against the other's server, datagrams and
//! their tally, many streams and sessions at once, and the client's SETTINGS in one
//! piece.

mod common;

use common::*;
use lab_clients::record::{Mode, digest_tokens};
use lab_clients::run_all;
use lab_codec::trust::Trust;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Raw QUIC: bad framing and an oversize message reset that stream only; the same
/// connection then answers two prompts on one stream; ALPN other than lab-quic is
/// refused in the handshake.
#[tokio::test]
async fn raw_quic_bad_framing_and_oversize_reset_the_stream_not_the_connection() {
    use wtransport::quinn;
    let stack = stack(5).await;
    let addr = stack.addr(ap("quic"));
    let client = |tls: rustls::ClientConfig| {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        ep
    };
    // HTTP/3's ALPN is not this server's protocol: the handshake fails.
    let h3 = client(stack.trust().h3_client_config().unwrap());
    let refused = h3.connect(addr, "localhost").unwrap().await;
    assert!(refused.is_err(), "{refused:?}");

    let ep = client(stack.trust().quic_client_config().unwrap());
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let read_all = |mut recv: quinn::RecvStream| async move {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => out.extend_from_slice(&buf[..n]),
                Ok(None) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    };
    // Bad framing, a cut-off message, and messages over the 1 MiB limit.
    let oversize = format!("{}:", 1024 * 1024 + 1);
    for bad in [
        &b"abc:hello"[..],
        b"5:hel",
        b"12x",
        b"99999999:",
        oversize.as_bytes(),
    ] {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(bad).await.unwrap();
        let _ = send.finish();
        match read_all(recv).await {
            Err(quinn::ReadError::Reset(code)) => assert_eq!(
                code,
                quinn::VarInt::from_u32(lab_codec::wt::ERR_FRAMING),
                "{bad:?}"
            ),
            other => panic!("{bad:?}: expected a reset, got {other:?}"),
        }
    }
    // The same connection: two prompts on one stream, two answers, each ended by 0:.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(b"2:hi5:hello").await.unwrap();
    send.finish().unwrap();
    let answers = lenprefix_answers(&read_all(recv).await.unwrap());
    assert_eq!(
        answers,
        vec![expected("hi", 5), expected("hello", 5), vec![]]
    );
    // The urgent marker before a prompt raises the stream's priority; it is not a
    // prompt, and gets no answer of its own.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut ask = bytes::BytesMut::new();
    lab_codec::lenprefix::encode(lab_codec::wt::URGENT, &mut ask).unwrap();
    ask.extend_from_slice(b"2:hi");
    send.write_all(&ask).await.unwrap();
    send.finish().unwrap();
    assert_eq!(
        lenprefix_answers(&read_all(recv).await.unwrap()),
        vec![expected("hi", 5), vec![]]
    );
    assert_eq!(stack.stats(ap("quic")).snapshot().errors, 5);
    assert!(conn.close_reason().is_none(), "the connection survived");
}

/// Both WebTransport servers (wtransport's `wt`, web-transport-quinn's `wtq`), to
/// wtransport's client: another path is refused, bad framing resets that stream only,
/// and the session then answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_bad_framing_resets_the_stream_not_the_session() {
    let stack = stack(5).await;
    for name in ["wt", "wtq"] {
        // Any other path: 404, the session is refused.
        let path = ap(name).path;
        let conn = wt_session(&stack, name, path, "/nope").await;
        // The last: an answer-length message without a length.
        wt_bad_framing_resets(
            &conn,
            &[
                &b"abc:hello"[..],
                b"5:hel",
                b"12x",
                b"99999999:",
                b"13:\0answer_len=0",
            ],
        )
        .await;
        // Same session, two prompts on one stream: two answers, each ended by 0:.
        let (mut send, recv) = conn.open_bi().await.unwrap().await.unwrap();
        send.write_all(b"2:hi5:hello").await.unwrap();
        send.finish().await.unwrap();
        let answers = lenprefix_answers(&wt_read_all(recv).await.unwrap());
        assert_eq!(
            answers,
            vec![expected("hi", 5), expected("hello", 5), vec![]],
            "{name}"
        );
        assert_eq!(stack.stats(ap(name)).snapshot().errors, 5, "{name}");
    }
}

/// Each stack's client against the other stack's server, streams and datagrams: the
/// same tokens as the mock's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webtransport_stacks_client_talks_to_the_other_stacks_server() {
    let stack = stack(20).await;
    for (client, server) in [
        ("wt", "wtq"),
        ("wtq", "wt"),
        ("wt-dgram", "wtq-dgram"),
        ("wtq-dgram", "wt-dgram"),
    ] {
        let (c, s) = (ap(client), ap(server));
        let opts = stack.runner_opts(c, Mode::Reuse, TIMEOUT);
        let mut r = c.runner(&s.url(stack.addr(s)), &opts).unwrap();
        // The second asks for its answer's length, which the other stack's server
        // must read from the answer-length message.
        let prompts = [
            lab_clients::Prompt::new("hi"),
            lab_clients::Prompt::new("hello there").with_len(Some(7)),
        ];
        let recs = run_all(r.as_mut(), &prompts, 1, |_| {}).await;
        for (rec, p) in recs.iter().zip(&prompts) {
            assert!(rec.error.is_none(), "{client} to {server}: {:?}", rec.error);
            let want = lab_servers::textgen::sized(
                1,
                MODEL,
                &p.text,
                p.max_tokens.map(|n| n as usize),
                Some(20),
            );
            assert_eq!(rec.tokens, want.len(), "{client} to {server}: {p:?}");
            assert_eq!(rec.digest, digest_tokens(&want), "{client} to {server}");
        }
        r.close().await;
    }
}

/// WebTransport datagrams: the wrong session path is refused; bad framing and an
/// oversize prompt reset that stream only; then the same session answers two prompts on
/// one stream, each token in a datagram naming the stream, with sequence numbers running
/// on across the answers, and each answer's tally and `0:` on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_datagrams_carry_the_tokens_and_the_stream_their_tally() {
    let stack = stack(5).await;
    for (name, streams_path) in [("wt-dgram", "/wt"), ("wtq-dgram", "/wtq")] {
        datagrams_carry_the_tokens(&stack, name, streams_path).await;
    }
}

async fn datagrams_carry_the_tokens(stack: &lab::loopback::Stack, name: &str, refused: &str) {
    use lab_codec::dgram::{Tally, decode};
    // The streams server's path is not this server's.
    let conn = wt_session(stack, name, ap(name).path, refused).await;
    let oversize = format!("{}:", 1024 * 1024 + 1);
    wt_bad_framing_resets(
        &conn,
        &[&b"abc:hello"[..], b"5:hel", b"12x", oversize.as_bytes()],
    )
    .await;
    // Two prompts on one stream.
    let (mut send, recv) = conn.open_bi().await.unwrap().await.unwrap();
    let sid = wtransport::VarInt::from(send.id()).into_inner();
    send.write_all(b"2:hi5:hello").await.unwrap();
    send.finish().await.unwrap();
    let stream = lenprefix_answers(&wt_read_all(recv).await.unwrap());
    let (a, b) = (expected("hi", 5), expected("hello", 5));
    let tally = |t: &[String]| Tally {
        tokens: t.len() as u64,
        bytes: t.iter().map(|x| x.len() as u64).sum(),
    };
    assert_eq!(
        stream,
        vec![vec![tally(&a).message()], vec![tally(&b).message()], vec![]],
        "{name}"
    );
    // Loopback loses nothing: every token came, in order, numbered on from 0.
    let mut got = Vec::new();
    while got.len() < a.len() + b.len() {
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), conn.receive_datagram())
            .await
            .expect("all datagrams within 5 s")
            .unwrap();
        let p = d.payload();
        let t = decode(&p).unwrap();
        assert_eq!(t.stream, sid, "{name}");
        got.push((t.seq, t.token.to_owned()));
    }
    got.sort();
    let want: Vec<(u64, String)> = a
        .iter()
        .chain(&b)
        .cloned()
        .enumerate()
        .map(|(i, t)| (i as u64, t))
        .collect();
    assert_eq!(got, want, "{name}");
    assert_eq!(stack.stats(ap(name)).snapshot().errors, 4, "{name}");
    assert!(
        futures_util::FutureExt::now_or_never(conn.closed()).is_none(),
        "{name}: the session survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_webtransport_streams_and_sessions() {
    let stack = stack(20).await;
    for name in ["wt", "wtq"] {
        many_streams_and_sessions(&stack, name).await;
    }
}

/// Four sessions of 25 streams each to `name`'s server, from wtransport's client.
async fn many_streams_and_sessions(stack: &lab::loopback::Stack, name: &str) {
    let trust = stack.trust();
    let mut tasks = Vec::new();
    for s in 0..4 {
        let tls = trust.h3_client_config().unwrap();
        let url = ap(name).url(stack.addr(ap(name)));
        tasks.push(tokio::spawn(async move {
            let cfg = wtransport::ClientConfig::builder()
                .with_bind_address("127.0.0.1:0".parse().unwrap())
                .with_custom_tls(tls)
                .build();
            let ep = lab_clients::quic_rt::WtClient::new(cfg).unwrap();
            let conn = ep.connect(url).await.unwrap();
            let mut streams = Vec::new();
            for i in 0..25 {
                let prompt = format!("session {s} stream {i}");
                let (mut send, mut recv) = conn.open_bi().await.unwrap().await.unwrap();
                streams.push(tokio::spawn(async move {
                    let mut m = bytes::BytesMut::new();
                    lab_codec::lenprefix::encode(prompt.as_bytes(), &mut m).unwrap();
                    send.write_all(&m).await.unwrap();
                    send.finish().await.unwrap();
                    let mut bytes = Vec::new();
                    let mut buf = vec![0u8; 4096];
                    while let Some(n) = recv.read(&mut buf).await.unwrap() {
                        bytes.extend_from_slice(&buf[..n]);
                    }
                    // One answer, ended by 0:, then the end of the stream.
                    assert_eq!(
                        lenprefix_answers(&bytes),
                        vec![expected(&prompt, 20), vec![]],
                        "{prompt}"
                    );
                }));
            }
            for s in streams {
                s.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snap = stack.stats(ap(name)).snapshot();
    assert_eq!(snap.connections_accepted, 4, "{name}");
    assert_eq!(snap.requests, 100, "{name}");
}

/// Everything a WebTransport stream delivers until its end, or how it failed.
async fn wt_read_all(
    mut recv: wtransport::RecvStream,
) -> Result<Vec<u8>, wtransport::error::StreamReadError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Some(n) = recv.read(&mut buf).await? {
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// A WebTransport session to `approach`'s server on `path`, after checking that
/// `refused` gets the session refused (404).
async fn wt_session(
    stack: &lab::loopback::Stack,
    approach: &str,
    path: &str,
    refused: &str,
) -> wtransport::Connection {
    let addr = stack.addr(ap(approach));
    let cfg = wtransport::ClientConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().unwrap())
        .with_custom_tls(stack.trust().h3_client_config().unwrap())
        .build();
    let ep = lab_clients::quic_rt::WtClient::new(cfg).unwrap();
    let e = ep
        .connect(format!("https://{addr}{refused}"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, wtransport::error::ConnectingError::SessionRejected),
        "{e:?}"
    );
    ep.connect(format!("https://{addr}{path}")).await.unwrap()
}

/// Each of `bad` on a stream of its own is reset with the framing error code.
async fn wt_bad_framing_resets(conn: &wtransport::Connection, bad: &[&[u8]]) {
    for bad in bad {
        let (mut send, recv) = conn.open_bi().await.unwrap().await.unwrap();
        send.write_all(bad).await.unwrap();
        let _ = send.finish().await;
        match wt_read_all(recv).await {
            // On the wire, in the HTTP/3 range that WebTransport's codes map into.
            Err(wtransport::error::StreamReadError::Reset(code)) => assert_eq!(
                code.into_inner(),
                lab_codec::wt::to_http3(lab_codec::wt::ERR_FRAMING),
                "{bad:?}"
            ),
            other => panic!("{bad:?}: expected a reset, got {other:?}"),
        }
    }
}

/// How the first piece of a WebTransport client's control stream came in: the stream
/// type, and whether the whole SETTINGS frame came with it: how many of `sessions`
/// control streams came in pieces.
async fn control_stream_pieces(sessions: usize) -> usize {
    use wtransport::quinn;
    let ck = lab_servers::tls::CertKey::generate(&["localhost".into()]).unwrap();
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(ck.h3_server_config().unwrap()).unwrap();
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let url = format!(
        "https://localhost:{}/wt",
        server.local_addr().unwrap().port()
    );
    let trust = Trust::from_args(Some(&ck.sha256_hex()), None, false).unwrap();
    let mut split = 0;
    for _ in 0..sessions {
        let cfg = wtransport::ClientConfig::builder()
            .with_bind_address("127.0.0.1:0".parse().unwrap())
            .with_custom_tls(trust.h3_client_config().unwrap())
            .build();
        // The session never sets up (this server sends no SETTINGS): the client's
        // driver sends its control stream all the same.
        let ep = lab_clients::quic_rt::WtClient::new(cfg).unwrap();
        let url = url.clone();
        let client = tokio::spawn(async move {
            let _ = ep.connect(url).await;
        });
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut control = conn.accept_uni().await.unwrap();
        let first = control.read_chunk(1024, true).await.unwrap().unwrap().bytes;
        // 0x00 (a control stream), then SETTINGS: type 0x04, a length, the payload.
        assert_eq!(first[0], 0x00, "{first:?}");
        let whole = first.len() >= 3 && first[1] == 0x04 && {
            let len = first[2];
            // Lengths under 64 take one byte; wtransport's settings take about 20.
            assert!(len < 64, "{first:?}");
            first.len() >= 3 + len as usize
        };
        split += usize::from(!whole);
        conn.close(0u32.into(), b"");
        client.abort();
    }
    split
}

/// wtransport 0.7.2's server loses a client's SETTINGS frame that comes in pieces while
/// the CONNECT request arrives (servers/tests/webtransport_libraries.rs); lab's clients
/// keep each endpoint on a single-threaded runtime so that the frame leaves whole. (With
/// wtransport's endpoint on this test's runtime instead, 8 of 1,000 came in pieces.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wt_clients_settings_leave_in_one_piece() {
    let split = control_stream_pieces(200).await;
    assert_eq!(split, 0, "of 200 sessions' control streams");
}
