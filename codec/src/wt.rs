//! Facts of lab's WebTransport protocol that its server and clients share. The framing
//! itself is [`crate::lenprefix`].

/// Stream reset code: the client's bytes were not valid length-prefixed messages.
pub const ERR_FRAMING: u32 = 0x10;
/// Stream reset code: the upstream LLM failed before the answer was complete.
pub const ERR_UPSTREAM: u32 = 0x11;
/// A length-prefixed message a client may send on a stream before its prompt: answer
/// this stream before the others of the connection (the server raises its send
/// priority). It begins with a NUL byte, which no prompt does.
pub const URGENT: &[u8] = b"\0urgent";
