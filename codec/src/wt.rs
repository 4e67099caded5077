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

/// What begins a message a client may send before its prompt to ask for an answer of
/// exactly N tokens: `\0answer_len=N`, N in decimal. Like [`URGENT`] it begins with a
/// NUL byte, which no prompt does. lab's WebSocket and WebTransport clients send it only
/// when a request has its own length, so the bytes of every other run are unchanged.
pub const ANSWER_LEN: &[u8] = b"\0answer_len=";

/// The longest answer a request may ask for, in tokens (every entry point's bound).
pub const MAX_ANSWER_LEN: u32 = 1_000_000;

/// `n` as an answer length, if it is one: 1 to [`MAX_ANSWER_LEN`] tokens.
pub fn answer_len(n: u64) -> Option<u32> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_ANSWER_LEN).contains(n))
}

/// The message that asks for an answer of `n` tokens.
pub fn answer_len_message(n: u32) -> Vec<u8> {
    let mut m = ANSWER_LEN.to_vec();
    m.extend_from_slice(n.to_string().as_bytes());
    m
}

/// Reads an answer-length message: `None` for any other message, an error for one that
/// begins as it does but carries no length of 1 to 1,000,000 tokens.
pub fn parse_answer_len(m: &[u8]) -> Option<Result<u32, String>> {
    let rest = m.strip_prefix(ANSWER_LEN)?;
    Some(
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .and_then(answer_len)
            .ok_or_else(|| {
                format!(
                    "answer length {:?} is not a number of tokens from 1 to 1000000",
                    String::from_utf8_lossy(rest)
                )
            }),
    )
}

/// A message a client may send before its prompt to ask for the upstream's count of the
/// answer's tokens (its `usage.completion_tokens`). The server then sends
/// `\0usage=N` after the answer's last token, before its end, when the upstream gave a
/// count. A chunk may carry several tokens: this count keeps tokens and chunks apart.
pub const USAGE: &[u8] = b"\0usage";

/// The message that carries the answer's token count.
pub fn usage_message(n: u64) -> Vec<u8> {
    format!("\0usage={n}").into_bytes()
}

/// Reads a token-count message: `None` for any other message (a token never begins
/// with NUL), an error for one that begins as it does but carries no count.
pub fn parse_usage(m: &[u8]) -> Option<Result<u64, String>> {
    let rest = m.strip_prefix(b"\0usage=")?;
    Some(
        std::str::from_utf8(rest)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                format!(
                    "token count {:?} is not a number",
                    String::from_utf8_lossy(rest)
                )
            }),
    )
}

/// The first HTTP/3 error code of the WebTransport application error range
/// (draft-ietf-webtrans-http3, "Resetting Data Streams").
const HTTP3_FIRST: u64 = 0x52e4a40fa8db;

/// The HTTP/3 error code that carries WebTransport application error `code` on the
/// wire (in RESET_STREAM and STOP_SENDING of a WebTransport stream): the range starts
/// at 0x52e4a40fa8db and skips the reserved code points 0x1f * N + 0x21.
pub fn to_http3(code: u32) -> u64 {
    HTTP3_FIRST + u64::from(code) + u64::from(code) / 0x1e
}

/// The WebTransport application error code an HTTP/3 error code carries, if it is one:
/// `None` outside the range and for its reserved code points.
pub fn from_http3(code: u64) -> Option<u32> {
    if code < HTTP3_FIRST || (code >= 0x21 && (code - 0x21).is_multiple_of(0x1f)) {
        return None;
    }
    let shifted = code - HTTP3_FIRST;
    u32::try_from(shifted - shifted / 0x1f).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_length_messages_round_trip_and_bad_ones_are_named() {
        assert_eq!(answer_len_message(48), b"\0answer_len=48");
        assert_eq!(parse_answer_len(&answer_len_message(48)), Some(Ok(48)));
        assert_eq!(parse_answer_len(b"What is TCP?"), None);
        assert_eq!(parse_answer_len(URGENT), None);
        for bad in [
            &b"\0answer_len="[..],
            b"\0answer_len=0",
            b"\0answer_len=x",
            b"\0answer_len=2000000",
        ] {
            let e = parse_answer_len(bad).unwrap().unwrap_err();
            assert!(e.contains("from 1 to 1000000"), "{e}");
        }
    }

    #[test]
    fn usage_messages_round_trip_and_bad_ones_are_named() {
        assert_eq!(parse_usage(&usage_message(187)), Some(Ok(187)));
        assert_eq!(parse_usage(USAGE), None);
        assert_eq!(parse_usage(b"usage=3"), None);
        assert!(
            parse_usage(b"\0usage=x")
                .unwrap()
                .unwrap_err()
                .contains("not a number")
        );
    }

    #[test]
    fn application_codes_map_into_the_http3_range_and_back() {
        assert_eq!(to_http3(0), 0x52e4a40fa8db);
        assert_eq!(to_http3(ERR_FRAMING), 0x52e4a40fa8db + 0x10);
        // Every 0x1e codes, one reserved code point is skipped.
        assert_eq!(to_http3(0x1d), 0x52e4a40fa8db + 0x1d);
        assert_eq!(to_http3(0x1e), 0x52e4a40fa8db + 0x1f);
        assert_eq!(to_http3(u32::MAX), 0x52e5ac983162);
        for c in [
            0,
            1,
            ERR_FRAMING,
            ERR_UPSTREAM,
            0x1d,
            0x1e,
            0x1f,
            1000,
            u32::MAX,
        ] {
            assert_eq!(from_http3(to_http3(c)), Some(c), "{c:#x}");
        }
        // The skipped point between 0x1d and 0x1e is reserved, not a code.
        let reserved = 0x52e4a40fa8db + 0x1e;
        assert!((reserved - 0x21_u64).is_multiple_of(0x1f));
        assert_eq!(from_http3(reserved), None);
        // Raw codes below the range are not WebTransport's.
        assert_eq!(from_http3(0x10), None);
    }
}
