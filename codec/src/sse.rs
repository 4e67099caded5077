//! Server-Sent Events, encoder and incremental decoder, per the WHATWG HTML standard
//! ("9.2 Server-sent events", the event stream interpretation).
//!
//! The decoder accepts CR, LF and CRLF line endings (a CRLF split across two reads is one
//! line ending), comment lines, fields without a colon, and strips one leading UTF-8 BOM.
//! The encoder writes a value that contains line breaks as several `data:` lines, so it
//! decodes back to the same text. A bare CR cannot be represented in SSE: the encoder
//! treats CR, LF and CRLF alike as one line break, so such text decodes with LF.
//!
//! Pure code: no I/O.

use bytes::{Buf, BufMut, BytesMut};

/// The data of the event that ends a stream in the OpenAI convention.
pub const DONE: &str = "[DONE]";

/// Default limit for one line and for one event's data: 1 MiB plus framing slack.
pub const DEFAULT_MAX_EVENT: usize = (1 << 20) + 4096;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field; empty means the default type, `message`.
    pub event: String,
    /// The joined `data:` lines, without the final line feed.
    pub data: String,
    /// The last event id in force when this event was dispatched.
    pub id: Option<String>,
    /// A `retry:` value seen in this event, in milliseconds.
    pub retry: Option<u64>,
}

impl Event {
    /// Whether this is the `data: [DONE]` sentinel.
    pub fn is_done(&self) -> bool {
        self.data == DONE && (self.event.is_empty() || self.event == "message")
    }

    /// The event type with the default applied.
    pub fn kind(&self) -> &str {
        if self.event.is_empty() {
            "message"
        } else {
            &self.event
        }
    }
}

/// Why an event stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A single line was longer than the decoder's limit.
    #[error("a line is longer than the limit of {max} bytes")]
    LineTooLong { max: usize },
    /// An event's data grew beyond the decoder's limit.
    #[error("an event's data is longer than the limit of {max} bytes")]
    EventTooLarge { max: usize },
}

/// Writes `data` as one event: one `data: ` line per line of `data`, then a blank line.
pub fn encode_data(data: &str, out: &mut BytesMut) {
    encode_event(None, data, out);
}

/// Writes one event with an optional `event:` type.
pub fn encode_event(event: Option<&str>, data: &str, out: &mut BytesMut) {
    out.reserve(data.len() + 16);
    if let Some(e) = event {
        out.put_slice(b"event: ");
        out.put_slice(e.as_bytes());
        out.put_u8(b'\n');
    }
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' | b'\r' => {
                put_data_line(&bytes[start..i], out);
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    put_data_line(&bytes[start..], out);
    out.put_u8(b'\n');
}

/// Writes a comment line (`: text`), which decoders ignore; used as a keep-alive.
pub fn encode_comment(text: &str, out: &mut BytesMut) {
    out.put_slice(b": ");
    out.put_slice(text.as_bytes());
    out.put_u8(b'\n');
}

fn put_data_line(line: &[u8], out: &mut BytesMut) {
    out.put_slice(b"data: ");
    out.put_slice(line);
    out.put_u8(b'\n');
}

