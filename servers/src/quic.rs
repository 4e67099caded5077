//! The raw QUIC server: quinn itself, with no HTTP/3 and no WebTransport session, ALPN
//! [`lab_codec::trust::ALPN_QUIC`]. Its streams carry the WebTransport server's protocol
//! ([`crate::streams`]): each client bidirectional stream carries prompts as
//! `<len>:<prompt>`, each answered with `<len>:<token>` messages and `0:`.
//!
//! It accepts 0-RTT: a client resuming an earlier connection sends its prompt in its
//! first flight, and the server reads it and starts answering (0.5-RTT data) before the
//! handshake completes. What raw QUIC saves against `wt` is the HTTP/3 set-up: SETTINGS
//! and the extended CONNECT of the session.

use crate::Limits;
use crate::stats::ServerStats;
use crate::upstream::Upstream;
use lab_codec::transport::Quic;
use std::sync::Arc;
use wtransport::quinn;

/// Raw QUIC has no URL path.
pub const PATH: &str = "";

/// The library and its version, as reports name it (checked against Cargo.lock).
pub const STACK: &str = "quinn 0.11.12";

/// Sets up the raw QUIC server on `listener`; errors in its settings come here, before
/// it serves.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let udp = listener.udp("raw QUIC")?;
    let up = Arc::new(env.upstream_client()?);
    let endpoint = endpoint(udp, env.cert.quic_server_config()?, &env.transport.quic)?;
    Ok(Box::pin(serve(endpoint, up, env.stats, env.limits)))
}

/// Builds the quinn endpoint on an already-bound UDP socket, with `quic`'s settings.
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    quic: &Quic,
) -> anyhow::Result<quinn::Endpoint> {
    socket.set_nonblocking(true)?;
    // The socket itself, for what quinn has no setting for (ECN off).
    let same = socket.try_clone()?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(quic.transport_config()?));
    let mut config = quinn::EndpointConfig::default();
    quic.endpoint_config(&mut config);
    let endpoint =
        quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))?;
    quic.after_bind(&same)?;
    Ok(endpoint)
}

/// Accepts connections until the endpoint closes.
pub async fn serve(
    endpoint: quinn::Endpoint,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: Limits,
) -> anyhow::Result<()> {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(connection(
            incoming,
            upstream.clone(),
            stats.clone(),
            limits,
        ));
    }
    Ok(())
}

async fn connection(
    incoming: quinn::Incoming,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: Limits,
) {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("incoming connection failed: {e}");
            return;
        }
    };
    // Streams a resuming client opened in 0-RTT are served at once (a server's
    // conversion always succeeds); the handshake must still complete within the header
    // deadline, or the connection is closed.
    let (conn, handshake) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, accepted),
        Err(_) => return,
    };
    let deadline = limits.header;
    let watch = conn.clone();
    tokio::spawn(async move {
        if tokio::time::timeout(deadline, handshake).await.is_err() {
            tracing::debug!("no handshake within {deadline:?}");
            watch.close(
                quinn::VarInt::from_u32(crate::streams::CLOSE_IDLE),
                b"handshake",
            );
        }
    });
    stats.connection_opened();
    crate::streams::serve(
        conn,
        crate::streams::Tokens::Stream,
        upstream,
        stats.clone(),
        limits,
    )
    .await;
    stats.connection_closed();
}
