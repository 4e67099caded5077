//! The QUIC microbenchmark (`lab bench quic`, `cargo bench -p lab --bench quic`): the
//! QUIC document's performance targets, measured with lab's QUIC stack (quinn, as the
//! `wt` and `quic` approaches configure it, with larger flow-control windows and a
//! 4096-stream cap) between two UDP sockets: on loopback, or one in a lab cell's server
//! namespace and one in its client namespace, through the cell's link.
//!
//! - stream-open latency: a new bidirectional stream, one byte, its echo (target under
//!   100 us);
//! - one stream's throughput: bytes on one stream, echoed (target over 100 MB/s);
//! - concurrent streams: streams open at once on one connection, each echoing (target
//!   1000+);
//! - datagram latency: an unreliable datagram and its echo (target under 1 ms).

use anyhow::{Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wtransport::quinn;

/// How much of each measure to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// Streams opened one after another, for the open latency.
    pub opens: usize,
    /// MiB sent on one stream (and echoed).
    pub mib: usize,
    /// Streams open at once.
    pub streams: usize,
    /// Datagrams sent one after another.
    pub datagrams: usize,
}

impl Sizes {
    /// What `cargo bench` and `lab bench quic` measure.
    pub const FULL: Sizes = Sizes {
        opens: 2000,
        mib: 256,
        streams: 2000,
        datagrams: 2000,
    };
    /// A few seconds' worth, for tests and `--quick`.
    pub const QUICK: Sizes = Sizes {
        opens: 200,
        mib: 16,
        streams: 1000,
        datagrams: 200,
    };
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Where: `loopback`, or the cell.
    pub path: String,
    pub sizes: Sizes,
    pub open_p50_us: f64,
    pub open_p99_us: f64,
    /// One stream, megabytes per second each way (sent and echoed, averaged).
    pub stream_mb_s: f64,
    pub stream_secs: f64,
    /// Bytes that came back on the stream (all of them, or the stream failed).
    pub stream_echoed: u64,
    /// Streams open at once that echoed their bytes.
    pub streams_ok: usize,
    pub streams_open_ms: f64,
    pub streams_all_ms: f64,
    pub datagram_p50_us: f64,
    pub datagram_p99_us: f64,
    pub datagrams_lost: usize,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

impl Report {
    /// The table of measures against the QUIC document's targets.
    pub fn table(&self) -> String {
        let s = &self.sizes;
        let yes = |b: bool| if b { "yes" } else { "NO" };
        let rows = [
            [
                format!("open a stream, send a byte, read its echo ({}x)", s.opens),
                format!(
                    "p50 {:.0} us, p99 {:.0} us",
                    self.open_p50_us, self.open_p99_us
                ),
                "under 100 us".into(),
                yes(self.open_p50_us < 100.0).into(),
            ],
            [
                format!("one stream, {} MiB each way, echoed", s.mib),
                format!(
                    "{:.0} MB/s each way ({:.2} s)",
                    self.stream_mb_s, self.stream_secs
                ),
                "over 100 MB/s".into(),
                yes(self.stream_mb_s > 100.0).into(),
            ],
            [
                "streams open at once on one connection, each echoing".into(),
                format!(
                    "{} of {} (opened in {:.1} ms, all echoed in {:.1} ms)",
                    self.streams_ok, s.streams, self.streams_open_ms, self.streams_all_ms
                ),
                "1000+".into(),
                yes(self.streams_ok >= 1000).into(),
            ],
            [
                format!("a datagram and its echo ({}x)", s.datagrams),
                format!(
                    "p50 {:.0} us, p99 {:.0} us, {} lost",
                    self.datagram_p50_us, self.datagram_p99_us, self.datagrams_lost
                ),
                "under 1 ms".into(),
                yes(self.datagram_p50_us < 1000.0).into(),
            ],
        ];
        let mut b = tabled::builder::Builder::default();
        b.push_record(["measure", "result", "target", "met (p50)"]);
        for r in rows {
            b.push_record(r);
        }
        let t = crate::table::grid(b);
        format!("QUIC microbenchmark, {}:\n\n{t}\n", self.path)
    }
}

/// The transport both ends use.
fn transport() -> Result<Arc<quinn::TransportConfig>> {
    let quic = lab_codec::transport::Quic {
        stream_receive_window: 64 << 20,
        receive_window: 1 << 30,
        send_window: 64 << 20,
        // quinn's default cap of concurrent streams is 100; the document's target is 1000+.
        max_streams: 4096,
        ..Default::default()
    };
    let mut t = quic.transport_config()?;
    t.datagram_receive_buffer_size(Some(1 << 20));
    Ok(Arc::new(t))
}

/// Echoes every stream and datagram of every connection to `server`.
fn echo(server: quinn::Endpoint) {
    tokio::spawn(async move {
        while let Some(inc) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                let c2 = conn.clone();
                tokio::spawn(async move {
                    while let Ok(d) = c2.read_datagram().await {
                        let _ = c2.send_datagram(d);
                    }
                });
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(Some(n)) = recv.read(&mut buf).await {
                            if send.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        let _ = send.finish();
                    });
                }
            });
        }
    });
}

