//! lab's shared protocol crate: what its servers and clients both speak and know.
//!
//! - [`lenprefix`]: the `<len>:<payload>` messages that WebTransport streams carry.
//! - [`sse`]: Server-Sent Events, encoder and incremental decoder (WHATWG).
//! - [`openai`]: OpenAI chat-completion types, and byte-exact Ollama chunk writers.
//! - [`wt`]: the WebTransport protocol's reset codes.
//! - [`dgram`]: tokens in WebTransport datagrams, and the tally that ends an answer.
//! - [`varint`]: QUIC's variable-length integers.
//! - [`trust`]: how a client trusts a server (pin, CA, none), ALPN, the crypto provider.
//! - [`transport`]: QUIC and TCP settings, applied alike by servers and clients.
//! - [`rng`]: the seeded random number generator behind every deterministic choice.
//!
//! The codecs perform no I/O; every decoder is incremental and accepts any split of its
//! input. Clients depend on this crate, never on the servers.

pub mod dgram;
pub mod lenprefix;
pub mod openai;
pub mod relay;
pub mod rng;
pub mod sse;
pub mod transport;
pub mod trust;
pub mod varint;
pub mod wt;
