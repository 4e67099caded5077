//! Token bodies: which bytes of a response body are the tokens themselves, as the client
//! decodes them, and which are the framing around them. Pure; the decoders are lab's
//! own codecs, the same the clients use.

use super::layers::{Layer, Runs};
use lab_codec::{lenprefix, openai::ChatChunk, sse};
use serde::{Deserialize, Serialize};

/// How tokens are carried in a response body.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Body {
    /// Server-Sent Events, each `message` event's data one token (lab's SSE servers).
    Sse,
    /// Server-Sent Events of OpenAI chat chunks; a token is a chunk's non-empty content.
    OpenAi,
    /// WebSocket text messages, each one token; an empty one ends the answer.
    Text,
    /// Length-prefixed messages, `<len>:<token>`, ended by `0:`.
    LenPrefix,
    /// The fan-out's WebSocket text messages, `t <seq> <hop> <token>`: the token after
    /// the third space, the rest framing ([`lab_codec::relay`]); its REST bodies (the
    /// session id, the prompt) are message bytes.
    Relay,
    /// A token per QUIC DATAGRAM frame, after the stream id and sequence number
    /// ([`lab_codec::dgram`]); the request stream's answer is the tally and `0:`, all
    /// framing.
    Datagram,
}

/// One unit of `len` bytes carrying a token of `token` bytes: the token in the middle,
/// framing around it (what precedes it, and up to two bytes after it, as an SSE event's
/// blank line or a JSON envelope's closing brackets).
fn unit(r: &mut Runs<()>, len: usize, token: usize) {
    let token = token.min(len);
    let tail = (len - token).min(2);
    r.layer(Layer::Message, len - token - tail);
    r.layer(Layer::Payload, token);
    r.layer(Layer::Message, tail);
}

/// The runs of one response body.
pub fn response(body: Body, bytes: &[u8]) -> Runs<()> {
    let mut r = Runs::default();
    match body {
        Body::Sse | Body::OpenAi => {
            let mut dec = sse::Decoder::new();
            dec.extend(bytes);
            let mut done = 0;
            while let Ok(Some(ev)) = dec.next_event() {
                let upto = bytes.len() - dec.buffered();
                let token = if ev.is_done() {
                    0
                } else if body == Body::Sse {
                    if ev.kind() == "message" {
                        ev.data.len()
                    } else {
                        0
                    }
                } else {
                    serde_json::from_str::<ChatChunk>(&ev.data)
                        .ok()
                        .and_then(|c| c.content().map(str::len))
                        .unwrap_or(0)
                };
                unit(&mut r, upto - done, token);
                done = upto;
            }
            r.layer(Layer::Message, bytes.len() - done);
        }
        Body::LenPrefix => {
            let mut dec = lenprefix::Decoder::new();
            dec.extend(bytes);
            let mut done = 0;
            while let Ok(Some(f)) = dec.next_frame() {
                let upto = bytes.len() - dec.buffered();
                let token = match f {
                    lenprefix::Frame::Message(m) => m.len(),
                    lenprefix::Frame::End => 0,
                };
                // The prefix comes first, then the token: no tail.
                r.layer(Layer::Message, upto - done - token);
                r.layer(Layer::Payload, token);
                done = upto;
            }
            r.layer(Layer::Message, bytes.len() - done);
        }
        Body::Text => unit(&mut r, bytes.len(), bytes.len()),
        // The tokens are in datagrams (or WebSocket messages), not here.
        Body::Datagram | Body::Relay => r.layer(Layer::Message, bytes.len()),
    }
    r
}

/// The token's bytes in a fan-out text message from a gateway (0 in any other).
pub fn relay_token(msg: &[u8]) -> usize {
    match std::str::from_utf8(msg).map(lab_codec::relay::Msg::parse) {
        Ok(Ok(lab_codec::relay::Msg::Token { text, .. })) => text.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_codec::openai::{ChunkWriter, StreamFormat, Usage};

    #[test]
    fn sse_tokens_are_the_event_data() {
        let b = b"data: Hello\n\ndata: a\ndata: b\n\nevent: error\ndata: x\n\ndata: [DONE]\n\ndata: par";
        let r = response(Body::Sse, b);
        let s = r.sums();
        // "Hello", then "a\nb" (three bytes as the client decodes it).
        assert_eq!(s.payload, 5 + 3);
        assert_eq!(s.message + s.payload, b.len() as u64);
    }

    #[test]
    fn openai_tokens_are_the_chunk_content() {
        let mut w = ChunkWriter::new(StreamFormat::Openai, "id".into(), "m".into(), true);
        let mut out = String::new();
        w.content(&mut out, 1, "Hi");
        w.content(&mut out, 1, " there\n");
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        };
        w.finish(&mut out, 1, usage);
        let s = response(Body::OpenAi, out.as_bytes()).sums();
        assert_eq!(s.payload, 2 + 7);
        assert_eq!(s.total(), out.len() as u64);
    }

    #[test]
    fn a_relayed_token_is_what_follows_its_sequence_and_hop() {
        let m = b"t 12 345 Hello world";
        assert_eq!(relay_token(m), 11);
        assert_eq!(relay_token(b"e 12"), 0);
        assert_eq!(relay_token(b"r"), 0);
        let s = response(Body::Relay, br#"{"id":"ab"}"#).sums();
        assert_eq!((s.payload, s.message), (0, 11));
    }

    #[test]
    fn length_prefixed_tokens_are_the_messages() {
        let b = b"5:Hello2:, 0:";
        let s = response(Body::LenPrefix, b).sums();
        assert_eq!((s.payload, s.message), (7, 6));
    }
}
