//! The second WebTransport server: web-transport-quinn (the Media over QUIC project's
//! stack) on lab's own quinn endpoint. Session path `/wtq` carries tokens on the request
//! stream as `wt` does, `/wtq-dgram` ([`crate::wtq_dgram`]) in datagrams as `wt-dgram`
//! does: the same stream
//! protocol ([`crate::streams`]), the same answers, a different HTTP/3 and WebTransport
//! implementation, so a figure can be told apart from the library that made it.
//!
//! lab drives quinn itself here, so each connection is taken in 0.5-RTT (quinn's
//! `into_0rtt`, which a server may always do): the server's SETTINGS leave with its
//! handshake flight, and a client can send its CONNECT with its own Finished, one round
//! trip sooner than wtransport allows (docs/quic.md). The handshake, the SETTINGS and
//! the session request must all come within the header deadline.

use crate::Limits;
use crate::stats::ServerStats;
use crate::upstream::Upstream;
use std::sync::Arc;
use web_transport_quinn::quinn;

/// The session path of tokens on streams.
pub const PATH: &str = "/wtq";
/// The session path of tokens in datagrams.
pub const DGRAM_PATH: &str = "/wtq-dgram";

/// The library and its version, as reports name it (checked against Cargo.lock).
pub const STACK: &str = "web-transport-quinn 0.13.5";

/// How a session carries answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answers {
    Streams,
    Datagrams,
}

/// Sets up the server of `/wtq` on `listener`.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    start_with(listener, env, Answers::Streams)
}

/// Sets up the server of `answers` on `listener` ([`crate::wtq_dgram`] for datagrams).
pub(crate) fn start_with(
    listener: crate::Listener,
    env: crate::ServerEnv,
    answers: Answers,
) -> anyhow::Result<crate::Serving> {
    let udp = listener.udp("WebTransport (web-transport-quinn)")?;
    let up = Arc::new(env.upstream_client()?);
    let endpoint = crate::quic::endpoint(udp, env.cert.h3_server_config()?, &env.transport.quic)?;
    Ok(Box::pin(serve(
        endpoint, answers, up, env.stats, env.limits,
    )))
}

/// Accepts connections until the endpoint closes.
async fn serve(
    endpoint: quinn::Endpoint,
    answers: Answers,
    upstream: Arc<Upstream>,
    stats: Arc<ServerStats>,
    limits: Limits,
) -> anyhow::Result<()> {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(session(
            incoming,
            answers,
            upstream.clone(),
            stats.clone(),
            limits,
        ));
    }
    Ok(())
}

async fn session(
    incoming: quinn::Incoming,
    answers: Answers,
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
    // A server's conversion to 0.5-RTT always succeeds.
    let conn = match connecting.into_0rtt() {
        Ok((conn, _)) => conn,
        Err(_) => return,
    };
    let request = tokio::time::timeout(
        limits.header,
        web_transport_quinn::Request::accept(conn.clone()),
    )
    .await;
    let req = match request {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!("session set-up failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("no session request within {:?}", limits.header);
            conn.close(
                quinn::VarInt::from_u32(crate::streams::CLOSE_IDLE),
                b"no session request",
            );
            return;
        }
    };
    let want = match answers {
        Answers::Streams => PATH,
        Answers::Datagrams => DGRAM_PATH,
    };
    if req.url.path() != want {
        tracing::debug!("session request for {}: 404", req.url.path());
        // Not `req.reject`: web-transport-quinn 0.13.5 drops the HTTP/3 control streams
        // with it, which a strict client takes for H3_CLOSED_CRITICAL_STREAM before it
        // reads the 404 (aioquic does; servers/tests/webtransport_libraries.rs shows
        // it). A response of 404 keeps them, and the connection is held until the
        // client closes it (or the deadline), so that the answer is delivered.
        if let Ok(refused) = req.respond(http::StatusCode::NOT_FOUND).await {
            let _ = tokio::time::timeout(limits.header, refused.closed()).await;
        }
        return;
    }
    let session = match req.ok().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("session accept failed: {e}");
            return;
        }
    };
    let datagrams = answers == Answers::Datagrams;
    crate::streams::serve_session(session, datagrams, upstream, stats, limits).await;
}
