//! Counters a server keeps about itself: connections, requests, tokens.
//!
//! Tests read them to prove what happened on the wire side of a server, for example that
//! a client in `reuse` mode really kept one connection.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Shared, lock-free counters.
#[derive(Debug, Default)]
pub struct ServerStats {
    accepted: AtomicU64,
    open: AtomicU64,
    requests: AtomicU64,
    tokens: AtomicU64,
    errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct StatsSnapshot {
    /// Connections (TCP, or QUIC for WebTransport) accepted since start.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Requests (HTTP requests, or WebTransport prompts) received.
    pub requests: u64,
    /// Tokens sent.
    pub tokens: u64,
    /// Requests or streams that ended in an error.
    pub errors: u64,
}

impl ServerStats {
    pub fn connection_opened(&self) {
        self.accepted.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
    }
    pub fn connection_closed(&self) {
        self.open.fetch_sub(1, Relaxed);
    }
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }
    pub fn tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Relaxed);
    }
    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_accepted: self.accepted.load(Relaxed),
            connections_open: self.open.load(Relaxed),
            requests: self.requests.load(Relaxed),
            tokens: self.tokens.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}
