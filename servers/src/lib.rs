//! lab's servers. Each takes an already-bound socket, so the lab can bind inside a network
//! namespace and tests can bind on loopback.
//!
//! Data flow of one token: [`llm`] (mock, or a real upstream) -> [`upstream`] client ->
//! [`sse`] / [`wt`] / [`wt_dgram`] / [`wtq`] / [`wtq_dgram`] / ... server -> client. The [`proxy`] forwards the raw API unchanged.
//!
//! Every approach's server has the same entry point, `start(Listener, ServerEnv)`, which
//! checks its settings and returns the future that serves, and its URL path as a `PATH`
//! constant; lab's approach registry names them and nothing else.

pub mod fanout;
pub mod fanout_broker;
pub mod handoff;
pub mod http;
pub mod llm;
pub mod proxy;
pub mod quic;
pub mod sse;
pub mod sse_h2;
pub mod stats;
pub mod streams;
pub mod textgen;
pub mod tls;
pub mod upstream;
pub mod ws;
pub mod wt;
pub mod wt_dgram;
pub mod wtq;
pub mod wtq_dgram;

use anyhow::{Result, bail};
use std::net::SocketAddr;
use std::sync::Arc;

/// The already-bound socket a server is handed.
#[derive(Debug)]
pub enum Listener {
    /// For servers over TCP (TLS, HTTP).
    Tcp(tokio::net::TcpListener),
    /// For servers over QUIC.
    Udp(std::net::UdpSocket),
}

impl Listener {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr(),
            Self::Udp(s) => s.local_addr(),
        }
    }

    /// The TCP listener, or an error naming the server that needed one.
    pub fn tcp(self, server: &str) -> Result<tokio::net::TcpListener> {
        match self {
            Self::Tcp(l) => Ok(l),
            Self::Udp(_) => bail!("the {server} server runs over TCP but was handed a UDP socket"),
        }
    }

    /// The UDP socket, or an error naming the server that needed one.
    pub fn udp(self, server: &str) -> Result<std::net::UdpSocket> {
        match self {
            Self::Udp(s) => Ok(s),
            Self::Tcp(_) => {
                bail!("the {server} server runs over UDP but was handed a TCP listener")
            }
        }
    }
}

/// A server, set up and ready to serve: it runs until dropped, or fails.
pub type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

/// What a part of an approach that runs as a process of its own is given (`lab part
/// <server> <part>`, as a node of a topology): the fan-out's API servers and gateways.
#[derive(Debug)]
pub struct PartEnv {
    /// Its already-bound socket (plain HTTP: the load balancer in front ends TLS).
    pub listener: tokio::net::TcpListener,
    /// The broker's URL, e.g. `redis://198.19.255.1:6379`.
    pub broker: Option<String>,
    /// The OpenAI-compatible upstream's base URL.
    pub upstream: Option<String>,
    /// The model it asks the upstream for.
    pub model: String,
    pub stats: Arc<stats::ServerStats>,
}

/// Sets a part up (connecting to its broker, say): what serves, or why it cannot.
pub type PartStart =
    fn(PartEnv) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Serving>> + Send>>;

/// One part of an approach that runs as a process of its own.
#[derive(Debug)]
pub struct Part {
    /// Its name in `lab part <server> <name>`.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    pub start: PartStart,
}

impl ServerEnv {
    /// A client for the upstream, as the settings say.
    pub fn upstream_client(&self) -> Result<upstream::Upstream, upstream::UpstreamError> {
        Ok(
            upstream::Upstream::new(&self.upstream, &self.model, self.upstream_h2)?
                .with_sampling(self.sampling),
        )
    }
}

/// How long a server waits for a slow or silent client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The TLS handshake and each request head must be complete this long after the
    /// server is ready for them (the connection's start, or the end of the previous
    /// answer on a kept-alive connection); for WebTransport, the QUIC handshake and the
    /// session request. A client that trickles bytes (slowloris), or keeps a connection
    /// open without asking anything, is cut off after this.
    pub header: std::time::Duration,
    /// A connection on which nothing moves either way for this long, in the middle of a
    /// request or an answer, is closed; so is a WebTransport session with no stream.
    pub idle: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header: std::time::Duration::from_secs(30),
            idle: std::time::Duration::from_secs(120),
        }
    }
}

/// What every approach's server is built from, besides its socket.
#[derive(Debug, Clone)]
pub struct ServerEnv {
    /// The TLS certificate and key it presents.
    pub cert: tls::CertKey,
    /// The OpenAI-compatible upstream's base URL, e.g. `http://127.0.0.1:11434`.
    pub upstream: String,
    /// The model a server that makes its own upstream requests asks for.
    pub model: String,
    /// Talk to the upstream over HTTP/2 with prior knowledge (h2c), every stream on one
    /// connection, instead of an HTTP/1.1 connection per stream in flight: a load
    /// test's thousands of streams then take one socket each in the server, not two.
    pub upstream_h2: bool,
    /// Sampling settings every upstream request carries (temperature, seed, most
    /// tokens); the upstream's defaults where unset.
    pub sampling: lab_codec::openai::Sampling,
    /// Counters the server keeps about itself.
    pub stats: Arc<stats::ServerStats>,
    /// Deadlines for slow and idle clients.
    pub limits: Limits,
    /// QUIC and TCP settings (quinn's and the socket's; per-route TCP settings are the
    /// namespace's business).
    pub transport: lab_codec::transport::Settings,
    /// The lab program, for a server that starts a process of its own (the handoff
    /// server's streaming daemon, `lab helper handoff`); `None` where there is none.
    pub program: Option<std::path::PathBuf>,
}
