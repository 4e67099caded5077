//! QUIC client endpoints: one per connection, or shared by many connections.
//!
//! A QUIC endpoint is one UDP socket, and its connections are told apart by their
//! connection IDs, so one endpoint can carry any number of connections. A load
//! generator shares them ([`Shared`]): its connections go out over one endpoint per
//! source address and client thread (as many as the machine has CPUs), so 100,000
//! WebTransport sessions cost a few descriptors instead of 100,000. Everywhere else
//! (a cell's prompts, `lab client`) each connection keeps an endpoint, and so a client
//! port, of its own.
//!
//! Endpoints are shared only where the library can tell their connections apart: with
//! connection IDs of length 0 (`transport.quic.cid_length: 0`), quinn routes what a
//! client endpoint receives by the server's address alone and holds at most one
//! connection per server, so each connection gets its own endpoint.

use crate::quic_rt::WtClient;
use lab_codec::transport::Quic;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use wtransport::quinn;

/// Endpoints shared by the runners built from [`crate::RunnerOpts`] that hold it (a load
/// generator's): one per approach, local address and client thread, made when first
/// asked for. Approaches do not share an endpoint: each configures its own (`wt-dgram`
/// its datagrams, for one).
#[derive(Default)]
pub struct Shared {
    turn: AtomicUsize,
    quinn: Mutex<HashMap<Key, quinn::Endpoint>>,
    wt: Mutex<HashMap<Key, WtClient>>,
}

/// An endpoint's approach, local address and client thread.
type Key = (&'static str, SocketAddr, usize);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("quinn", &lock(&self.quinn).len())
            .field("wt", &lock(&self.wt).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// How many endpoints have been made, of either kind.
    pub fn len(&self) -> usize {
        lock(&self.quinn).len() + lock(&self.wt).len()
    }

    /// Whether none has been made.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of the next connection's endpoint: its approach and local address, and
    /// the client threads in turn.
    fn key(&self, approach: &'static str, bind: SocketAddr) -> anyhow::Result<Key> {
        let n = crate::quic_rt::runtimes()?;
        Ok((
            approach,
            bind,
            self.turn.fetch_add(1, Ordering::Relaxed) % n,
        ))
    }
}

/// Whether connections with these settings may share an endpoint.
fn shareable(quic: &Quic) -> bool {
    quic.cid_length > 0
}

/// A quinn client endpoint on a socket of its own bound to `bind`, with the settings'
/// connection-ID length and socket options.
fn bind_quinn(bind: SocketAddr, quic: &Quic) -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    // The socket itself, for what quinn has no setting for (ECN off).
    let same = socket.try_clone()?;
    let mut ecfg = quinn::EndpointConfig::default();
    quic.endpoint_config(&mut ecfg);
    let endpoint = quinn::Endpoint::new(ecfg, None, socket, Arc::new(quinn::TokioRuntime))?;
    quic.after_bind(&same)?;
    Ok(endpoint)
}

/// The quinn endpoint for a connection of `opts` from `bind`: a shared one where the
/// options hold [`Shared`] endpoints and their settings allow it, else one of its own.
/// Must be called on a tokio runtime, which drives the endpoint.
pub fn for_quinn(opts: &crate::RunnerOpts, bind: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let quic = &opts.transport.quic;
    let Some(shared) = opts.endpoints.as_deref().filter(|_| shareable(quic)) else {
        return bind_quinn(bind, quic);
    };
    let key = shared.key(opts.approach, bind)?;
    let mut map = lock(&shared.quinn);
    if let Some(e) = map.get(&key) {
        return Ok(e.clone());
    }
    let e = bind_quinn(bind, quic)?;
    map.insert(key, e.clone());
    Ok(e)
}

/// The wtransport endpoint for a session of `opts` from `bind`, made by `make` from a
/// socket bound there (on client runtime `k`, or the next one when `None`): a shared
/// one where the options hold [`Shared`] endpoints and their settings allow it, else
/// one of its own.
pub fn for_wtransport(
    opts: &crate::RunnerOpts,
    bind: SocketAddr,
    make: impl FnOnce(std::net::UdpSocket, Option<usize>) -> anyhow::Result<WtClient>,
) -> anyhow::Result<WtClient> {
    let socket = || -> anyhow::Result<std::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(bind)?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let Some(shared) = opts
        .endpoints
        .as_deref()
        .filter(|_| shareable(&opts.transport.quic))
    else {
        return make(socket()?, None);
    };
    let key = shared.key(opts.approach, bind)?;
    let mut map = lock(&shared.wt);
    if let Some(e) = map.get(&key) {
        return Ok(e.clone());
    }
    let e = make(socket()?, Some(key.2))?;
    map.insert(key, e.clone());
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn opts(approach: &'static str, shared: Option<&Arc<Shared>>, cid: u8) -> crate::RunnerOpts {
        let mut o = crate::RunnerOpts::new(
            approach,
            crate::record::Mode::Reuse,
            std::time::Duration::from_secs(1),
            lab_codec::trust::Trust::Insecure,
            "m",
        );
        o.endpoints = shared.cloned();
        o.transport.quic.cid_length = cid;
        o
    }

    fn ports(n: usize, o: &crate::RunnerOpts, bind: &str) -> HashSet<u16> {
        (0..n)
            .map(|_| {
                let e = for_quinn(o, bind.parse().unwrap()).unwrap();
                e.local_addr().unwrap().port()
            })
            .collect()
    }

    /// Shared: one endpoint per client runtime and local address, however many
    /// connections ask; without connection IDs, or without sharing, one each.
    #[tokio::test]
    async fn endpoints_are_shared_per_runtime_and_address_where_connection_ids_allow() {
        let cpus = crate::quic_rt::runtimes().unwrap();
        let shared = Arc::new(Shared::default());
        let quic = opts("quic", Some(&shared), 8);
        assert_eq!(ports(3 * cpus, &quic, "127.0.0.1:0").len(), cpus);
        assert_eq!(shared.len(), cpus);
        // Another local address, or another approach, is another socket.
        assert_eq!(ports(cpus, &quic, "127.0.0.2:0").len(), cpus);
        assert_eq!(shared.len(), 2 * cpus);
        let wtq = opts("wtq", Some(&shared), 8);
        let mut both = ports(cpus, &wtq, "127.0.0.1:0");
        assert_eq!(both.len(), cpus);
        both.extend(ports(cpus, &quic, "127.0.0.1:0"));
        assert_eq!(both.len(), 2 * cpus, "wtq and quic share no endpoint");
        assert_eq!(shared.len(), 3 * cpus);
        let zero = opts("quic", Some(&shared), 0);
        assert_eq!(ports(4, &zero, "127.0.0.1:0").len(), 4);
        assert_eq!(shared.len(), 3 * cpus, "nothing kept for zero-length IDs");
        assert_eq!(ports(4, &opts("quic", None, 8), "127.0.0.1:0").len(), 4);
    }
}
