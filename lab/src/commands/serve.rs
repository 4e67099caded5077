//! `lab serve llm|<server>`: the mock LLM or one approach's server, in the foreground.
//!
//! Each binds, prints one JSON readiness line on stdout (what an orchestrator waits for),
//! logs a human line on stderr, and serves until SIGINT or SIGTERM.

use crate::approach::{Approach, Transport};
use crate::cli::{LlmArgs, MockArgs, Serve, ServerArgs, TlsArgs};
use anyhow::{Context, Result};
use lab_servers::llm::MockConfig;
use lab_servers::stats::ServerStats;
use lab_servers::tls::CertKey;
use lab_servers::{Listener, ServerEnv};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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
            limits: lab_servers::Limits::default(),
            chunk_tokens: self.chunk_tokens as usize,
        }
    }
}

/// The open-file limit a server raises itself to (within the kernel's ceiling): a
/// load test's 100,000 streams take a socket each, and a server that makes upstream
/// requests one more per stream.
const SERVER_NOFILE: u64 = 262_144;

pub async fn run(cmd: Serve) -> Result<()> {
    // Registered before the ready line: a SIGTERM right after it is a clean stop.
    let signals = super::Signals::new()?;
    match crate::netlab::sys::raise_nofile(SERVER_NOFILE) {
        Ok(n) if n < SERVER_NOFILE => tracing::info!(
            "open-file limit {n}: a load test over about {} streams will be refused connections",
            n / 2
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e:#}"),
    }
    match cmd {
        Serve::Llm(a) => llm(a, &signals).await,
        Serve::Approach(a, args) => approach(a, *args, &signals).await,
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

/// Connections a listener queues before the server accepts them (the kernel caps it at
/// `net.core.somaxconn`, which lab raises in a load test's server namespaces).
const BACKLOG: u32 = 65_535;

/// A listening TCP socket on `addr`, with `tcp`'s socket buffers when set (before
/// listening: accepted connections inherit them, and the window scale they offer).
/// `reuseport`: one of several processes on the port (`--workers`).
async fn bind_tcp(
    addr: SocketAddr,
    what: &str,
    tcp: &lab_codec::transport::Tcp,
    reuseport: bool,
) -> Result<TcpListener> {
    let bind = || -> Result<TcpListener> {
        let s = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        s.set_reuseaddr(true)?;
        if reuseport {
            s.set_reuseport(true)?;
        }
        lab_codec::transport::set_buffers(&s, tcp.socket_receive_buffer, tcp.socket_send_buffer)?;
        s.bind(addr)?;
        Ok(s.listen(BACKLOG)?)
    };
    bind().with_context(|| {
        format!(
            "cannot listen on {addr} for the {what}; is the port in use? pick another with --listen"
        )
    })
}

fn cert(tls: &TlsArgs) -> Result<CertKey> {
    let ck = CertKey::from_args(tls.cert.as_deref(), tls.key.as_deref(), &tls.sans)?;
    if let Some(dir) = &tls.cert_out {
        let d = crate::netlab::files::SafeDir::open(dir, true)?;
        d.write("cert.pem", ck.cert_pem.as_bytes(), 0o644)?;
        d.write("key.pem", ck.key_pem.as_bytes(), 0o600)?;
        tracing::info!("wrote {}/cert.pem and key.pem (0600)", dir.display());
    }
    Ok(ck)
}

/// Gives memory that closed connections freed back to the system.
///
/// glibc's malloc keeps freed memory in its per-thread arenas: after 2,000 idle TLS
/// connections closed, an SSE server stayed at 70 MiB against 21 MiB before, and
/// `malloc_trim(0)` brought it back to 26 MiB; a leak would not have come back. So
/// after a batch of connections closed (64, or all of them), this trims, at most
/// every 2 s.
async fn return_freed_memory(stats: Arc<ServerStats>) {
    let mut trimmed_at = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let s = stats.snapshot();
        let closed = s.connections_accepted - s.connections_open;
        let since = closed - trimmed_at;
        if since >= 64 || (since > 0 && s.connections_open == 0) {
            trimmed_at = closed;
            // SAFETY: malloc_trim only releases free memory, and is thread-safe.
            #[cfg(target_env = "gnu")]
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

async fn until_signal(
    server: impl std::future::Future<Output = Result<()>>,
    signals: &super::Signals,
) -> Result<()> {
    tokio::select! {
        r = server => r,
        _ = signals.wait(1) => {
            tracing::info!("stopping");
            Ok(())
        }
    }
}

async fn llm(a: LlmArgs, signals: &super::Signals) -> Result<()> {
    let l = bind_tcp(a.listen, "mock LLM", &Default::default(), false).await?;
    let addr = l.local_addr()?;
    let cfg = Arc::new(MockConfig {
        limits: a.limits.limits(),
        ..a.mock.config(a.models, a.max_body)
    });
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
    let stats = Arc::new(ServerStats::default());
    tokio::spawn(return_freed_memory(stats.clone()));
    until_signal(lab_servers::llm::serve(l, cfg, stats), signals).await
}

/// An approach's server: binds its transport, prints the ready line, serves.
async fn approach(a: Approach, args: ServerArgs, signals: &super::Signals) -> Result<()> {
    super::serve_workers::refuse(a, args.workers)?;
    let cert = match args.worker {
        Some(_) => super::serve_workers::handed_cert().await?,
        None => cert(&args.tls)?,
    };
    let what = format!("{} server", a.server);
    let listen = args.worker.unwrap_or(args.listen);
    let listener = match a.transport {
        Transport::Tcp => Listener::Tcp(
            bind_tcp(
                listen,
                &what,
                &args.transport.clone().unwrap_or_default().tcp,
                args.workers > 1,
            )
            .await?,
        ),
        Transport::Udp => Listener::Udp(std::net::UdpSocket::bind(args.listen).with_context(|| {
            format!(
                "cannot listen on UDP {} for the {what}; is the port in use? pick another with --listen",
                args.listen
            )
        })?),
    };
    let addr = listener.local_addr()?;
    let upstream = args.upstream.clone();
    let stats = Arc::new(ServerStats::default());
    tokio::spawn(return_freed_memory(stats.clone()));
    let env = ServerEnv {
        cert: cert.clone(),
        upstream: args.upstream,
        model: args.model,
        upstream_h2: args.upstream_h2,
        sampling: args.sampling.unwrap_or_default(),
        stats,
        limits: args.limits.limits(),
        transport: args.transport.unwrap_or_default(),
        program: std::env::current_exe().ok(),
    };
    let serving = a.serve(listener, env)?;
    if args.worker.is_some() {
        return until_signal(serving, signals).await;
    }
    let mut workers = match args.workers {
        1 => None,
        n => Some(super::serve_workers::start(n, addr, &cert).await?),
    };
    // A plain-HTTP server presents no certificate.
    ready(
        a.server,
        addr,
        &a.url(addr),
        a.wire.app.tls().then_some(&cert),
    );
    if a.model == crate::approach::Model::Client {
        tracing::info!("forwarding to {upstream}");
    }
    let Some(w) = workers.as_mut() else {
        return until_signal(serving, signals).await;
    };
    tracing::info!("{} processes serve {addr} (SO_REUSEPORT)", args.workers);
    let served = until_signal(
        async {
            tokio::select! {
                r = serving => r,
                e = w.first_end() => Err(e),
            }
        },
        signals,
    )
    .await;
    if let Some(w) = workers {
        w.stop(Duration::from_secs(5)).await;
    }
    served
}

/// `lab helper <server>`: a process a server started of its own (its registry entry's
/// `helper`), with the settings the server gave it.
pub async fn helper(a: crate::cli::HelperArgs) -> Result<()> {
    let helper = crate::approach::by_server(&a.server)
        .and_then(|e| e.helper)
        .with_context(|| {
            format!(
                "'{}' is not a server with a helper process; `lab serve <server>` starts its helper, not a user",
                a.server
            )
        })?;
    helper(a.config).await
}

/// `lab part <server> <part>`: a part of an approach that runs as a process of its own
/// (its registry entry's `parts`), until SIGINT or SIGTERM.
pub async fn part(a: crate::cli::PartArgs) -> Result<()> {
    let signals = super::Signals::new()?;
    let with_parts: Vec<String> = crate::approach::all()
        .flat_map(|e| {
            e.parts
                .iter()
                .map(move |p| format!("{} {}", e.server, p.name))
        })
        .collect();
    let entry = crate::approach::by_server(&a.server).with_context(|| {
        format!(
            "no server '{}'; the parts there are: {}",
            a.server,
            with_parts.join(", ")
        )
    })?;
    let part = entry
        .parts
        .iter()
        .find(|p| p.name == a.part)
        .with_context(|| {
            format!(
                "the {} server has no part '{}'; the parts there are: {}",
                a.server,
                a.part,
                with_parts.join(", ")
            )
        })?;
    let what = format!("{} {}", a.server, part.name);
    let listener = bind_tcp(a.listen, &what, &Default::default(), false).await?;
    let addr = listener.local_addr()?;
    let env = lab_servers::PartEnv {
        listener,
        broker: a.broker,
        upstream: a.upstream,
        model: a.model,
        stats: Arc::new(ServerStats::default()),
    };
    let serving = (part.start)(env).await?;
    ready(&what, addr, &format!("http://{addr}"), None);
    until_signal(serving, &signals).await
}
