//! Length-prefixed messages, as the reference WebTransport benchmark frames them.
//!
//! A message is its payload length in ASCII decimal, a colon, then the payload:
//! `5:hello`. The empty message `0:` ends one response; it is a marker, never a token.
//!
//! This module is pure: it encodes into and decodes from byte buffers and performs no I/O.
//! The decoder is incremental, so bytes may arrive split at any offset.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest payload a message may carry: 1 MiB, as in the reference.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The most digits a length prefix may have before the colon. A value over the maximum
/// is reported as [`LenPrefixError::TooLarge`] as soon as its digits show it, so only a
/// prefix padded with leading zeros can reach this limit.
const MAX_DIGITS: usize = 8;

/// Why a byte stream is not a valid sequence of length-prefixed messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LenPrefixError {
    /// A byte other than an ASCII digit stood where the length prefix was expected.
    #[error("length prefix has a non-digit byte 0x{byte:02x} at offset {offset} of the prefix")]
    NonDigit { byte: u8, offset: usize },
    /// The colon after the length prefix is missing (the prefix ended without one).
    #[error("length prefix is not followed by ':'")]
    MissingColon,
    /// The length prefix has more digits than allowed (only leading zeros can get there).
    #[error("length prefix is longer than {MAX_DIGITS} digits")]
    Overflow,
    /// The declared length is larger than the maximum message size.
    #[error("declared length {len} is over the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message ({buffered} bytes of it buffered)")]
    Truncated { buffered: usize },
}

/// Appends one message to `out`.
///
/// # Errors
/// [`LenPrefixError::TooLarge`] if `payload` is over [`MAX_MESSAGE`].
pub fn encode(payload: &[u8], out: &mut BytesMut) -> Result<(), LenPrefixError> {
    if payload.len() > MAX_MESSAGE {
        return Err(LenPrefixError::TooLarge {
            len: payload.len(),
            max: MAX_MESSAGE,
        });
    }
    let digits = itoa_buf(payload.len());
    out.reserve(digits.len() + 1 + payload.len());
    out.put_slice(digits.as_bytes());
    out.put_u8(b':');
    out.put_slice(payload);
    Ok(())
}

/// The end-of-response marker, `0:`.
pub const END: &[u8] = b"0:";

/// One message, or the end-of-response marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A non-empty payload: one token (server to client) or one prompt (client to server).
    Message(Bytes),
    /// `0:`, the end of one response. Never a token.
    End,
}

/// An incremental decoder. Feed it bytes in any split with [`Decoder::extend`], take frames
/// with [`Decoder::next_frame`], and call [`Decoder::finish`] at end of stream.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
    failed: Option<LenPrefixError>,
}

impl Decoder {
    /// A decoder with the default 1 MiB limit.
    pub fn new() -> Self {
        Self::with_max(MAX_MESSAGE)
    }

    /// A decoder with a smaller limit (never larger than [`MAX_MESSAGE`]).
    pub fn with_max(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max: max.min(MAX_MESSAGE),
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// The first framing error; the decoder stays failed afterwards.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LenPrefixError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.parse() {
            Ok(f) => Ok(f),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, LenPrefixError> {
        let mut len: usize = 0;
        let mut digits = 0;
        for (i, &b) in self.buf.iter().enumerate() {
            match b {
                b'0'..=b'9' => {
                    if digits == MAX_DIGITS {
                        return Err(LenPrefixError::Overflow);
                    }
                    len = len * 10 + usize::from(b - b'0');
                    digits += 1;
                    // Checked per digit, so the error does not depend on how the input
                    // was split (a fuzzer found that it did).
                    if len > self.max {
                        return Err(LenPrefixError::TooLarge { len, max: self.max });
                    }
                }
                b':' if digits > 0 => {
                    let total = i + 1 + len;
                    if self.buf.len() < total {
                        self.buf.reserve(total - self.buf.len());
                        return Ok(None);
                    }
                    self.buf.advance(i + 1);
                    let payload = self.buf.split_to(len).freeze();
                    return Ok(Some(if len == 0 {
                        Frame::End
                    } else {
                        Frame::Message(payload)
                    }));
                }
                _ if digits > 0 => return Err(LenPrefixError::MissingColon),
                _ => return Err(LenPrefixError::NonDigit { byte: b, offset: i }),
            }
        }
        Ok(None)
    }

    /// Call at end of stream: succeeds only if no partial message is buffered.
    ///
    /// # Errors
    /// [`LenPrefixError::Truncated`] when the stream stopped inside a message, or the
    /// error the decoder already failed with.
    pub fn finish(&self) -> Result<(), LenPrefixError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(LenPrefixError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

/// Formats `n` in decimal without allocation.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: usize) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for p in parts {
            encode(p, &mut out).unwrap();
        }
        out.to_vec()
    }

