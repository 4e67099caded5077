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
//! - [`relay`]: tokens relayed through a broker (the fan-out's messages).
//!
//! The codecs perform no I/O; every decoder is incremental and accepts any split of its
//! input. Clients depend on this crate, never on the servers.

/// Nanoseconds on the machine's monotonic clock (`CLOCK_MONOTONIC`): one clock for
/// every network namespace, so that times two of a lab's processes take compare (the
/// fan-out's broker hop, the link emulator's schedule).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

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
