//! lab's servers. Each takes an already-bound socket, so the lab can bind inside a network
//! namespace and tests can bind on loopback.
//!
//! Data flow of one token: [`llm`] (mock, or a real upstream) -> [`upstream`] client ->
//! [`sse`] / [`wt`] server -> client. The [`proxy`] forwards the raw API unchanged.

pub mod http;
pub mod llm;
pub mod proxy;
pub mod sse;
pub mod stats;
pub mod textgen;
pub mod tls;
pub mod upstream;
pub mod wt;
