//! The application protocols over the transport's byte streams: HTTP/1.1 (with chunked
//! bodies and upgrades), HTTP/2 frames, WebSocket frames, and HTTP/3 and WebTransport
//! streams. Each turns a stream into runs of layers, handing response bodies to their
//! token format ([`super::body`]). Pure.

use super::body::{self, Body};
use super::layers::{Layer, Runs};
use lab_codec::varint::varint;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The application protocol of an approach's connection.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum App {
    /// HTTP/1.1 over TLS over TCP.
    Http1,
    /// HTTP/1.1 over TCP, no TLS (the handoff server).
    PlainHttp1,
    /// HTTP/2 over TLS over TCP.
    Http2,
    /// WebSocket (an HTTP/1.1 upgrade) over TLS over TCP.
    WebSocket,
    /// WebTransport over HTTP/3 over QUIC.
    WebTransport,
    /// Raw QUIC streams, no HTTP/3: stream data is the body itself.
    Quic,
}

impl App {
    /// Whether TLS carries it (every approach over TCP but the handoff server's; QUIC
    /// has TLS inside).
    pub fn tls(self) -> bool {
        self != Self::PlainHttp1
    }
}

/// What the anatomy needs to know of an approach's wire: its application protocol and
/// how its bodies carry tokens.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wire {
    pub app: App,
    pub body: Body,
}

/// The runs of both directions of a connection's application data (TLS plaintext).
pub fn tcp(wire: Wire, up: &[u8], down: &[u8]) -> (Runs<()>, Runs<()>) {
    match wire.app {
        App::Http1 | App::PlainHttp1 | App::WebTransport | App::Quic => {
            // An upgrade to another protocol leaves the rest undecoded.
            let whole = |s: &[u8], request: bool| {
                let (mut r, _) = http1(s, request, wire.body);
                r.layer(Layer::Undecoded, s.len() - r.len() as usize);
                r
            };
            (whole(up, true), whole(down, false))
        }
        App::Http2 => (http2(up, true, wire.body), http2(down, false, wire.body)),
        App::WebSocket => (
            websocket(up, true, wire.body),
            websocket(down, false, wire.body),
        ),
    }
}

/// All of `bytes` as message bytes (request bodies).
fn message(bytes: &[u8]) -> Runs<()> {
    let mut r = Runs::default();
    r.layer(Layer::Message, bytes.len());
    r
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How an HTTP/1.1 message's body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    ToEnd,
    Upgrade,
}

/// Parses one head at the start of `s`: its length and its body's framing.
fn head(s: &[u8], request: bool) -> Option<(usize, Framing)> {
    let end = find(s, b"\r\n\r\n")? + 4;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (status, hs): (Option<u16>, &[httparse::Header]) = if request {
        let mut req = httparse::Request::new(&mut headers);
        req.parse(&s[..end]).ok()?.is_complete().then_some(())?;
        (None, req.headers)
    } else {
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&s[..end]).ok()?.is_complete().then_some(())?;
        (resp.code, resp.headers)
    };
    let value = |name: &str| {
        hs.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let framing = match status {
        Some(101) => Framing::Upgrade,
        None if value("upgrade").is_some() => Framing::Upgrade,
        Some(c) if (100..200).contains(&c) || c == 204 || c == 304 => Framing::Length(0),
        _ if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) => Framing::Chunked,
        _ => match value("content-length").and_then(|v| v.trim().parse().ok()) {
            Some(n) => Framing::Length(n),
            None if request => Framing::Length(0),
            None => Framing::ToEnd,
        },
    };
    Some((end, framing))
}

