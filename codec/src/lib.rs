//! Pure wire codecs shared by lab's servers and clients.
//!
//! - [`lenprefix`]: the `<len>:<payload>` messages that WebTransport streams carry.
//! - [`sse`]: Server-Sent Events, encoder and incremental decoder (WHATWG).
//! - [`openai`]: OpenAI chat-completion types, and byte-exact Ollama chunk writers.
//!
//! Nothing here performs I/O; every decoder is incremental and accepts any split of its
//! input.

pub mod lenprefix;
pub mod openai;
pub mod sse;
