//! The second WebTransport stack's datagram server: session path `/wtq-dgram`, tokens in
//! datagrams as on `wt-dgram`, on web-transport-quinn ([`crate::wtq`]).

use crate::wtq::{Answers, start_with};

/// The session path.
pub const PATH: &str = crate::wtq::DGRAM_PATH;

/// Sets up the web-transport-quinn datagram server on `listener`.
pub fn start(listener: crate::Listener, env: crate::ServerEnv) -> anyhow::Result<crate::Serving> {
    start_with(listener, env, Answers::Datagrams)
}
