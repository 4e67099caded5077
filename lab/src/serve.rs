//! `lab serve llm|proxy|sse|wt`: one server in the foreground.
//!
//! Each binds, prints one JSON readiness line on stdout (what an orchestrator waits for),
//! logs a human line on stderr, and serves until SIGINT or SIGTERM.

use crate::cli::{LlmArgs, MockArgs, ProxyArgs, Serve, TlsArgs, UpstreamServerArgs};
use anyhow::{Context, Result};
use lab_servers::llm::MockConfig;
use lab_servers::stats::ServerStats;
use lab_servers::tls::CertKey;
use lab_servers::upstream::Upstream;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

impl MockArgs {
    /// The mock's settings from the flags.
    pub fn config(&self, models: Vec<String>, max_body: usize) -> MockConfig {
        MockConfig {
            format: self.format,
            ttft: self.ttft,
            tbt: self.tbt,
            jitter: self.jitter,
            seed: self.seed,
            models,
            max_body,
            max_tokens: self.max_tokens,
        }
    }
}

pub async fn run(cmd: Serve) -> Result<()> {
    match cmd {
        Serve::Llm(a) => llm(a).await,
        Serve::Proxy(a) => proxy(a).await,
        Serve::Sse(a) => sse(a).await,
        Serve::Wt(a) => wt(a).await,
    }
}

fn ready(server: &str, listen: SocketAddr, url: &str, cert: Option<&CertKey>) {
    let line = serde_json::json!({
        "event": "ready",
        "server": server,
        "listen": listen.to_string(),
        "url": url,
        "cert_sha256": cert.map(CertKey::sha256_hex),
    });
    // Written once; an orchestrator may close the pipe after reading it, so a failed
    // write is not worth a panic.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    match cert {
        Some(c) => tracing::info!(
            "{server} listening on {url} (certificate sha256 {})",
            c.sha256_hex()
        ),
        None => tracing::info!("{server} listening on {url}"),
    }
}

async fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for the {what}; is the port in use? pick another with --listen"
        )
    })
}

fn cert(tls: &TlsArgs) -> Result<CertKey> {
    let ck = CertKey::from_args(tls.cert.as_deref(), tls.key.as_deref(), &tls.sans)?;
    if let Some(dir) = &tls.cert_out {
        ck.write_to(dir)?;
        tracing::info!("wrote {}/cert.pem and key.pem (0600)", dir.display());
    }
    Ok(ck)
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn until_signal(server: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::select! {
        r = server => r,
        _ = shutdown_signal() => {
            tracing::info!("stopping");
            Ok(())
        }
    }
}

async fn llm(a: LlmArgs) -> Result<()> {
    let l = bind_tcp(a.listen, "mock LLM").await?;
    let addr = l.local_addr()?;
    let cfg = Arc::new(a.mock.config(a.models, a.max_body));
    tracing::info!(
        "mock LLM: format {}, ttft {:?}, tbt {:?}, jitter {:.0}%, seed {}",
        cfg.format,
        cfg.ttft,
        cfg.tbt,
        cfg.jitter * 100.0,
        cfg.seed
    );
    ready(
        "llm",
        addr,
        &format!("http://{addr}/v1/chat/completions"),
        None,
    );
    until_signal(lab_servers::llm::serve(
        l,
        cfg,
        Arc::new(ServerStats::default()),
    ))
    .await
}

async fn proxy(a: ProxyArgs) -> Result<()> {
    let ck = cert(&a.tls)?;
    let app = lab_servers::proxy::app(&a.upstream, Arc::new(ServerStats::default()))?;
    let l = bind_tcp(a.listen, "proxy").await?;
    let addr = l.local_addr()?;
    ready(
        "proxy",
        addr,
        &format!("https://{addr}/v1/chat/completions"),
        Some(&ck),
    );
    tracing::info!("forwarding to {}", a.upstream);
    until_signal(lab_servers::http::serve_tls(
        l,
        Arc::new(ck.http1_server_config()?),
        app,
        Arc::new(ServerStats::default()),
    ))
    .await
}

async fn sse(a: UpstreamServerArgs) -> Result<()> {
    let ck = cert(&a.tls)?;
    let up = Arc::new(Upstream::new(&a.upstream, &a.model)?);
    let listen = a
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let l = bind_tcp(listen, "SSE server").await?;
    let addr = l.local_addr()?;
    let stats = Arc::new(ServerStats::default());
    let app = lab_servers::sse::app(up, stats.clone());
    ready("sse", addr, &format!("https://{addr}/chat"), Some(&ck));
    until_signal(lab_servers::http::serve_tls(
        l,
        Arc::new(ck.http1_server_config()?),
        app,
        stats,
    ))
    .await
}

async fn wt(a: UpstreamServerArgs) -> Result<()> {
    let ck = cert(&a.tls)?;
    let up = Arc::new(Upstream::new(&a.upstream, &a.model)?);
    let listen = a
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4433)));
    let udp = std::net::UdpSocket::bind(listen).with_context(|| {
        format!("cannot listen on UDP {listen} for the WebTransport server; is the port in use? pick another with --listen")
    })?;
    let addr = udp.local_addr()?;
    let endpoint = lab_servers::wt::endpoint(udp, ck.h3_server_config()?)?;
    ready("wt", addr, &format!("https://{addr}/wt"), Some(&ck));
    until_signal(lab_servers::wt::serve(
        endpoint,
        up,
        Arc::new(ServerStats::default()),
    ))
    .await
}
