//! The QUIC document's performance targets, measured with lab's own QUIC stack (quinn,
//! as the `wt` and `quic` approaches configure it) on loopback:
//!
//! - stream-open latency: a new bidirectional stream, one byte, its echo (target under
//!   100 us);
//! - one stream's throughput: 256 MiB on one stream (target over 100 MB/s);
//! - concurrent streams: 2000 streams open at once on one connection, each echoing
//!   (target 1000+);
//! - datagram latency: an unreliable datagram and its echo (target under 1 ms).
//!
//! `cargo bench -p lab --bench quic`. Client and server share the machine's cores.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wtransport::quinn;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cert = lab_servers::tls::CertKey::generate(&[])?;
    let quic = lab_codec::transport::Quic {
        stream_receive_window: 64 << 20,
        receive_window: 1 << 30,
        send_window: 64 << 20,
        ..Default::default()
    };
    // Concurrent streams: quinn's default cap is 100; the document's target is 1000+.
    let mut transport = quic.transport_config()?;
    transport.max_concurrent_bidi_streams(4096u32.into());
    transport.datagram_receive_buffer_size(Some(1 << 20));
    let transport = Arc::new(transport);

    let mut tls = cert.quic_server_config()?;
    tls.max_early_data_size = u32::MAX;
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    server_cfg.transport_config(transport.clone());
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
    let addr = server.local_addr()?;
    // The server echoes every stream and every datagram.
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

    let trust = lab_codec::trust::Trust::Insecure;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(trust.quic_client_config()?)?;
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(crypto));
    client_cfg.transport_config(transport);
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(client_cfg);
    let conn = client.connect(addr, "localhost")?.await?;

    // Stream-open latency: open, send a byte, read the echo.
    let mut open = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        let (mut s, mut r) = conn.open_bi().await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await?;
        open.push(t.elapsed().as_secs_f64() * 1e6);
        let _ = s.finish();
    }
    println!(
        "stream open + 1-byte echo: p50 {:.0} us, p99 {:.0} us (target: open under 100 us)",
        percentile(&mut open, 50.0),
        percentile(&mut open, 99.0)
    );

    // One stream's throughput, one way (the echo is read and dropped).
    let total: usize = 256 << 20;
    let (mut s, mut r) = conn.open_bi().await?;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        while let Ok(Some(n)) = r.read(&mut buf).await {
            got += n;
        }
        got
    });
    let chunk = vec![7u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..(total >> 20) {
        s.write_all(&chunk).await?;
    }
    s.finish()?;
    let echoed = reader.await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "one stream: {:.0} MB/s each way, echoed ({} MiB each way in {:.2} s; target over 100 MB/s)",
        (total + echoed) as f64 / secs / 1e6 / 2.0,
        total >> 20,
        secs
    );

    // Concurrent streams: all open at once, then each echoes.
    let n = 2000;
    let t = Instant::now();
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
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
    println!(
        "concurrent streams: {ok} of {n} open at once and echoed ({:.1} ms to open them all, {:.1} ms in all; target 1000+)",
        opened.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );

    // Datagram latency.
    let mut lat = Vec::new();
    let mut lost = 0;
    for k in 0u32..2000 {
        let t = Instant::now();
        conn.send_datagram(k.to_be_bytes().to_vec().into())?;
        match tokio::time::timeout(Duration::from_millis(200), conn.read_datagram()).await {
            Ok(Ok(_)) => lat.push(t.elapsed().as_secs_f64() * 1e6),
            _ => lost += 1,
        }
    }
    println!(
        "datagram echo: p50 {:.0} us, p99 {:.0} us, {lost} of 2000 lost (target under 1 ms)",
        percentile(&mut lat, 50.0),
        percentile(&mut lat, 99.0)
    );
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(())
}
