//! Every server under slow and idle clients: a request head trickled a byte a second
//! (slowloris), a TLS handshake never finished, a connection left idle and a WebTransport
//! session with no stream are closed by their deadlines, while a normal client is served
//! meanwhile. Also the mock's and the proxy's answers to oversized heads and broken
//! bodies, as documented.

mod common;

use common::*;
use lab_codec::trust::Trust;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server started with short deadlines: header 1 s, idle 2 s.
fn quick(server: &str, upstream: &str) -> Server {
    let mut args = vec![
        "serve",
        server,
        "--listen",
        "127.0.0.1:0",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "2s",
    ];
    if server != "llm" {
        args.extend(["--upstream", upstream]);
    }
    Server::start(&args)
}

fn addr(s: &Server) -> SocketAddr {
    s.str("listen").parse().unwrap()
}

/// Waits until the peer closes `s` (EOF or reset), writing `drip` one byte a second
/// meanwhile; returns how long the server took, or panics after `max`.
fn closed_after(s: &mut dyn ReadWrite, drip: &[u8], max: Duration) -> Duration {
    let t0 = Instant::now();
    let mut i = 0;
    let mut buf = [0u8; 4096];
    loop {
        if i < drip.len() && s.write_all(&drip[i..i + 1]).is_err() {
            return t0.elapsed();
        }
        i += 1;
        match s.read(&mut buf) {
            Ok(0) | Err(_) if !would_block(s) => return t0.elapsed(),
            _ => {}
        }
        assert!(t0.elapsed() < max, "still open after {max:?}");
    }
}

trait ReadWrite: Read + Write {
    fn timed_out(&self) -> bool;
}

/// Whether the last read only timed out (the connection is still open).
fn would_block(s: &dyn ReadWrite) -> bool {
    s.timed_out()
}

/// A TCP stream whose reads wait at most a second.
struct Tcp {
    s: TcpStream,
    timed_out: bool,
}

impl Tcp {
    fn connect(a: SocketAddr) -> Tcp {
        let s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        Tcp {
            s,
            timed_out: false,
        }
    }
}

impl Read for Tcp {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let r = self.s.read(b);
        self.timed_out = matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
        r
    }
}
impl Write for Tcp {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.s.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}
impl ReadWrite for Tcp {
    fn timed_out(&self) -> bool {
        self.timed_out
    }
}

/// A TLS stream over [`Tcp`], handshake done.
struct Tls {
    s: rustls::StreamOwned<rustls::ClientConnection, Tcp>,
}

impl Tls {
    fn connect(a: SocketAddr, trust: &Trust) -> Tls {
        let cfg = Arc::new(trust.http1_client_config().unwrap());
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(cfg, name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, Tcp::connect(a));
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        Tls { s }
    }
}

impl Read for Tls {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.s.read(b)
    }
}
impl Write for Tls {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.s.write(b)?;
        self.s.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}
impl ReadWrite for Tls {
    fn timed_out(&self) -> bool {
        self.s.sock.timed_out
    }
}

fn trust_of(s: &Server) -> Trust {
    Trust::Pin(lab_codec::trust::parse_pin(&s.str("cert_sha256")).unwrap())
}

/// Sends one whole request on `s` and reads its whole answer, then waits: how long
/// until the server closes the connection.
fn idle_after_one_request(s: &mut Tls, server: &str) -> Duration {
    let (path, body) = match server {
        "sse" => ("/chat", r#"{"message":"hi"}"#.to_owned()),
        _ => (
            "/v1/chat/completions",
            r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"hi"}],"stream":true}"#
                .to_owned(),
        ),
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    // The answer is chunked; it ends with the last chunk.
    while !got.ends_with(b"0\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => panic!("{server} closed before answering"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if s.timed_out() => {}
            Err(e) => panic!("{server}: {e}"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{server}: no whole answer"
        );
    }
    closed_after(s, b"", Duration::from_secs(8))
}

const HEAD: &[u8] = b"POST /chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n";

