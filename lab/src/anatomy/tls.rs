//! TLS 1.3 over a reassembled TCP connection: each direction's records, their overhead,
//! and their plaintext, decrypted with the key log's traffic secrets. Pure.
//!
//! Keys are found by trial: a direction's records use its handshake key, then its
//! application key (both from the key log, by the ClientHello's random and the
//! ServerHello's suite), each with its own record sequence from 0. A record neither key
//! opens ends the decoding of that direction: it and what follows are undecoded.

use super::keys::{KeyLog, PacketKey, Suite, TAG};
use super::layers::{Layer, Runs};

/// One direction of a connection, decoded: the stream's runs (application data as
/// inner pieces) and the application data itself.
#[derive(Debug, Default)]
pub struct Decoded {
    pub runs: Runs<()>,
    pub app: Vec<u8>,
}

/// What the hellos say: the client's random and the server's chosen suite.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hello {
    pub random: Option<[u8; 32]>,
    pub suite: Option<u16>,
}

const CCS: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPDATA: u8 = 23;

/// The records of `stream`: (offset, type, body length); stops at a partial record.
fn records(stream: &[u8]) -> impl Iterator<Item = (usize, u8, usize)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let h = stream.get(at..at + 5)?;
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if at + 5 + len > stream.len() {
            return None;
        }
        let r = (at, h[0], len);
        at += 5 + len;
        Some(r)
    })
}

/// Reads the ClientHello's random from the client's stream and the ServerHello's suite
/// from the server's (both in plaintext handshake records).
pub fn hello(up: &[u8], down: &[u8]) -> Hello {
    let mut h = Hello::default();
    if let Some((at, HANDSHAKE, len)) = records(up).next() {
        h.random = client_random(&up[at + 5..at + 5 + len]);
    }
    for (at, t, len) in records(down) {
        match t {
            HANDSHAKE => {
                if let Some(s) = server_suite(&down[at + 5..at + 5 + len]) {
                    h.suite = Some(s);
                }
            }
            APPDATA => break,
            _ => {}
        }
    }
    h
}

/// The random of a ClientHello handshake message (type 1).
pub fn client_random(msg: &[u8]) -> Option<[u8; 32]> {
    // type(1) length(3) legacy_version(2) random(32)
    (msg.first() == Some(&1))
        .then(|| msg.get(6..38)?.try_into().ok())
        .flatten()
}

