//! lab's clients: one runner per approach, each timing every token of every prompt.
//!
//! - [`raw`]: the OpenAI-compatible API through the TLS proxy.
//! - [`sse`]: lab's SSE server.
//! - [`sse_h2`]: the SSE server over HTTP/2; [`ws`]: WebSocket.
//! - [`handoff`]: SSE over plain HTTP from the handoff server's streaming daemon.
//! - [`wt`]: lab's WebTransport server; [`wt_dgram`]: its tokens in datagrams.
//! - [`quic`]: raw QUIC streams, with 0-RTT.
//!
//! A runner turns a prompt into a [`record::PromptRecord`]. Each module has a `runner`
//! function that builds its runner from a [`Target`] and [`RunnerOpts`]; lab's approach
//! registry names them. Adding an approach means one runner module here, one server
//! module in lab-servers and one registry entry in lab. Clients never depend on the
//! servers: what both sides share is in lab-codec.

pub mod arrivals;
pub mod browser;
pub mod dgram;
pub mod endpoints;
pub mod fanout;
pub mod handoff;
pub mod http;
pub mod load;
pub mod prompts;
pub use prompts::Prompt;
pub mod quic;
pub mod quic_rt;
pub mod raw;
pub mod record;
pub mod sse;
pub mod sse_h2;
pub mod stats;
pub mod streams;
pub mod tallies;
pub mod ws;
pub mod wt;
pub mod wt_dgram;
pub mod wtq;
pub mod wtq_dgram;

use anyhow::{Context, Result, bail};
use lab_codec::trust::Trust;
use record::{Mode, PromptRecord, Recorder};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A boxed future, so runners can live behind `dyn Runner`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Receives each token as it arrives (for interactive display).
pub type TokenSink<'a> = dyn FnMut(&str) + Send + 'a;

/// Runs prompts against one server.
pub trait Runner: Send {
    /// The approach's short name (`raw`, `sse`, `wt`).
    fn name(&self) -> &'static str;
    /// Runs one prompt; failures are recorded in the record, never returned.
    fn run<'a>(
        &'a mut self,
        index: usize,
        prompt: &'a Prompt,
        sink: &'a mut TokenSink<'a>,
    ) -> BoxFuture<'a, PromptRecord>;
    /// Closes any open connection.
    fn close(&mut self) -> BoxFuture<'_, ()>;
    /// Another runner on this runner's connection, for prompts in flight at once over
    /// one connection (streams of a WebTransport session, of an HTTP/2 connection);
    /// `None` where each runner needs a connection of its own.
    fn share(&self) -> Option<Box<dyn Runner>> {
        None
    }
}

/// What an approach's runner keeps for itself: how one prompt goes over its protocol,
/// and what becomes of its connection after it. Every such runner is a [`Runner`] through
/// the one skeleton below, which starts the prompt's clock, bounds the attempt by the
/// runner's timeout, records a failure by its category and closes the record; the
/// browser runner, whose page keeps its own records, is the one `Runner` of its own.
pub trait Protocol: Send + Sized + 'static {
    /// What the runner was built with.
    fn opts(&self) -> &RunnerOpts;
    /// Sends prompt `index` and reads its answer, marking the connection, the answer's
    /// head and each token in `rec` and passing each token to `sink`.
    fn attempt(
        &mut self,
        index: usize,
        prompt: &Prompt,
        rec: &mut Recorder,
        sink: &mut TokenSink<'_>,
    ) -> impl std::future::Future<Output = Result<(), record::PromptError>> + Send;
    /// After each prompt, with its failure if it failed: lets go of a connection that
    /// must not carry the next prompt (fresh mode, a connection in an unknown state).
    fn settle(
        &mut self,
        error: Option<&record::PromptError>,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// Closes any open connection.
    fn hang_up(&mut self) -> impl std::future::Future<Output = ()> + Send;
    /// Another runner on this runner's connection (see [`Runner::share`]).
    fn on_same_connection(&self) -> Option<Self> {
        None
    }
}

impl<P: Protocol> Runner for P {
    fn name(&self) -> &'static str {
        self.opts().approach
    }

    fn run<'a>(
        &'a mut self,
        index: usize,
        prompt: &'a Prompt,
        sink: &'a mut TokenSink<'a>,
    ) -> BoxFuture<'a, PromptRecord> {
        Box::pin(async move {
            let mut rec = Recorder::start();
            let timeout = self.opts().timeout;
            let error = within(timeout, self.attempt(index, prompt, &mut rec, sink)).await;
            self.settle(error.as_ref()).await;
            let o = self.opts();
            rec.finish(o.approach, o.mode, index, &prompt.text, error)
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.hang_up())
    }

    fn share(&self) -> Option<Box<dyn Runner>> {
        self.on_same_connection()
            .map(|r| Box::new(r) as Box<dyn Runner>)
    }
}

/// A TCP connection to `target` with TLS over it (for the runners over TCP), and the
/// watch that reports its statistics when it closes.
pub(crate) async fn tls_connect(
    target: &Target,
    tls: &tokio_rustls::TlsConnector,
    opts: &RunnerOpts,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Option<stats::TcpWatch>,
    ),
    record::PromptError,
