//! The SSE server over HTTP/2: the same `POST /chat` and event stream as [`crate::sse`],
//! over TLS with ALPN `h2`. Each prompt is a stream of one TCP connection, so prompts in
//! flight at once are multiplexed: the TCP counterpart of WebTransport's streams, with
//! TCP's head-of-line blocking.

use std::sync::Arc;

/// The path the server serves (the SSE server's).
pub const PATH: &str = crate::sse::PATH;

/// Sets up the SSE-over-HTTP/2 server on `listener`; errors in its settings come here,
/// before it serves.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let tcp = listener.tcp("SSE over HTTP/2")?;
    let up = Arc::new(env.upstream_client()?);
    let tls = Arc::new(env.cert.h2_server_config()?);
    let app = crate::sse::app(up, env.stats.clone());
    Ok(Box::pin(crate::http::serve_tls(
        tcp,
        tls,
        app,
        env.stats,
        env.limits,
        crate::http::Version::Http2,
        env.transport.tcp.nodelay,
    )))
}