/// An incremental event-stream decoder.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max: usize,
    /// Where to resume scanning for a line end in `buf`.
    scanned: usize,
    /// The previous chunk ended with CR: a leading LF belongs to that line ending.
    skip_lf: bool,
    bom_checked: bool,
    data: String,
    event: String,
    retry: Option<u64>,
    last_id: Option<String>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with [`DEFAULT_MAX_EVENT`] as its limit.
    pub fn new() -> Self {
        Self::with_max(DEFAULT_MAX_EVENT)
    }

    /// A decoder with a given limit for lines and event data.
    pub fn with_max(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
            scanned: 0,
            skip_lf: false,
            bom_checked: false,
            data: String::new(),
            event: String::new(),
            retry: None,
            last_id: None,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next dispatched event, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// A line or an event over the limit.
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        if !self.bom_checked {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let n = self.buf.len().min(BOM.len());
            if self.buf[..n] != BOM[..n] {
                self.bom_checked = true;
            } else if n == BOM.len() {
                self.buf.advance(BOM.len());
                self.bom_checked = true;
            } else {
                return Ok(None);
            }
        }
        loop {
            if self.skip_lf && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
                self.skip_lf = false;
            }
            let Some(pos) = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .map(|p| p + self.scanned)
            else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max {
                    return Err(SseError::LineTooLong { max: self.max });
                }
                return Ok(None);
            };
            if pos > self.max {
                return Err(SseError::LineTooLong { max: self.max });
            }
            let line = self.buf.split_to(pos);
            let ending = self.buf[0];
            self.buf.advance(1);
            self.scanned = 0;
            if ending == b'\r' {
                if self.buf.is_empty() {
                    self.skip_lf = true;
                } else if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
            }
            if let Some(ev) = self.process_line(&line)? {
                return Ok(Some(ev));
            }
        }
    }

    fn process_line(&mut self, line: &[u8]) -> Result<Option<Event>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    return Err(SseError::EventTooLarge { max: self.max });
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"id" if !value.contains(&0) => {
                self.last_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<Event> {
        let retry = self.retry.take();
        if self.data.is_empty() {
            self.event.clear();
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        Some(Event {
            event: std::mem::take(&mut self.event),
            data,
            id: self.last_id.clone(),
            retry,
        })
    }

    /// Bytes received that do not yet form a complete line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether an event was started but not yet ended by a blank line. Per the standard,
    /// such an event is discarded at end of stream; a caller may want to report it.
    pub fn has_partial_event(&self) -> bool {
        !self.data.is_empty() || !self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> Vec<Event> {
        let mut d = Decoder::new();
        d.extend(input);
        let mut out = Vec::new();
        while let Some(e) = d.next_event().unwrap() {
            out.push(e);
        }
        out
    }

    fn decode_split(input: &[u8], split: usize) -> Vec<Event> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for part in [&input[..split], &input[split..]] {
            d.extend(part);
            while let Some(e) = d.next_event().unwrap() {
                out.push(e);
            }
        }
        out
    }

    fn data(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn encodes_like_the_reference() {
        let mut b = BytesMut::new();
        encode_data("Hello", &mut b);
        encode_data(DONE, &mut b);
        assert_eq!(&b[..], b"data: Hello\n\ndata: [DONE]\n\n");
    }

    #[test]
    fn newline_token_is_several_data_lines_and_round_trips() {
        let mut b = BytesMut::new();
        encode_data("line one\nline two\n", &mut b);
        assert_eq!(&b[..], b"data: line one\ndata: line two\ndata: \n\n");
        assert_eq!(data(&decode(&b)), vec!["line one\nline two\n"]);
    }

    #[test]
    fn tricky_tokens_round_trip_at_every_split() {
        let tokens = [
            " world",
            "\n",
            "\n\n",
            "",
            " ",
            "a:b",
            ": not a comment",
            "日本",
            "x\ny",
            "[DONE]x",
            "  two",
            "\u{feff}bom-in-data",
        ];
        let mut b = BytesMut::new();
        for t in tokens {
            encode_data(t, &mut b);
        }
        for split in 0..=b.len() {
            assert_eq!(data(&decode_split(&b, split)), tokens, "split {split}");
        }
    }

    #[test]
    fn cr_and_crlf_in_tokens_become_lf() {
        let mut b = BytesMut::new();
        encode_data("a\r\nb\rc", &mut b);
        assert_eq!(&b[..], b"data: a\ndata: b\ndata: c\n\n");
        assert_eq!(data(&decode(&b)), vec!["a\nb\nc"]);
    }

    #[test]
    fn all_line_endings() {
        let input = b"data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\ndata: e\n\r";
        for split in 0..=input.len() {
            assert_eq!(
                data(&decode_split(input, split)),
                vec!["a", "b", "c", "d\ne"],
                "split {split}"
            );
        }
    }

    #[test]
    fn comments_fields_without_colon_and_unknown_fields() {
        let input = b": keep-alive\nfoo: bar\ndata\ndata:x\n\nevent: error\ndata: boom\nid: 7\nretry: 3000\n\n";
        let ev = decode(input);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "\nx");
        assert_eq!(ev[0].kind(), "message");
        assert_eq!(ev[1].kind(), "error");
        assert_eq!(ev[1].data, "boom");
        assert_eq!(ev[1].id.as_deref(), Some("7"));
        assert_eq!(ev[1].retry, Some(3000));
    }

    #[test]
    fn only_one_space_is_stripped() {
        assert_eq!(data(&decode(b"data:  x\n\n")), vec![" x"]);
        assert_eq!(data(&decode(b"data:x\n\n")), vec!["x"]);
    }

    #[test]
    fn leading_bom_is_stripped_once_even_when_split() {
        let input = b"\xEF\xBB\xBFdata: a\n\n";
        for split in 0..=input.len() {
            assert_eq!(
                data(&decode_split(input, split)),
                vec!["a"],
                "split {split}"
            );
        }
        // A second BOM is part of the field name, so the line is an unknown field.
        assert!(decode(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n").is_empty());
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        assert!(decode(b"event: x\n\n\n\n").is_empty());
        // The event type does not leak into the next event.
        let ev = decode(b"event: x\n\ndata: y\n\n");
        assert_eq!(ev[0].kind(), "message");
    }

    #[test]
    fn done_detection() {
        let ev = decode(b"data: [DONE]\n\nevent: other\ndata: [DONE]\n\n");
        assert!(ev[0].is_done());
        assert!(!ev[1].is_done());
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let mut d = Decoder::new();
        d.extend(b"data: partial\n");
        assert_eq!(d.next_event().unwrap(), None);
        assert!(d.has_partial_event());
    }

    #[test]
    fn limits() {
        let mut d = Decoder::with_max(8);
        d.extend(b"data: 0123456789");
        assert_eq!(d.next_event(), Err(SseError::LineTooLong { max: 8 }));
        // The same whether or not the line end has arrived.
        let mut d = Decoder::with_max(8);
        d.extend(b"data: 0123456789\n\n");
        assert_eq!(d.next_event(), Err(SseError::LineTooLong { max: 8 }));
        let mut d = Decoder::with_max(8);
        d.extend(b"data:012\ndata:345\ndata:678\n");
        assert_eq!(d.next_event(), Err(SseError::EventTooLarge { max: 8 }));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(data(&decode(b"data: \xff\n\n")), vec!["\u{fffd}"]);
    }
}
