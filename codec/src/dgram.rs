//! Tokens in WebTransport datagrams (the `wt-dgram` approach). Pure.
//!
//! The client opens a bidirectional stream and writes its prompt on it as on `wt`
//! (`<len>:<prompt>`, [`crate::lenprefix`]). The server sends each token of the answer
//! in a datagram of its own, after WebTransport's session prefix:
//!
//! ```text
//! stream id (varint) | sequence number (varint) | token (the rest, UTF-8)
//! ```
//!
//! - the stream id is the QUIC id of the request stream, so answers to prompts in flight
//!   at once on one session come apart;
//! - sequence numbers count the stream's tokens from 0, on through the answers to
//!   further prompts on the same stream (lab's clients send one prompt per stream);
//! - varints are QUIC's (RFC 9000 16, [`crate::varint`]).
//!
//! Datagrams are never sent again, so the end of an answer goes on the request stream,
//! reliably: one length-prefixed [`Tally`] message, `<tokens> <bytes>` in ASCII decimal
//! (the datagrams sent and their tokens' bytes), then the end marker `0:`. The client
//! counts what arrived against the tally: delivered, lost, and reordered (arrived after a
//! higher sequence number).

use bytes::BufMut;

/// Stream reset code: a token would not fit in a datagram, or the client's session
/// takes no datagrams.
pub const ERR_DATAGRAM: u32 = 0x12;

/// One token as a datagram carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    pub stream: u64,
    pub seq: u64,
    pub token: &'a str,
}

/// Why a datagram is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DgramError {
    #[error("datagram of {0} bytes ends inside its stream id or sequence number")]
    Truncated(usize),
    #[error("datagram's token (stream {stream}, sequence {seq}) is not UTF-8")]
    NotUtf8 { stream: u64, seq: u64 },
    #[error("stream id or sequence number {0} is over QUIC's varint maximum, 2^62 - 1")]
    TooLarge(u64),
}

/// Appends one token's datagram to `out`.
///
/// # Errors
/// [`DgramError::TooLarge`] if the stream id or sequence number is past 2^62 - 1.
pub fn encode(t: &Token, out: &mut impl BufMut) -> Result<(), DgramError> {
    crate::varint::put(t.stream, out).ok_or(DgramError::TooLarge(t.stream))?;
    crate::varint::put(t.seq, out).ok_or(DgramError::TooLarge(t.seq))?;
    out.put_slice(t.token.as_bytes());
    Ok(())
}

/// Reads one datagram.
///
/// # Errors
/// [`DgramError`]: the ids are cut short, or the token is not UTF-8. An empty token is
/// valid (the mock never sends one).
pub fn decode(d: &[u8]) -> Result<Token<'_>, DgramError> {
    let (stream, a) = crate::varint::varint(d).ok_or(DgramError::Truncated(d.len()))?;
    let (seq, b) = crate::varint::varint(&d[a..]).ok_or(DgramError::Truncated(d.len()))?;
    let token =
        std::str::from_utf8(&d[a + b..]).map_err(|_| DgramError::NotUtf8 { stream, seq })?;
    Ok(Token { stream, seq, token })
}

/// What the server says it sent for one answer: the end message on the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Datagrams sent, one per token.
    pub tokens: u64,
    /// Their tokens' bytes.
    pub bytes: u64,
}

impl Tally {
    /// The message's payload, `<tokens> <bytes>`.
    pub fn message(&self) -> String {
        format!("{} {}", self.tokens, self.bytes)
    }

    /// Parses a tally message.
    ///
    /// # Errors
    /// A message naming what it expected, when `m` is not two decimal numbers.
    pub fn parse(m: &[u8]) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected the datagram tally '<tokens> <bytes>', got {:?}",
                String::from_utf8_lossy(&m[..m.len().min(40)])
            )
        };
        let s = std::str::from_utf8(m).map_err(|_| bad())?;
        let (a, b) = s.split_once(' ').ok_or_else(bad)?;
        let num = |x: &str| -> Result<u64, String> {
            if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse().map_err(|_| bad())
        };
        Ok(Self {
            tokens: num(a)?,
            bytes: num(b)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_with_their_ids() {
        for (stream, seq, token) in [
            (0, 0, "Hi"),
            (4, 63, " there"),
            (1 << 20, 64, ""),
            (8, 1 << 40, "é"),
        ] {
            let t = Token { stream, seq, token };
            let mut out = Vec::new();
            encode(&t, &mut out).unwrap();
            assert_eq!(decode(&out), Ok(t));
        }
        // Stream 4, sequence 64 (two bytes: 0x40 0x40), "ok".
        let mut out = Vec::new();
        encode(
            &Token {
                stream: 4,
                seq: 64,
                token: "ok",
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0x04, 0x40, 0x40, b'o', b'k']);
    }

    #[test]
    fn bad_datagrams_say_what_is_wrong() {
        assert_eq!(decode(&[]), Err(DgramError::Truncated(0)));
        assert_eq!(decode(&[0x04]), Err(DgramError::Truncated(1)));
        assert_eq!(decode(&[0x04, 0x40]), Err(DgramError::Truncated(2)));
        assert_eq!(
            decode(&[0x04, 0x01, 0xff]),
            Err(DgramError::NotUtf8 { stream: 4, seq: 1 })
        );
        let mut out = Vec::new();
        let e = encode(
            &Token {
                stream: u64::MAX,
                seq: 0,
                token: "",
            },
            &mut out,
        );
        assert_eq!(e, Err(DgramError::TooLarge(u64::MAX)));
    }

    #[test]
    fn tallies_are_two_numbers() {
        let t = Tally {
            tokens: 12,
            bytes: 345,
        };
        assert_eq!(t.message(), "12 345");
        assert_eq!(Tally::parse(b"12 345"), Ok(t));
        for bad in [
            &b""[..],
            b"12",
            b"12 ",
            b" 345",
            b"a b",
            b"1 2 3",
            b"-1 2",
            b"\xff 1",
            b"99999999999999999999 1",
        ] {
            let e = Tally::parse(bad).unwrap_err();
            assert!(e.contains("'<tokens> <bytes>'"), "{e}");
        }
    }
}
