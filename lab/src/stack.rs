//! The four servers started in-process on loopback, for `lab demo`, tests and benchmarks.
//!
//! Every server binds to `127.0.0.1:0`; the stack knows the chosen ports, holds the
//! generated certificate (so clients can pin it) and each server's counters. Dropping the
//! stack stops every server task.

use anyhow::{Context, Result};
use lab_clients::Approach;
use lab_servers::llm::MockConfig;
use lab_servers::stats::ServerStats;
use lab_servers::tls::{CertKey, Trust};
use lab_servers::upstream::Upstream;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the stack's SSE, WebTransport and proxy servers talk to.
#[derive(Debug, Clone)]
pub enum UpstreamChoice {
    /// Start the embedded mock with these settings.
    Mock(MockConfig),
    /// Use an existing OpenAI-compatible server.
    Url(String),
}

/// Running servers on loopback.
pub struct Stack {
    pub llm: Option<SocketAddr>,
    pub upstream_url: String,
    pub proxy: SocketAddr,
    pub sse: SocketAddr,
    pub wt: SocketAddr,
    pub model: String,
    pub cert: CertKey,
    pub llm_stats: Arc<ServerStats>,
    pub proxy_stats: Arc<ServerStats>,
    pub sse_stats: Arc<ServerStats>,
    pub wt_stats: Arc<ServerStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn_logged<F>(what: &'static str, f: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = f.await {
            tracing::error!("{what} stopped: {e:#}");
        }
    })
}

impl Stack {
    /// Starts the mock (if chosen), the proxy, the SSE and the WebTransport server.
    pub async fn start(upstream: UpstreamChoice, model: &str) -> Result<Self> {
        let loopback: SocketAddr = "127.0.0.1:0".parse()?;
        let mut tasks = Vec::new();
        let llm_stats = Arc::new(ServerStats::default());
        let (llm, upstream_url) = match upstream {
            UpstreamChoice::Mock(cfg) => {
                let l = TcpListener::bind(loopback).await.context("bind mock LLM")?;
                let addr = l.local_addr()?;
                tasks.push(spawn_logged(
                    "mock LLM",
                    lab_servers::llm::serve(l, Arc::new(cfg), llm_stats.clone()),
                ));
                (Some(addr), format!("http://{addr}"))
            }
            UpstreamChoice::Url(u) => (None, u),
        };
        let cert = CertKey::generate(&[])?;
        let http_tls = Arc::new(cert.http1_server_config()?);
        let up = Arc::new(Upstream::new(&upstream_url, model)?);

        let proxy_stats = Arc::new(ServerStats::default());
        let l = TcpListener::bind(loopback).await.context("bind proxy")?;
        let proxy = l.local_addr()?;
        let app = lab_servers::proxy::app(&upstream_url, proxy_stats.clone())?;
        tasks.push(spawn_logged(
            "proxy",
            lab_servers::http::serve_tls(l, http_tls.clone(), app, proxy_stats.clone()),
        ));

        let sse_stats = Arc::new(ServerStats::default());
        let l = TcpListener::bind(loopback)
            .await
            .context("bind SSE server")?;
        let sse = l.local_addr()?;
        let app = lab_servers::sse::app(up.clone(), sse_stats.clone());
        tasks.push(spawn_logged(
            "SSE server",
            lab_servers::http::serve_tls(l, http_tls, app, sse_stats.clone()),
        ));

        let wt_stats = Arc::new(ServerStats::default());
        let udp = std::net::UdpSocket::bind(loopback).context("bind WebTransport server")?;
        let wt = udp.local_addr()?;
        let endpoint = lab_servers::wt::endpoint(udp, cert.h3_server_config()?)?;
        tasks.push(spawn_logged(
            "WebTransport server",
            lab_servers::wt::serve(endpoint, up, wt_stats.clone()),
        ));

        Ok(Self {
            llm,
            upstream_url,
            proxy,
            sse,
            wt,
            model: model.to_owned(),
            cert,
            llm_stats,
            proxy_stats,
            sse_stats,
            wt_stats,
            tasks,
        })
    }

    /// The URL a client of `approach` connects to.
    pub fn url(&self, approach: Approach) -> String {
        match approach {
            Approach::Raw => format!("https://{}/v1/chat/completions", self.proxy),
            Approach::Sse => format!("https://{}/chat", self.sse),
            Approach::Wt => format!("https://{}/wt", self.wt),
        }
    }

    /// Trust pinned to the stack's certificate.
    pub fn trust(&self) -> Trust {
        Trust::Pin(self.cert.sha256)
    }

    /// The counters of the server that `approach`'s client talks to.
    pub fn stats(&self, approach: Approach) -> &Arc<ServerStats> {
        match approach {
            Approach::Raw => &self.proxy_stats,
            Approach::Sse => &self.sse_stats,
            Approach::Wt => &self.wt_stats,
        }
    }
}