/// The runs of an HTTP/1.1 stream (requests when `request`), and where an upgrade
/// handed the stream to another protocol: the runs cover the stream up to there, or all
/// of it. Response bodies go to `body`'s format; request bodies are message bytes.
fn http1(s: &[u8], request: bool, body: Body) -> (Runs<()>, Option<usize>) {
    let mut r: Runs<usize> = Runs::default();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    let mut upgraded = None;
    'messages: while at < s.len() {
        let Some((len, framing)) = head(&s[at..], request) else {
            break;
        };
        r.layer(Layer::Http, len);
        at += len;
        let k = bodies.len();
        bodies.push(Vec::new());
        match framing {
            Framing::Upgrade => {
                upgraded = Some(at);
                break;
            }
            Framing::Length(n) => {
                let n = n.min(s.len() - at);
                r.inner(k, n);
                bodies[k].extend_from_slice(&s[at..at + n]);
                at += n;
            }
            Framing::ToEnd => {
                r.inner(k, s.len() - at);
                bodies[k].extend_from_slice(&s[at..]);
                at = s.len();
            }
            Framing::Chunked => loop {
                let Some(eol) = find(&s[at..], b"\r\n") else {
                    break 'messages;
                };
                let size = std::str::from_utf8(&s[at..at + eol])
                    .ok()
                    .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok());
                let Some(size) = size else { break 'messages };
                if size == 0 {
                    // The last chunk, trailers, and the blank line.
                    let Some(end) = find(&s[at..], b"\r\n\r\n") else {
                        break 'messages;
                    };
                    r.layer(Layer::Http, end + 4);
                    at += end + 4;
                    break;
                }
                if at + eol + 2 + size + 2 > s.len() {
                    break 'messages;
                }
                r.layer(Layer::Http, eol + 2);
                at += eol + 2;
                r.inner(k, size);
                bodies[k].extend_from_slice(&s[at..at + size]);
                at += size;
                r.layer(Layer::Http, 2);
                at += 2;
            },
        }
    }
    // What is left is a message cut short, or another protocol after an upgrade.
    if upgraded.is_none() {
        r.layer(Layer::Undecoded, s.len() - at);
    }
    let inner = bodies
        .iter()
        .enumerate()
        .map(|(k, b)| {
            (
                k,
                if request {
                    message(b)
                } else {
                    body::response(body, b)
                },
            )
        })
        .collect();
    (r.resolve(inner), upgraded)
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The runs of an HTTP/2 stream of frames: DATA frames' data is bodies (per HTTP/2
/// stream), everything else is HTTP.
fn http2(s: &[u8], from_client: bool, body: Body) -> Runs<()> {
    let mut r: Runs<u32> = Runs::default();
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut at = 0;
    if from_client && s.starts_with(H2_PREFACE) {
        r.layer(Layer::Http, H2_PREFACE.len());
        at = H2_PREFACE.len();
    }
    while let Some(h) = s.get(at..at + 9) {
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let sid = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if at + 9 + len > s.len() {
            break;
        }
        let payload = &s[at + 9..at + 9 + len];
        r.layer(Layer::Http, 9);
        if kind == 0 {
            // DATA, perhaps padded: pad length, data, padding.
            let (pad, skip) = if flags & 0x8 != 0 {
                (usize::from(payload.first().copied().unwrap_or(0)), 1)
            } else {
                (0, 0)
            };
            let data = len.saturating_sub(skip + pad);
            r.layer(Layer::Http, skip);
            r.inner(sid, data);
            bodies
                .entry(sid)
                .or_default()
                .extend_from_slice(&payload[skip.min(len)..skip.min(len) + data]);
            r.layer(Layer::Http, len - skip.min(len) - data);
        } else {
            r.layer(Layer::Http, len);
        }
        at += 9 + len;
    }
    r.layer(Layer::Undecoded, s.len() - at);
    let inner = bodies
        .into_iter()
        .map(|(sid, b)| {
            (
                sid,
                if from_client {
                    message(&b)
                } else {
                    body::response(body, &b)
                },
            )
        })
        .collect();
    r.resolve(inner)
}

/// The runs of a WebSocket connection's stream: the HTTP/1.1 upgrade, then frames. Text
/// messages from the server are tokens; the client's are prompts (message bytes).
/// With `Body::Relay`, a text message's token is what follows its sequence number and
/// hop; the REST requests of another connection are plain HTTP/1.1.
fn websocket(s: &[u8], from_client: bool, body: Body) -> Runs<()> {
    let (head, upgraded) = http1(s, from_client, body);
    let Some(mut at) = upgraded else {
        return head;
    };
    let mut r = head;
    // The opcode of the message that continuation frames continue.
    let mut current = 0u8;
    while at + 2 <= s.len() {
        let (b0, b1) = (s[at], s[at + 1]);
        let (ext, len7) = match b1 & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let Some(ext_bytes) = s.get(at + 2..at + 2 + ext) else {
            break;
        };
        let len =
            len7.unwrap_or_else(|| ext_bytes.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)));
        let header = 2 + ext + mask;
        let Ok(len) = usize::try_from(len) else { break };
        if at + header + len > s.len() {
            break;
        }
        let opcode = b0 & 0x0f;
        if opcode != 0 {
            current = opcode;
        }
        r.layer(Layer::Http, header);
        match (opcode, current) {
            (8..=10, _) => r.layer(Layer::Http, len),
            // A whole fan-out message in one frame (unmasked: the server's).
            (1, 1) if !from_client && body == Body::Relay && b0 & 0x80 != 0 => {
                let token = super::body::relay_token(&s[at + header..at + header + len]);
                r.layer(Layer::Message, len - token);
                r.layer(Layer::Payload, token);
            }
            (_, 1) if !from_client && body != Body::Relay => r.layer(Layer::Payload, len),
            _ => r.layer(Layer::Message, len),
        }
        at += header + len;
    }
    r.layer(Layer::Undecoded, s.len() - at);
    r
}