    fn decode_all(input: &[u8], split: usize) -> Result<Vec<Frame>, LenPrefixError> {
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for chunk in [&input[..split], &input[split..]] {
            d.extend(chunk);
            while let Some(f) = d.next_frame()? {
                frames.push(f);
            }
        }
        d.finish()?;
        Ok(frames)
    }

    #[test]
    fn encodes_like_the_reference() {
        assert_eq!(enc(&[b"hello"]), b"5:hello");
        assert_eq!(enc(&[b""]), b"0:");
        assert_eq!(
            enc(&[" wörld".as_bytes()]),
            format!("{}: wörld", " wörld".len()).into_bytes()
        );
    }

    #[test]
    fn round_trips_at_every_split_offset() {
        let tokens: Vec<&[u8]> = vec![
            b"Hello",
            b" world",
            b"\n\n",
            b"12:34",
            "日本語 ✓".as_bytes(),
            &[b'x'; 300],
            b"",
        ];
        let wire = enc(&tokens);
        for split in 0..=wire.len() {
            let frames = decode_all(&wire, split).unwrap();
            assert_eq!(frames.len(), tokens.len(), "split {split}");
            for (f, t) in frames.iter().zip(&tokens) {
                match f {
                    Frame::Message(m) => assert_eq!(&m[..], *t, "split {split}"),
                    Frame::End => assert!(t.is_empty(), "split {split}"),
                }
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let wire = enc(&[b"ab", b"c", b""]);
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.extend(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        d.finish().unwrap();
        assert_eq!(
            got,
            vec![
                Frame::Message(Bytes::from_static(b"ab")),
                Frame::Message(Bytes::from_static(b"c")),
                Frame::End
            ]
        );
    }

    #[test]
    fn end_marker_is_not_a_message() {
        let frames = decode_all(b"1:a0:1:b0:", 0).unwrap();
        let tokens = frames
            .iter()
            .filter(|f| matches!(f, Frame::Message(_)))
            .count();
        assert_eq!(tokens, 2);
        assert_eq!(frames.iter().filter(|f| **f == Frame::End).count(), 2);
    }

    #[test]
    fn each_error_has_its_own_variant() {
        assert_eq!(
            decode_all(b"x:abc", 0),
            Err(LenPrefixError::NonDigit {
                byte: b'x',
                offset: 0
            })
        );
        assert_eq!(
            decode_all(b":abc", 0),
            Err(LenPrefixError::NonDigit {
                byte: b':',
                offset: 0
            })
        );
        assert_eq!(decode_all(b"12abc", 0), Err(LenPrefixError::MissingColon));
        assert_eq!(decode_all(b"000000001:a", 0), Err(LenPrefixError::Overflow));
        assert_eq!(
            decode_all(b"123456789:", 0),
            Err(LenPrefixError::TooLarge {
                len: 1_234_567,
                max: MAX_MESSAGE
            })
        );
        assert_eq!(
            decode_all(b"1048577:", 0),
            Err(LenPrefixError::TooLarge {
                len: 1_048_577,
                max: MAX_MESSAGE
            })
        );
        assert_eq!(
            decode_all(b"99999999", 0),
            Err(LenPrefixError::TooLarge {
                len: 9_999_999,
                max: MAX_MESSAGE
            })
        );
        // The same error whatever the split (found by the fuzzer).
        for split in 0..=9 {
            assert!(matches!(
                decode_all(b"414241424", split),
                Err(LenPrefixError::TooLarge { .. })
            ));
        }
        assert_eq!(
            decode_all(b"5:hel", 2),
            Err(LenPrefixError::Truncated { buffered: 5 })
        );
        assert_eq!(
            decode_all(b"12", 1),
            Err(LenPrefixError::Truncated { buffered: 2 })
        );
    }

    #[test]
    fn too_large_is_reported_before_the_payload_arrives() {
        let mut d = Decoder::new();
        d.extend(b"2000000:");
        assert!(matches!(
            d.next_frame(),
            Err(LenPrefixError::TooLarge { .. })
        ));
        // The decoder stays failed.
        d.extend(b"more");
        assert!(d.next_frame().is_err());
        assert!(d.finish().is_err());
    }

    #[test]
    fn exactly_the_maximum_is_allowed() {
        let payload = vec![b'a'; MAX_MESSAGE];
        let wire = enc(&[&payload]);
        let frames = decode_all(&wire, 3).unwrap();
        assert_eq!(frames, vec![Frame::Message(Bytes::from(payload))]);
        let mut out = BytesMut::new();
        assert!(encode(&vec![0; MAX_MESSAGE + 1], &mut out).is_err());
    }

    #[test]
    fn leading_zeros_are_digits() {
        assert_eq!(
            decode_all(b"03:abc", 0).unwrap(),
            vec![Frame::Message(Bytes::from_static(b"abc"))]
        );
    }
}