#[test]
fn http_servers_close_slowloris_unfinished_handshakes_and_idle_connections() {
    let llm = mock();
    let up = base(&llm.str("url"));
    for server in ["sse", "proxy"] {
        let srv = quick(server, &up);
        let (a, t) = (addr(&srv), trust_of(&srv));
        // Slowloris: a byte a second of a head that never ends.
        let took = closed_after(&mut Tls::connect(a, &t), HEAD, Duration::from_secs(8));
        assert!(
            took < Duration::from_secs(4),
            "{server}: slowloris for {took:?}"
        );
        // A TCP connection that never starts TLS.
        let took = closed_after(&mut Tcp::connect(a), b"", Duration::from_secs(8));
        assert!(
            took < Duration::from_secs(4),
            "{server}: handshake for {took:?}"
        );
        // A TLS connection that never sends a request: closed by the header deadline.
        let took = closed_after(&mut Tls::connect(a, &t), b"", Duration::from_secs(8));
        assert!(
            took < Duration::from_secs(3),
            "{server}: no request for {took:?}"
        );
        // A kept-alive connection that asks nothing more after its answer: closed by
        // the header deadline too.
        let mut kept = Tls::connect(a, &t);
        let took = idle_after_one_request(&mut kept, server);
        assert!(
            took < Duration::from_secs(3),
            "{server}: kept alive for {took:?}"
        );
        // A request whose body stops coming: the idle timeout (2 s) ends it.
        let mut stalled = Tls::connect(a, &t);
        stalled
            .write_all(b"POST /chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        let took = closed_after(&mut stalled, b"", Duration::from_secs(8));
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "{server}: a stalled body for {took:?}"
        );
        // Meanwhile, and after, a normal client is served.
        let mut slow = Tls::connect(a, &t);
        slow.write_all(b"POST /chat HTTP/1.1\r\n").unwrap();
        let url = srv.str("url");
        let out = std::process::Command::new(LAB)
            .args([
                "client",
                if server == "sse" { "sse" } else { "raw" },
                "--url",
                &url,
            ])
            .args(["--cert-hash", &srv.str("cert_sha256"), "--json"])
            .args(["--prompts", "/dev/stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(b"hi\n")?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{server}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(srv.stop());
    }
}

#[test]
fn the_mock_closes_slowloris_and_idle_connections_and_answers_431() {
    let llm = quick("llm", "");
    let a = addr(&llm);
    let took = closed_after(
        &mut Tcp::connect(a),
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaa\r\n",
        Duration::from_secs(8),
    );
    assert!(took < Duration::from_secs(4), "slowloris for {took:?}");
    // No request at all, or none after an answer: the header deadline. A body that
    // stops coming: the idle timeout.
    let took = closed_after(&mut Tcp::connect(a), b"", Duration::from_secs(8));
    assert!(took < Duration::from_secs(3), "no request for {took:?}");
    let mut kept = Tcp::connect(a);
    kept.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_after(&mut kept, b"", Duration::from_secs(8));
    assert!(took < Duration::from_secs(3), "kept alive for {took:?}");
    let mut stalled = Tcp::connect(a);
    stalled
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let took = closed_after(&mut stalled, b"", Duration::from_secs(8));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "a stalled body for {took:?}"
    );
    let status = |head: Vec<u8>| {
        let mut s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&head);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().unwrap_or_default().to_owned()
    };
    // A 70 KB head, whole, and 5,000 header fields: 431, as documented.
    let mut big = b"GET /v1/models HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend(b"\r\n\r\n");
    assert_eq!(status(big), "HTTP/1.1 431 Request Header Fields Too Large");
    let mut many = b"GET /v1/models HTTP/1.1\r\n".to_vec();
    for i in 0..5000 {
        many.extend(format!("X-H{i}: v\r\n").bytes());
    }
    many.extend(b"\r\n");
    assert_eq!(status(many), "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(
        status(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn a_malformed_chunked_body_is_400_at_the_proxy_as_at_the_sse_server() {
    let llm = mock();
    let up = base(&llm.str("url"));
    for (server, path) in [("sse", "/chat"), ("proxy", "/v1/chat/completions")] {
        let srv = quick(server, &up);
        let mut s = Tls::connect(addr(&srv), &trust_of(&srv));
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains("\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) if s.timed_out() && t0.elapsed() < Duration::from_secs(5) => {}
                Err(e) => panic!("{server}: {e}"),
            }
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{server}: {text}");
        assert!(srv.stop());
    }
}

#[test]
fn a_webtransport_session_with_no_stream_is_closed_when_idle() {
    let llm = mock();
    let srv = quick("wt", &base(&llm.str("url")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = trust_of(&srv).h3_client_config().unwrap();
        let cfg = wtransport::ClientConfig::builder()
            .with_bind_address("127.0.0.1:0".parse().unwrap())
            .with_custom_tls(tls)
            // The client keeps QUIC alive; only the server's idle deadline can end it.
            .keep_alive_interval(Some(Duration::from_millis(300)))
            .build();
        let ep = lab_clients::quic_rt::WtClient::new(cfg).unwrap();
        let idle = ep.connect(srv.str("url")).await.unwrap();
        let t0 = Instant::now();
        // A busy session on the same server answers meanwhile.
        let busy = ep.connect(srv.str("url")).await.unwrap();
        let (mut send, mut recv) = busy.open_bi().await.unwrap().await.unwrap();
        send.write_all(b"2:hi").await.unwrap();
        send.finish().await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(n) = recv.read(&mut buf).await.unwrap() {
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(
            lenprefix_answers(&answer)[0].len() == 12,
            "the busy session was not served"
        );
        let err = tokio::time::timeout(Duration::from_secs(8), idle.closed())
            .await
            .expect("the idle session was never closed");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "closed after {took:?}: {err}"
        );
        assert!(
            err.to_string().contains("idle") || err.to_string().contains("32"),
            "{err}"
        );
    });
    assert!(srv.stop());
}
