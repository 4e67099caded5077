//! `lab relay`: makes an upstream on the host (say Ollama on 127.0.0.1:11434) reachable
//! from inside the lab without touching the host's network configuration (no routes, NAT
//! or forwarding sysctls).
//!
//! The relay runs in the host's namespace. Its listening socket is made on a thread that
//! has joined the lab's LLM namespace — a socket belongs to the namespace it was created
//! in — so it accepts connections there and dials the upstream from the host. Bytes are
//! copied unchanged in both directions.

use super::sys;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// Binds `listen` inside the namespace `netns`.
pub fn bind_in(netns: &str, listen: SocketAddr) -> Result<std::net::TcpListener> {
    let ns = sys::open_netns(netns)?;
    sys::in_netns(&ns, || {
        let l = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen} in {netns}"))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// The `host:port` of an http:// URL.
pub fn authority(url: &str) -> Result<String> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("'{url}' is not a URL"))?;
    let auth = uri
        .authority()
        .with_context(|| format!("'{url}' has no host"))?;
    Ok(match auth.port_u16() {
        Some(_) => auth.to_string(),
        None => format!("{}:80", auth.host()),
    })
}

/// Accepts forever, relaying each connection to `to`.
pub async fn serve(listener: std::net::TcpListener, to: String) -> Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (mut inbound, peer) = listener.accept().await?;
        let to = to.clone();
        tokio::spawn(async move {
            let mut outbound = match TcpStream::connect(&to).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("relay: cannot reach the upstream {to} for {peer}: {e}");
                    return;
                }
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            match tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                Ok((up, down)) => {
                    tracing::debug!("relay: {peer} done, {up} B up, {down} B down")
                }
                Err(e) => tracing::debug!("relay: {peer}: {e}"),
            }
        });
    }
}