> {
    let tcp = tcp_connect(target, opts).await?;
    let watch = stats::TcpWatch::new(&tcp, &opts.stats);
    let err = |m: String| record::PromptError::new(record::ErrorCategory::Handshake, m);
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| err(format!("invalid server name '{}': {e}", target.host)))?;
    let tls = tls
        .connect(name, tcp)
        .await
        .map_err(|e| err(format!("TLS handshake with {} failed: {e}", target.addr)))?;
    Ok((tls, watch))
}

/// A TCP connection to `target`, from `opts.source` when one is set (bound with
/// `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks the port at connect time and the
/// same port can serve other destinations), with the runner's TCP_NODELAY.
pub(crate) async fn tcp_connect(
    target: &Target,
    opts: &RunnerOpts,
) -> Result<tokio::net::TcpStream, record::PromptError> {
    let err = |m: String| record::PromptError::new(record::ErrorCategory::Connect, m);
    let t = &opts.transport.tcp;
    let sock = match target.addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| err(format!("TCP socket: {e}")))?;
    // Buffers before connecting: the receive buffer sets the window scale the SYN
    // offers.
    lab_codec::transport::set_buffers(&sock, t.socket_receive_buffer, t.socket_send_buffer)
        .map_err(|e| err(format!("{e:#}")))?;
    if let Some(ip) = opts.source {
        bind_no_port(&sock);
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| err(format!("bind to {ip}: {e}")))?;
    }
    let tcp = sock
        .connect(target.addr)
        .await
        .map_err(|e| err(format!("TCP connect to {} failed: {e}", target.addr)))?;
    let _ = tcp.set_nodelay(t.nodelay);
    Ok(tcp)
}

/// Where a QUIC client's UDP socket binds: the load test's source address, or any.
pub(crate) fn udp_bind_addr(target: &Target, opts: &RunnerOpts) -> SocketAddr {
    match opts.source {
        Some(ip) => SocketAddr::new(ip, 0),
        None if target.addr.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
        None => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// Lets a socket bound to an address without a port take its port at connect time.
fn bind_no_port(sock: &impl std::os::fd::AsRawFd) {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: setting an int option on our own socket.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Runs one prompt's attempt under the client's timeout; a timeout is its own category.
pub(crate) async fn within<F>(timeout: Duration, attempt: F) -> Option<record::PromptError>
where
    F: std::future::Future<Output = Result<(), record::PromptError>>,
{
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(record::PromptError::new(
            record::ErrorCategory::Timeout,
            format!("no complete answer within {:.1}s", timeout.as_secs_f64()),
        )),
    }
}

/// What every runner is built with, besides where it connects.
#[derive(Debug, Clone)]
pub struct RunnerOpts {
    /// The approach's name, as records carry it.
    pub approach: &'static str,
    pub mode: Mode,
    /// Bound on each prompt.
    pub timeout: Duration,
    pub trust: Trust,
    /// The model, for runners whose requests name one (the raw API).
    pub model: String,
    /// Sampling settings for runners whose requests carry them (the raw API).
    pub sampling: lab_codec::openai::Sampling,
    /// Numbers the connections of one client (every runner built from these options
    /// shares it), so records say which connection carried each prompt.
    pub conns: Arc<AtomicU32>,
    /// Collects every connection's transport statistics when it closes.
    pub stats: Arc<stats::Tracker>,
    /// QUIC settings and TCP socket options.
    pub transport: lab_codec::transport::Settings,
    /// The prompts (by index, from 0) to mark urgent: on approaches with stream
    /// priorities (wt, quic), the server sends their answers ahead of the others.
    pub urgent: Arc<Vec<usize>>,
    /// The local address connections go out from (the kernel's choice when `None`): a
    /// load test spreads its connections over several, so ports never run out.
    pub source: Option<std::net::IpAddr>,
    /// Ask for the upstream's count of each answer's tokens (its `usage`), recorded
    /// apart from the chunks that arrived (`usage_tokens`): a chunk may carry several
    /// tokens.
    pub usage: bool,
    /// QUIC endpoints the runners built from these options share (a load generator's),
    /// or `None` for an endpoint per connection (see [`endpoints`]).
    pub endpoints: Option<Arc<endpoints::Shared>>,
}

impl RunnerOpts {
    /// A runner's settings: its approach, mode, per-prompt timeout, trust and model,
    /// with default transport settings, counters of its own, no urgent prompts and the
    /// kernel's choice of source address.
    pub fn new(
        approach: &'static str,
        mode: Mode,
        timeout: Duration,
        trust: Trust,
        model: impl Into<String>,
    ) -> Self {
        RunnerOpts {
            approach,
            mode,
            timeout,
            trust,
            model: model.into(),
            sampling: Default::default(),
            conns: Default::default(),
            stats: Default::default(),
            transport: Default::default(),
            urgent: Default::default(),
            source: None,
            usage: false,
            endpoints: None,
        }
    }

    /// The next connection's number.
    pub fn next_conn(&self) -> u32 {
        self.conns.fetch_add(1, Ordering::Relaxed)
    }
}

/// A latency a server measures about itself and sends in a response header (the handoff
/// server's hand-off from its front to its streaming daemon). The HTTP runners record it
/// under `key`; reports say what it is from `what`, `how` and `note`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTiming {
    /// The response header carrying it, in microseconds (lower case).
    pub header: &'static str,
    /// The record's field for it, in milliseconds (and the load summaries').
    pub key: &'static str,
    /// What it measures, in a few words.
    pub what: &'static str,
    /// How the server does it, in parentheses after `what` in a cell's line.
    pub how: &'static str,
    /// A sentence a cell's line ends with: how to read it against TTFB and TTFT.
    pub note: &'static str,
}

/// Where a client connects: `https://host:port[/path]`. The registry fills in an
/// approach's path when the URL gives none.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as written, for the Host header and the WebTransport URL.
    pub authority: String,
    /// The host, for TLS server name indication.
    pub host: String,
    pub addr: SocketAddr,
    /// The path (`/` when the URL gives none).
    pub path: String,
    /// `https://` (TLS) or `http://` (plain HTTP, for a server without TLS).
    pub tls: bool,
}

