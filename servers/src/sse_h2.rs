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
    let app = crate::sse::app(Arc::new(env.upstream_client()?), env.stats.clone());
    crate::http::start_router(
        listener,
        env,
        "SSE over HTTP/2",
        app,
        crate::http::Version::Http2,
    )
}