/// The WebTransport bidirectional stream signal (draft-ietf-webtrans-http3).
const WT_BIDI: u64 = 0x41;
/// The WebTransport unidirectional stream type.
const WT_UNI: u64 = 0x54;

/// Whether a bidirectional stream is a WebTransport stream, from the first bytes its
/// initiator sent (the WebTransport signal, then the session).
pub fn is_webtransport(initiator: &[u8]) -> bool {
    varint(initiator).is_some_and(|(v, _)| v == WT_BIDI)
}

/// The runs of one direction of a QUIC stream of an HTTP/3 connection, WebTransport
/// streams included. `initiator` says whether this direction opened the stream; `wt`
/// whether it is a WebTransport stream ([`is_webtransport`]). Stream headers and HTTP/3
/// frames are HTTP; WebTransport data and HTTP/3 DATA are bodies, the server's in the
/// token format, the client's message bytes.
pub fn quic_stream(
    body: Body,
    sid: u64,
    from_client: bool,
    initiator: bool,
    wt: bool,
    s: &[u8],
) -> Runs<()> {
    let mut r = Runs::default();
    let content = |r: &mut Runs<()>, data: &[u8]| {
        let inner = if from_client {
            message(data)
        } else {
            body::response(body, data)
        };
        append(r, &inner);
    };
    if sid & 2 != 0 {
        // A unidirectional stream: its type first.
        match varint(s) {
            Some((WT_UNI, n)) if varint(&s[n..]).is_some() => {
                let m = varint(&s[n..]).map_or(0, |v| v.1);
                r.layer(Layer::Http, n + m);
                content(&mut r, &s[n + m..]);
            }
            // Control, QPACK encoder and decoder streams: all HTTP/3.
            _ => r.layer(Layer::Http, s.len()),
        }
        return r;
    }
    if wt {
        let mut at = 0;
        if initiator {
            // The signal and the session ID.
            let Some((_, n)) = varint(s) else {
                r.layer(Layer::Undecoded, s.len());
                return r;
            };
            let Some((_, m)) = varint(&s[n..]) else {
                r.layer(Layer::Undecoded, s.len());
                return r;
            };
            at = n + m;
            r.layer(Layer::Http, at);
        }
        content(&mut r, &s[at..]);
        return r;
    }
    // HTTP/3 frames: type, length, payload.
    let mut at = 0;
    let mut data = Vec::new();
    let mut pieces: Runs<()> = Runs::default();
    while let Some((kind, a)) = varint(&s[at..])
        && let Some((len, b)) = varint(&s[at + a..])
    {
        let Ok(len) = usize::try_from(len) else { break };
        if at + a + b + len > s.len() {
            break;
        }
        pieces.layer(Layer::Http, a + b);
        if kind == 0 {
            pieces.inner((), len);
            data.extend_from_slice(&s[at + a + b..at + a + b + len]);
        } else {
            pieces.layer(Layer::Http, len);
        }
        at += a + b + len;
    }
    pieces.layer(Layer::Undecoded, s.len() - at);
    let inner = if from_client {
        message(&data)
    } else {
        body::response(body, &data)
    };
    append(&mut r, &pieces.resolve(HashMap::from([((), inner)])));
    r
}

/// The runs of one direction of a raw QUIC stream (no HTTP/3): all of it is body, the
/// server's in the token format, the client's message bytes.
pub fn raw_quic_stream(body: Body, from_client: bool, s: &[u8]) -> Runs<()> {
    if from_client {
        message(s)
    } else {
        body::response(body, s)
    }
}