/// Runs every measure between a server on `server` and a client on `client` (both
/// bound already, in whatever namespaces), `path` naming where for the report.
pub async fn run(
    server: std::net::UdpSocket,
    client: std::net::UdpSocket,
    path: &str,
    sizes: Sizes,
) -> Result<Report> {
    let addr = server.local_addr()?;
    let transport = transport()?;
    let cert = lab_servers::tls::CertKey::generate(&[addr.ip().to_string()])?;
    let tls = cert.quic_server_config()?;
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    server_cfg.transport_config(transport.clone());
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    let server = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_cfg),
        server,
        runtime.clone(),
    )?;
    echo(server.clone());

    let trust = lab_codec::trust::Trust::Insecure;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(trust.quic_client_config()?)?;
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(crypto));
    client_cfg.transport_config(transport);
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, client, runtime)?;
    ep.set_default_client_config(client_cfg);
    let conn = tokio::time::timeout(Duration::from_secs(10), ep.connect(addr, "localhost")?)
        .await
        .with_context(|| format!("no QUIC handshake with {addr} within 10 s"))??;
    let r = measure(&conn, path, sizes).await;
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
    server.close(0u32.into(), b"done");
    r
}

async fn measure(conn: &quinn::Connection, path: &str, sizes: Sizes) -> Result<Report> {
    // Stream-open latency: open, send a byte, read the echo.
    let mut open = Vec::with_capacity(sizes.opens);
    for _ in 0..sizes.opens {
        let t = Instant::now();
        let (mut s, mut r) = conn.open_bi().await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await?;
        open.push(t.elapsed().as_secs_f64() * 1e6);
        let _ = s.finish();
    }

    // One stream's throughput, one way (the echo is read and dropped).
    let total = sizes.mib << 20;
    let (mut s, mut r) = conn.open_bi().await?;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while let Ok(Some(n)) = r.read(&mut buf).await {
            got += n as u64;
        }
        got
    });
    let chunk = vec![7u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..sizes.mib {
        s.write_all(&chunk).await?;
    }
    s.finish()?;
    let echoed = reader.await?;
    let stream_secs = t.elapsed().as_secs_f64();

    // Concurrent streams: all open at once, then each echoes.
    let t = Instant::now();
    let mut streams = Vec::with_capacity(sizes.streams);
    for _ in 0..sizes.streams {
        let (mut s, r) = conn.open_bi().await?;
        s.write_all(b"hello").await?;
        streams.push((s, r));
    }
    let opened = t.elapsed();
    let mut ok = 0;
    for (mut s, mut r) in streams {
        let mut b = [0u8; 5];
        if r.read_exact(&mut b).await.is_ok() && &b == b"hello" {
            ok += 1;
        }
        let _ = s.finish();
    }
    let all = t.elapsed();

    // Datagram latency, one at a time; 200 ms without the echo counts as lost.
    let mut lat = Vec::with_capacity(sizes.datagrams);
    let mut lost = 0;
    for k in 0..sizes.datagrams as u32 {
        let t = Instant::now();
        conn.send_datagram(k.to_be_bytes().to_vec().into())?;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), conn.read_datagram()).await {
                // A late echo of an earlier one: not this one's.
                Ok(Ok(d)) if d[..] != k.to_be_bytes() => continue,
                Ok(Ok(_)) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                _ => lost += 1,
            }
            break;
        }
    }
    Ok(Report {
        path: path.to_owned(),
        sizes,
        open_p50_us: percentile(&mut open, 50.0),
        open_p99_us: percentile(&mut open, 99.0),
        stream_mb_s: (total as u64 + echoed) as f64 / stream_secs / 1e6 / 2.0,
        stream_secs,
        stream_echoed: echoed,
        streams_ok: ok,
        streams_open_ms: opened.as_secs_f64() * 1e3,
        streams_all_ms: all.as_secs_f64() * 1e3,
        datagram_p50_us: percentile(&mut lat, 50.0),
        datagram_p99_us: percentile(&mut lat, 99.0),
        datagrams_lost: lost,
    })
}

/// Two UDP sockets on loopback.
pub fn loopback() -> Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let bind = || -> Result<std::net::UdpSocket> {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    Ok((bind()?, bind()?))
}

/// The server's socket in the cell's server namespace (an ephemeral port of its
/// address), the client's in its client namespace.
pub fn in_cell(cell: &crate::plan::Cell) -> Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    use crate::netlab::sys;
    let bind = |ns: &str, addr: std::net::Ipv4Addr| -> Result<std::net::UdpSocket> {
        let f = sys::open_netns(ns)?;
        sys::in_netns(&f, || {
            let s = std::net::UdpSocket::bind((addr, 0))
                .with_context(|| format!("cannot bind UDP on {addr} in {ns}"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    };
    Ok((
        bind(&cell.server_ns, cell.server_addr)?,
        bind(&cell.client_ns, cell.client_addr)?,
    ))
}
