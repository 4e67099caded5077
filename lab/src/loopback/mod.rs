//! The mock and every approach's server started in-process on loopback, for `lab demo`,
//! tests and benchmarks.
//!
//! Every server binds to `127.0.0.1:0`; the stack knows the chosen ports, holds the
//! generated certificate (so clients can pin it) and each server's counters. Dropping the
//! stack stops every server task.

use crate::approach::{Approach, Transport};
use anyhow::{Context, Result};
use lab_clients::RunnerOpts;
use lab_clients::record::Mode;
use lab_codec::trust::Trust;
use lab_servers::llm::MockConfig;
use lab_servers::stats::ServerStats;
use lab_servers::tls::CertKey;
use lab_servers::{Listener, ServerEnv};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// One approach's server on loopback.
pub struct Running {
    pub approach: Approach,
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
}

/// Running servers on loopback.
pub struct Stack {
    pub llm: Option<SocketAddr>,
    pub upstream_url: String,
    /// Every approach's server, in registry order.
    pub servers: Vec<Running>,
    pub model: String,
    pub cert: CertKey,
    pub llm_stats: Arc<ServerStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn_logged<F>(what: String, f: F) -> JoinHandle<()>
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
    /// Starts the mock (if chosen) and every approach's server. `program` is the lab
    /// program, for the servers that start a process of their own (the handoff server's
    /// streaming daemon).
    pub async fn start(
        upstream: UpstreamChoice,
        model: &str,
        program: &std::path::Path,
    ) -> Result<Self> {
        let loopback: SocketAddr = "127.0.0.1:0".parse()?;
        let mut tasks = Vec::new();
        let llm_stats = Arc::new(ServerStats::default());
        let (llm, upstream_url) = match upstream {
            UpstreamChoice::Mock(cfg) => {
                let l = TcpListener::bind(loopback).await.context("bind mock LLM")?;
                let addr = l.local_addr()?;
                tasks.push(spawn_logged(
                    "mock LLM".into(),
                    lab_servers::llm::serve(l, Arc::new(cfg), llm_stats.clone()),
                ));
                (Some(addr), format!("http://{addr}"))
            }
            UpstreamChoice::Url(u) => (None, u),
        };
        let cert = CertKey::generate(&[])?;
        let mut servers = Vec::new();
        for a in crate::approach::all() {
            let what = format!("{} server", a.server);
            let listener = match a.transport {
                Transport::Tcp => Listener::Tcp(
                    TcpListener::bind(loopback)
                        .await
                        .with_context(|| format!("bind the {what}"))?,
                ),
                Transport::Udp => Listener::Udp(
                    std::net::UdpSocket::bind(loopback)
                        .with_context(|| format!("bind the {what}"))?,
                ),
            };
            let addr = listener.local_addr()?;
            let stats = Arc::new(ServerStats::default());
            let env = ServerEnv {
                cert: cert.clone(),
                upstream: upstream_url.clone(),
                model: model.to_owned(),
                upstream_h2: false,
                sampling: Default::default(),
                stats: stats.clone(),
                limits: lab_servers::Limits::default(),
                transport: Default::default(),
                program: Some(program.to_owned()),
            };
            tasks.push(spawn_logged(what, a.serve(listener, env)?));
            servers.push(Running {
                approach: a,
                addr,
                stats,
            });
        }
        Ok(Self {
            llm,
            upstream_url,
            servers,
            model: model.to_owned(),
            cert,
            llm_stats,
            tasks,
        })
    }

    fn server(&self, approach: Approach) -> &Running {
        self.servers
            .iter()
            .find(|r| r.approach == approach)
            .expect("the stack runs every approach in the registry")
    }

    /// Where `approach`'s server listens.
    pub fn addr(&self, approach: Approach) -> SocketAddr {
        self.server(approach).addr
    }

    /// The URL a client of `approach` connects to.
    pub fn url(&self, approach: Approach) -> String {
        approach.url(self.server(approach).addr)
    }

    /// Trust pinned to the stack's certificate.
    pub fn trust(&self) -> Trust {
        Trust::Pin(self.cert.sha256)
    }

    /// Options for a runner against this stack.
    pub fn runner_opts(&self, approach: Approach, mode: Mode, timeout: Duration) -> RunnerOpts {
        RunnerOpts::new(
            approach.name,
            mode,
            timeout,
            self.trust(),
            self.model.clone(),
        )
    }

    /// A runner of `approach` against this stack.
    pub fn runner(
        &self,
        approach: Approach,
        mode: Mode,
        timeout: Duration,
    ) -> Result<Box<dyn lab_clients::Runner>> {
        approach.runner(
            &self.url(approach),
            &self.runner_opts(approach, mode, timeout),
        )
    }

    /// The counters of the server that `approach`'s client talks to.
    pub fn stats(&self, approach: Approach) -> &Arc<ServerStats> {
        &self.server(approach).stats
    }
}