/// The cipher suite of a ServerHello handshake message (type 2).
pub fn server_suite(msg: &[u8]) -> Option<u16> {
    if msg.first() != Some(&2) {
        return None;
    }
    // type(1) length(3) legacy_version(2) random(32) session_id(1 + n) cipher_suite(2)
    let sid = usize::from(*msg.get(38)?);
    let s = msg.get(39 + sid..41 + sid)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// The key log's handshake and application secrets of one side ("CLIENT" or "SERVER").
fn keys(log: &KeyLog, h: Hello, side: &str) -> Vec<PacketKey> {
    let (Some(random), Some(suite)) = (h.random, h.suite.and_then(Suite::by_id)) else {
        return Vec::new();
    };
    [
        format!("{side}_HANDSHAKE_TRAFFIC_SECRET"),
        format!("{side}_TRAFFIC_SECRET_0"),
    ]
    .iter()
    .filter_map(|label| PacketKey::new(suite, log.secret(label, &random)?, ""))
    .collect()
}

/// A stream with no TLS: all of it is application data.
pub fn plain(stream: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    if !stream.is_empty() {
        d.runs.inner((), stream.len());
    }
    d.app = stream.to_vec();
    d
}

/// Decodes one direction (`client` says which) of a connection whose hellos are `h`.
pub fn decode(stream: &[u8], client: bool, h: Hello, log: &KeyLog) -> (Decoded, Option<String>) {
    let keys = keys(log, h, if client { "CLIENT" } else { "SERVER" });
    let mut d = Decoded::default();
    let (mut key, mut seq) = (0usize, 0u64);
    let mut at = 0;
    let mut problem = None;
    for (off, t, len) in records(stream) {
        at = off;
        let body = &stream[off + 5..off + 5 + len];
        match t {
            CCS | HANDSHAKE | ALERT => {
                d.runs.layer(Layer::Crypto, 5);
                d.runs.layer(
                    if t == ALERT {
                        Layer::Control
                    } else {
                        Layer::Handshake
                    },
                    len,
                );
            }
            APPDATA => {
                let aad = &stream[off..off + 5];
                let mut opened = None;
                for (k, s) in [(key, seq), (key + 1, 0)] {
                    let Some(pk) = keys.get(k) else { continue };
                    let mut buf = body.to_vec();
                    if let Some(n) = pk.open(s, aad, &mut buf) {
                        buf.truncate(n);
                        (key, seq) = (k, s + 1);
                        opened = Some(buf);
                        break;
                    }
                }
                let Some(mut plain) = opened else {
                    problem = Some(if keys.is_empty() {
                        "no TLS keys in the key log".to_owned()
                    } else {
                        format!("a TLS record at offset {off} does not decrypt")
                    });
                    break;
                };
                // TLSInnerPlaintext: content, content type, zero padding.
                let content = plain.iter().rposition(|&b| b != 0).unwrap_or(0);
                let inner = plain.get(content).copied().unwrap_or(0);
                plain.truncate(content);
                d.runs.layer(Layer::Crypto, 5);
                match inner {
                    APPDATA => {
                        d.runs.inner((), plain.len());
                        d.app.extend_from_slice(&plain);
                    }
                    HANDSHAKE => d.runs.layer(Layer::Handshake, plain.len()),
                    ALERT => d.runs.layer(Layer::Control, plain.len()),
                    _ => d.runs.layer(Layer::Undecoded, plain.len()),
                }
                d.runs.layer(Layer::Crypto, len - plain.len());
                debug_assert!(len >= plain.len() + TAG);
            }
            _ => {
                problem = Some(format!("record type {t} at offset {off}"));
                break;
            }
        }
        at = off + 5 + len;
    }
    // A partial record at the end, or what followed a record that would not decode.
    d.runs.layer(Layer::Undecoded, stream.len() - at);
    (d, problem)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello handshake message with `random`.
    pub fn client_hello(random: [u8; 32]) -> Vec<u8> {
        let mut m = vec![1, 0, 0, 40, 3, 3];
        m.extend_from_slice(&random);
        m.extend_from_slice(&[0, 0, 2, 0x13, 0x01]);
        m
    }

    pub fn server_hello(suite: u16) -> Vec<u8> {
        let mut m = vec![2, 0, 0, 40, 3, 3];
        m.extend_from_slice(&[9; 32]);
        m.push(0);
        m.extend_from_slice(&suite.to_be_bytes());
        m.push(0);
        m
    }

    pub fn record(t: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![t, 3, 3];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    /// An encrypted record of `inner` type with `content`.
    pub fn sealed(k: &PacketKey, seq: u64, inner: u8, content: &[u8]) -> Vec<u8> {
        let mut buf = content.to_vec();
        buf.push(inner);
        let len = (buf.len() + TAG) as u16;
        let mut head = vec![APPDATA, 3, 3];
        head.extend_from_slice(&len.to_be_bytes());
        k.seal(seq, &head, &mut buf);
        head.extend_from_slice(&buf);
        head
    }

    pub fn log(random: [u8; 32], secrets: &[(&str, [u8; 32])]) -> KeyLog {
        let text: String = secrets
            .iter()
            .map(|(l, s)| format!("{l} {} {}\n", hex::encode(random), hex::encode(s)))
            .collect();
        KeyLog::parse(&text)
    }

    #[test]
    fn records_are_split_into_overhead_handshake_and_application_data() {
        let random = [5u8; 32];
        let suite = Suite::by_id(0x1301).unwrap();
        let log = log(
            random,
            &[
                ("SERVER_HANDSHAKE_TRAFFIC_SECRET", [1; 32]),
                ("SERVER_TRAFFIC_SECRET_0", [2; 32]),
            ],
        );
        let hs = PacketKey::new(suite, &[1; 32], "").unwrap();
        let app = PacketKey::new(suite, &[2; 32], "").unwrap();
        let up = record(HANDSHAKE, &client_hello(random));
        let mut down = record(HANDSHAKE, &server_hello(0x1301));
        down.extend(record(CCS, &[1]));
        down.extend(sealed(&hs, 0, HANDSHAKE, &[0; 100]));
        down.extend(sealed(&hs, 1, HANDSHAKE, &[0; 50]));
        down.extend(sealed(&app, 0, APPDATA, b"HTTP/1.1 200 OK\r\n\r\n"));
        down.extend(sealed(&app, 1, APPDATA, b"data: hi\n\n"));
        down.extend(&[APPDATA, 3, 3, 0]); // a partial record
        let h = hello(&up, &down);
        assert_eq!((h.random, h.suite), (Some(random), Some(0x1301)));
        let (d, problem) = decode(&down, false, h, &log);
        assert_eq!(problem, None);
        assert_eq!(d.app, b"HTTP/1.1 200 OK\r\n\r\ndata: hi\n\n");
        let s = d.runs.sums();
        assert_eq!(s.undecoded, 4);
        assert_eq!(s.handshake, 42 + 1 + 150);
        // Six whole records of 5 header bytes; four sealed ones add type and tag.
        assert_eq!(s.crypto, 6 * 5 + 4 * (1 + 16));
        assert_eq!(d.runs.len() as usize, down.len());
        assert_eq!(
            d.runs.len() - s.total(),
            d.app.len() as u64,
            "what is not a layer is application data"
        );
    }

    #[test]
    fn without_keys_encrypted_records_are_undecoded_and_said_so() {
        let up = record(HANDSHAKE, &client_hello([5; 32]));
        let mut down = record(HANDSHAKE, &server_hello(0x1302));
        down.extend(record(APPDATA, &[0; 40]));
        let h = hello(&up, &down);
        let (d, problem) = decode(&down, false, h, &KeyLog::default());
        assert_eq!(problem.as_deref(), Some("no TLS keys in the key log"));
        assert_eq!(d.runs.sums().undecoded, 45);
        assert_eq!(d.runs.len() as usize, down.len());
    }
}
