//! The WebTransport datagram server: session path `/wt-dgram`.
//!
//! The client writes each prompt on a bidirectional stream, as on `wt`. The server sends
//! each token in a datagram of its own, `<stream id><sequence><token>`, never again if
//! it is lost; then, on the stream, the tally `<tokens> <bytes>` as a length-prefixed
//! message and the end marker `0:` ([`lab_codec::dgram`]). A token too large for a
//! datagram, or a session without datagrams, resets that stream with
//! [`lab_codec::dgram::ERR_DATAGRAM`]; bad framing and upstream failures are as on `wt`.

use crate::wt::{Answers, endpoint, serve};
use std::sync::Arc;

/// The session path.
pub const PATH: &str = crate::wt::DGRAM_PATH;

/// Sets up the WebTransport datagram server on `listener`.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    let udp = listener.udp("WebTransport datagram")?;
    let up = Arc::new(env.upstream_client()?);
    let endpoint = endpoint(udp, env.cert.h3_server_config()?, &env.transport.quic)?;
    Ok(Box::pin(serve(
        endpoint,
        Answers::Datagrams,
        up,
        env.stats,
        env.limits,
    )))
}
