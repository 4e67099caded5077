//! The WebTransport server: HTTP/3 over QUIC, session path `/wt`.
//!
//! Each client bidirectional stream carries one or more prompts as `<len>:<prompt>`. For
//! each prompt, in order, the server streams the upstream's tokens as `<len>:<token>`,
//! then `0:`. It reads every request stream to its end (Chromium sends STOP_SENDING
//! otherwise) and finishes its side once the client has finished its own and every prompt
//! is answered.
//!
//! Errors never take the session down: bad framing or an upstream failure resets that
//! stream ([`crate::streams`]); any path other than `/wt` gets 404.
//!
//! The same server with session path `/wt-dgram` is [`crate::wt_dgram`]: its tokens go
//! in datagrams instead.

use crate::Limits;
use crate::stats::ServerStats;
use crate::upstream::Upstream;
use lab_codec::transport::Quic;
use std::sync::Arc;
use wtransport::endpoint::IncomingSession;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::{Endpoint, ServerConfig};

/// The session path.
pub const PATH: &str = "/wt";
/// The session path of the same server with tokens in datagrams ([`crate::wt_dgram`]).
pub const DGRAM_PATH: &str = "/wt-dgram";

/// The library and its version, as reports name it (checked against Cargo.lock).
pub const STACK: &str = "wtransport 0.7.2";

/// Sets up the WebTransport server on `listener`; errors in its settings come here,
/// before it serves.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let udp = listener.udp("WebTransport")?;
    let up = Arc::new(env.upstream_client()?);
    let endpoint = endpoint(udp, env.cert.h3_server_config()?, &env.transport.quic)?;
    Ok(Box::pin(serve(
        endpoint,
        Answers::Streams,
        up,
        env.stats,
        env.limits,
    )))
}

/// How a server's sessions carry answers: the session path it serves, and where tokens go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// `/wt`: tokens on the request stream.
    Streams,
    /// `/wt-dgram`: tokens in datagrams, the tally on the stream.
    Datagrams,
}

impl Answers {
    fn path(self) -> &'static str {
        match self {
            Self::Streams => PATH,
            Self::Datagrams => DGRAM_PATH,
        }
    }
}

/// Builds the QUIC endpoint on an already-bound UDP socket, with `quic`'s settings.
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    quic: &Quic,
) -> anyhow::Result<Endpoint<Server>> {
    socket.set_nonblocking(true)?;
    // The socket itself, for what quinn has no setting for (ECN off).
    let same = socket.try_clone()?;
    let mut cfg = ServerConfig::builder()
        .with_bind_socket(socket)
        .with_custom_tls_and_transport(tls, quic.transport_config()?)
        .build();
    quic.endpoint_config(cfg.quic_endpoint_config_mut());
    let endpoint = Endpoint::server(cfg)?;
    quic.after_bind(&same)?;
    Ok(endpoint)
}

/// Accepts sessions forever.
pub async fn serve(
    endpoint: Endpoint<Server>,
    answers: Answers,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: Limits,
) -> anyhow::Result<()> {
    loop {
        let incoming = endpoint.accept().await;
        tokio::spawn(session(
            incoming,
            answers,
            upstream.clone(),
            stats.clone(),
            limits,
        ));
    }
}

async fn session(
    incoming: IncomingSession,
    answers: Answers,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: Limits,
) {
    // The QUIC handshake and the session request, within the header deadline.
    let req = match tokio::time::timeout(limits.header, incoming).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!("incoming session failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("no session request within {:?}", limits.header);
            return;
        }
    };
    let path = req.path().split('?').next().unwrap_or("");
    if path != answers.path() {
        tracing::debug!("session request for {path}: 404");
        req.not_found().await;
        return;
    }
    let conn = match req.accept().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("session accept failed: {e}");
            return;
        }
    };
    let datagrams = answers == Answers::Datagrams;
    crate::streams::serve_session(conn, datagrams, upstream, stats, limits).await;
}