impl Target {
    /// Parses and resolves a URL such as `https://127.0.0.1:8443` or `https://localhost:4433/wt`.
    pub fn parse(url: &str) -> Result<Self> {
        let uri: ::http::Uri = url.parse().with_context(|| {
            format!("'{url}' is not a URL; expected e.g. https://127.0.0.1:8443")
        })?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => bail!(
                "'{url}': give an https:// URL (or http:// for the handoff server, which speaks plain HTTP)"
            ),
        };
        let auth = uri
            .authority()
            .with_context(|| format!("'{url}' has no host"))?;
        let port = auth
            .port_u16()
            .with_context(|| format!("'{url}' has no port; lab's servers have no default port"))?;
        let host = auth
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve '{host}'"))?
            .next()
            .with_context(|| format!("'{host}' has no address"))?;
        Ok(Self {
            authority: auth.as_str().to_owned(),
            host,
            addr,
            path: uri.path().to_owned(),
            tls,
        })
    }
}

/// Runs `prompts` `repeat` times with `runners.len()` prompts in flight at once, each
/// runner taking the next prompt as it finishes one; returns the records in prompt
/// order. `each` sees every record as soon as it is complete.
pub async fn run_concurrently(
    runners: Vec<Box<dyn Runner>>,
    prompts: &[Prompt],
    repeat: usize,
    urgent: &[usize],
    mut each: impl FnMut(&PromptRecord),
) -> Vec<PromptRecord> {
    let urgent = Arc::new(urgent.to_vec());
    let jobs: Vec<(usize, Prompt)> = (0..repeat.max(1))
        .flat_map(|_| prompts.iter().cloned())
        .enumerate()
        .collect();
    let total = jobs.len();
    let queue = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        jobs,
    )));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PromptRecord>();
    let mut tasks = Vec::new();
    for (slot, mut runner) in runners.into_iter().enumerate() {
        let (queue, tx, urgent) = (queue.clone(), tx.clone(), urgent.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let job = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((index, prompt)) = job else { break };
                let mut ignore = |_: &str| {};
                let mut r = runner.run(index, &prompt, &mut ignore).await;
                r.slot = slot as u32;
                r.urgent = urgent.contains(&index);
                if tx.send(r).is_err() {
                    break;
                }
            }
            runner
        }));
    }
    drop(tx);
    let mut out = Vec::with_capacity(total);
    while let Some(r) = rx.recv().await {
        each(&r);
        out.push(r);
    }
    for t in tasks {
        if let Ok(mut runner) = t.await {
            runner.close().await;
        }
    }
    out.sort_by_key(|r| r.index);
    out
}

/// Runs `prompts` `repeat` times in order and returns one record per prompt run.
/// `each` sees every record as soon as it is complete.
pub async fn run_all(
    runner: &mut dyn Runner,
    prompts: &[Prompt],
    repeat: usize,
    mut each: impl FnMut(&PromptRecord),
) -> Vec<PromptRecord> {
    let mut out = Vec::with_capacity(prompts.len() * repeat);
    let mut index = 0;
    for _ in 0..repeat.max(1) {
        for p in prompts {
            let mut ignore = |_: &str| {};
            let r = runner.run(index, p, &mut ignore).await;
            each(&r);
            out.push(r);
            index += 1;
        }
    }
    runner.close().await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.path, "/");
        let t = Target::parse("https://[::1]:4433/wt").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.path, "/wt");
        assert_eq!(t.authority, "[::1]:4433");
        assert!(t.tls);
        let t = Target::parse("http://127.0.0.1:8081").unwrap();
        assert!(!t.tls);
        for bad in ["ftp://127.0.0.1:1", "https://127.0.0.1", "nope nope"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        let e = Target::parse("ftp://127.0.0.1:1").unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
    }
}