fn append(to: &mut Runs<()>, from: &Runs<()>) {
    for (l, n) in from.pieces() {
        to.layer(l, n as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any plaintext, well-formed at first and then mangled, is covered byte for byte
    /// by every parser, without a panic.
    #[test]
    fn any_stream_is_covered_byte_for_byte() {
        let mut rng = lab_codec::rng::SplitMix64::new(11);
        let starts: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\ndata:\r\n",
            b"POST /chat HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello\x81\x7e\x00",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x00\x08\x00\x00\x00\x01",
            b"\x40\x41\x005:Hello0:",
            b"data: hi\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
        ];
        let wires = [
            (App::Http1, Body::Sse),
            (App::PlainHttp1, Body::Sse),
            (App::Http1, Body::OpenAi),
            (App::Http2, Body::Sse),
            (App::WebSocket, Body::Text),
            (App::WebTransport, Body::LenPrefix),
        ];
        for round in 0..3000 {
            let mut s = starts[rng.below(starts.len())].to_vec();
            for _ in 0..rng.below(200) {
                s.push(rng.next_u64() as u8);
            }
            if round % 2 == 1 && !s.is_empty() {
                let i = rng.below(s.len());
                s[i] = rng.next_u64() as u8;
                s.truncate(rng.below(s.len() + 1));
            }
            let (app, body) = wires[round % wires.len()];
            let (u, d) = tcp(Wire { app, body }, &s, &s);
            assert_eq!(u.len() as usize, s.len(), "round {round}");
            assert_eq!(d.len() as usize, s.len(), "round {round}");
            assert_eq!(u.sums().total() as usize, s.len());
            for sid in [0, 1, 2, 3] {
                for (from_client, initiator, wt) in [(true, true, true), (false, false, false)] {
                    let r = quic_stream(body, sid, from_client, initiator, wt, &s);
                    assert_eq!(r.sums().total() as usize, s.len(), "round {round}");
                }
            }
            assert_eq!(body::response(body, &s).sums().total() as usize, s.len());
        }
    }

    #[test]
    fn http1_heads_chunks_and_bodies() {
        let up = b"POST /chat HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
        let down = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nd\r\ndata: Hello\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
        let (u, d) = tcp(
            Wire {
                app: App::Http1,
                body: Body::Sse,
            },
            up,
            down,
        );
        let (u, d) = (u.sums(), d.sums());
        assert_eq!((u.http, u.message, u.total()), (51, 5, up.len() as u64));
        assert_eq!(d.payload, 5);
        // The head, three chunk-size lines with their CRLFs, and the last chunk.
        assert_eq!(d.http, 47 + 3 + 2 + 3 + 2 + 5);
        assert_eq!(d.total(), down.len() as u64);
        assert_eq!(d.undecoded, 0);
    }

    #[test]
    fn http2_data_frames_are_bodies() {
        let mut up = H2_PREFACE.to_vec();
        let frame = |kind: u8, flags: u8, sid: u32, payload: &[u8]| {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend_from_slice(&[kind, flags]);
            f.extend_from_slice(&sid.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        up.extend(frame(4, 0, 0, &[0; 6]));
        up.extend(frame(0, 1, 1, b"{\"message\":\"x\"}"));
        let mut down = frame(1, 4, 1, &[0x88]);
        down.extend(frame(0, 0x8, 1, b"\x02data: ab\n\n\0\0"));
        down.extend(frame(0, 0, 3, b"data: c\n\n"));
        let w = Wire {
            app: App::Http2,
            body: Body::Sse,
        };
        let (u, d) = tcp(w, &up, &down);
        let (u, d) = (u.sums(), d.sums());
        assert_eq!((u.http, u.message), (24 + 9 + 6 + 9, 15));
        assert_eq!(d.payload, 3);
        assert_eq!(d.http, 9 + 1 + 9 + 1 + 2 + 9);
        assert_eq!(d.total(), down.len() as u64);
    }

    #[test]
    fn websocket_frames_after_the_upgrade() {
        let up = b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\n\r\n\x81\x83abcdxyz";
        let down = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x02hi\x81\x00\x88\x02\x03\xe8";
        let w = Wire {
            app: App::WebSocket,
            body: Body::Text,
        };
        let (u, d) = tcp(w, up, down);
        let (u, d) = (u.sums(), d.sums());
        assert_eq!((u.http, u.message), (40 + 6, 3));
        assert_eq!((d.payload, d.http), (2, 56 + 2 + 2 + 4));
        assert_eq!(d.total(), down.len() as u64);
    }

    #[test]
    fn webtransport_streams_and_http3_frames() {
        // A server's WebTransport stream: signal 0x41 (two-byte varint), session 0.
        let up = b"\x40\x41\x002:Hi";
        assert!(is_webtransport(up));
        let r = quic_stream(Body::LenPrefix, 0, true, true, true, up).sums();
        assert_eq!((r.http, r.message), (3, 4));
        // The server's side of it: no header, tokens.
        let r = quic_stream(Body::LenPrefix, 0, false, false, true, b"5:Hello0:").sums();
        assert_eq!((r.http, r.payload, r.message), (0, 5, 4));
        // The CONNECT stream: a HEADERS frame each way.
        let s = b"\x01\x03abc";
        assert!(!is_webtransport(s));
        assert_eq!(
            quic_stream(Body::LenPrefix, 0, true, true, false, s)
                .sums()
                .http,
            5
        );
        assert_eq!(
            quic_stream(Body::LenPrefix, 0, false, false, false, s)
                .sums()
                .http,
            5
        );
        // A control stream (type 0, SETTINGS).
        let s = b"\x00\x04\x02\x01\x02";
        assert_eq!(
            quic_stream(Body::LenPrefix, 3, false, true, false, s)
                .sums()
                .http,
            5
        );
    }
}
