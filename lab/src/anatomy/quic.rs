//! QUIC v1 (RFC 9000, 9001) over one UDP flow: packet headers, header protection,
//! decryption with Initial keys and the key log's secrets, frames, and the
//! reassembled streams handed to HTTP/3 and WebTransport ([`super::http`]). Pure.
//!
//! Two passes: the first decrypts every packet in capture order and notes which bytes
//! of which stream each STREAM frame carried (new, or seen before); the second, once
//! the streams are whole, gives each frame's stream bytes their layers.

use super::keys::{KeyLog, QuicKeys, Suite, TAG, initial_keys};
use super::layers::{Layer, Layers, RangeSet};
use super::tls::{client_random, server_suite};
use super::{Class, Out};
use lab_codec::varint::varint;
use std::collections::HashMap;

/// Recovers a full packet number from its `bits` low bits (RFC 9000 A.3).
pub fn decode_pn(largest: Option<u64>, truncated: u64, bits: u32) -> u64 {
    let expected = largest.map_or(0, |l| l + 1);
    let win = 1u64 << bits;
    let (hwin, mask) = (win / 2, win - 1);
    let candidate = (expected & !mask) | truncated;
    if candidate + hwin <= expected && candidate < (1 << 62) - win {
        candidate + win
    } else if candidate > expected + hwin && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Space {
    Initial = 0,
    Handshake = 1,
    Data = 2,
}

/// A reassembled byte stream: what has been seen, and the bytes.
#[derive(Debug, Default)]
struct Stream {
    seen: RangeSet,
    data: Vec<u8>,
}

/// The most of one stream lab keeps for decoding.
const MAX_STREAM: u64 = 1 << 30;

impl Stream {
    /// Adds `data` at `off`: returns its new ranges and how many bytes were seen before;
    /// `None` past what lab keeps of a stream.
    fn add(&mut self, off: u64, data: &[u8]) -> Option<(Vec<(u64, u64)>, u64)> {
        let end = off + data.len() as u64;
        if end > MAX_STREAM {
            return None;
        }
        let new = self.seen.insert(off, end);
        if self.data.len() < end as usize {
            self.data.resize(end as usize, 0);
        }
        let mut fresh = 0;
        for &(a, b) in &new {
            self.data[a as usize..b as usize]
                .copy_from_slice(&data[(a - off) as usize..(b - off) as usize]);
            fresh += b - a;
        }
        Some((new, data.len() as u64 - fresh))
    }

    fn whole(&self) -> &[u8] {
        &self.data[..self.seen.prefix() as usize]
    }
}

/// The new byte ranges of one stream that a STREAM frame carried: (up, stream id,
/// ranges).
type StreamBytes = (bool, u64, Vec<(u64, u64)>);

/// What one datagram's bytes are, before streams are known.
#[derive(Debug, Default)]
struct Plan {
    layers: Layers,
    /// (up, stream id, new ranges) of STREAM frame data.
    streams: Vec<StreamBytes>,
    data: bool,
    acks: u32,
    /// Of the ACK frames, those with ECN counts (ACK_ECN).
    acks_ecn: u32,
    only_acks: bool,
    retransmitted: bool,
    /// Short-header packets: (DCID length, header and tag bytes).
    short: Vec<(u8, u16)>,
}

/// One direction's 1-RTT keys: the current generation, its secret for the next, and
/// the key phase bit it goes with.
struct AppKeys {
    suite: Suite,
    /// The first generation's secret: header protection never changes.
    first: Vec<u8>,
    secret: Vec<u8>,
    keys: QuicKeys,
    phase: bool,
}

/// Per direction (0 up, 1 down) state of a connection.
#[derive(Default)]
struct Conn {
    initial: Option<[QuicKeys; 2]>,
    handshake: [Option<QuicKeys>; 2],
    app: [Option<AppKeys>; 2],
    early: Vec<QuicKeys>,
    /// DCID length of short headers going each way.
    cid_len: [Option<usize>; 2],
    largest: [[Option<u64>; 3]; 2],
    crypto: [[Stream; 3]; 2],
    streams: HashMap<(bool, u64), Stream>,
    notes: Vec<String>,
    /// What DATAGRAM frames carry: WebTransport's session prefix first (HTTP/3), and
    /// lab's datagram tokens.
    h3_datagrams: bool,
    datagram_tokens: bool,
}

fn side(up: bool) -> usize {
    usize::from(!up)
}

impl Conn {
    fn hellos(&self) -> (Option<[u8; 32]>, Option<Suite>) {
        let random = client_random(self.crypto[0][0].whole());
        let suite = server_suite(self.crypto[1][0].whole()).and_then(Suite::by_id);
        (random, suite)
    }

    fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    /// The key log's secret `label` for this connection.
    fn secret<'k>(&self, log: &'k KeyLog, label: &str) -> Option<(Suite, &'k [u8])> {
        let (random, suite) = self.hellos();
        Some((suite?, log.secret(label, &random?)?))
    }

    fn ensure_keys(&mut self, log: &KeyLog, up: bool, space: Space) {
        let i = side(up);
        let who = if up { "CLIENT" } else { "SERVER" };
        match space {
            Space::Handshake if self.handshake[i].is_none() => {
                self.handshake[i] = self
                    .secret(log, &format!("{who}_HANDSHAKE_TRAFFIC_SECRET"))
                    .and_then(|(s, k)| QuicKeys::new(s, k));
            }
            Space::Data if self.app[i].is_none() => {
                self.app[i] = self
                    .secret(log, &format!("{who}_TRAFFIC_SECRET_0"))
                    .and_then(|(suite, k)| {
                        Some(AppKeys {
                            suite,
                            first: k.to_vec(),
                            secret: k.to_vec(),
                            keys: QuicKeys::new(suite, k)?,
                            phase: false,
                        })
                    });
            }
            _ => {}
        }
    }
}

/// Opens one packet (`pkt` is the packet alone; its packet number starts at `pn_at`):
/// header protection off, packet number recovered, payload decrypted. Returns the
/// header's length and the plaintext.
fn open(
    pkt: &[u8],
    pn_at: usize,
    long: bool,
    keys: &QuicKeys,
    largest: Option<u64>,
) -> Option<(usize, u64, Vec<u8>, bool)> {
    let sample = pkt.get(pn_at + 4..pn_at + 20)?;
    let mask = keys.hp.mask(sample)?;
    let mut p = pkt.to_vec();
    p[0] ^= mask[0] & if long { 0x0f } else { 0x1f };
    let pn_len = usize::from(p[0] & 3) + 1;
    let mut truncated = 0u64;
    for i in 0..pn_len {
        p[pn_at + i] ^= mask[1 + i];
        truncated = (truncated << 8) | u64::from(p[pn_at + i]);
    }
    let pn = decode_pn(largest, truncated, 8 * pn_len as u32);
    let head = pn_at + pn_len;
    let phase = p[0] & 0x04 != 0;
    let (aad, body) = p.split_at_mut(head);
    let n = keys.packet.open(pn, aad, body)?;
    Some((head, pn, body[..n].to_vec(), phase))
}

/// Parses the frames of a packet's plaintext into `plan`.
fn frames(conn: &mut Conn, up: bool, space: Space, pt: &[u8], plan: &mut Plan) {
    let mut i = 0;
    while i < pt.len() {
        let start = i;
        let rest = &pt[i..];
        let Some((ty, tl)) = varint(rest) else { break };
        match frame(conn, up, space, rest, (ty, tl), plan) {
            Some((n, l)) if start + n <= pt.len() => {
                if ty != 0x00 && !matches!(ty, 0x02 | 0x03) {
                    plan.only_acks = false;
                }
                // Layer::Other marks frames whose bytes were already added above.
                if l != Layer::Other {
                    plan.layers.add(l, n as u64);
                }
                i = start + n;
            }
            _ => {
                conn.note(format!(
                    "a QUIC frame of type 0x{ty:x} could not be decoded"
                ));
                plan.only_acks = false;
                plan.layers.add(Layer::Undecoded, (pt.len() - start) as u64);
                return;
            }
        }
    }
}

/// Reads `n` varints of `rest` from `from`, returning them and where they end.
fn varints(rest: &[u8], n: usize, from: usize) -> Option<(Vec<u64>, usize)> {
    let mut at = from;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (v, l) = varint(rest.get(at..)?)?;
        out.push(v);
        at += l;
    }
    Some((out, at))
}

/// One frame at the start of `rest`, of type `ty` (`tl` bytes): its length and the layer
/// its bytes belong to ([`Layer::Other`] when they were added already); None if it
/// does not decode.
fn frame(
    conn: &mut Conn,
    up: bool,
    space: Space,
    rest: &[u8],
    (ty, tl): (u64, usize),
    plan: &mut Plan,
) -> Option<(usize, Layer)> {
    let vs = |n: usize, from: usize| varints(rest, n, from);
    Some(match ty {
        0x00 => {
            let zeros = rest.iter().take_while(|&&b| b == 0).count();
            let padding = if space == Space::Data {
                Layer::Control
            } else {
                Layer::Handshake
            };
            (zeros, padding)
        }
        0x01 | 0x1e | 0x1f => (tl, Layer::Control),
        0x02 | 0x03 => {
            let (v, mut at) = vs(4, tl)?;
            for _ in 0..v[2] {
                at = vs(2, at)?.1;
            }
            if ty == 0x03 {
                at = vs(3, at)?.1;
            }
            plan.acks += 1;
            plan.acks_ecn += u32::from(ty == 0x03);
            (at, Layer::Acks)
        }
        0x04 => (vs(3, tl)?.1, Layer::Control),
        0x05 => (vs(2, tl)?.1, Layer::Control),
        0x06 => crypto_frame(conn, up, space, rest, tl, plan)?,
        0x07 => {
            let (v, at) = vs(1, tl)?;
            (at + usize::try_from(v[0]).ok()?, Layer::Handshake)
        }
        0x08..=0x0f => stream_frame(conn, up, rest, (ty, tl), plan)?,
        0x10 | 0x12 | 0x13 | 0x14 | 0x16 | 0x17 | 0x19 => (vs(1, tl)?.1, Layer::Control),
        0x11 | 0x15 => (vs(2, tl)?.1, Layer::Control),
        0x18 => {
            let at = vs(2, tl)?.1;
            let cid = usize::from(*rest.get(at)?);
            (at + 1 + cid + 16, Layer::Control)
        }
        0x1a | 0x1b => (tl + 8, Layer::Control),
        0x1c | 0x1d => {
            let (v, at) = vs(if ty == 0x1c { 3 } else { 2 }, tl)?;
            let reason = usize::try_from(*v.last()?).ok()?;
            (at + reason, Layer::Control)
        }
        0x30 | 0x31 => datagram_frame(conn, rest, (ty, tl), plan)?,
        0xaf => (vs(4, tl)?.1, Layer::Control),
        _ => return None,
    })
}

/// A CRYPTO frame: handshake bytes, and those sent before counted as retransmitted.
fn crypto_frame(
    conn: &mut Conn,
    up: bool,
    space: Space,
    rest: &[u8],
    tl: usize,
    plan: &mut Plan,
) -> Option<(usize, Layer)> {
    let (v, at) = varints(rest, 2, tl)?;
    let len = usize::try_from(v[1]).ok()?;
    let data = rest.get(at..at + len)?;
    // CRYPTO data past what lab keeps is still handshake.
    let dup = conn.crypto[side(up)][space as usize]
        .add(v[0], data)
        .map_or(0, |(_, dup)| dup);
    plan.data = true;
    if dup > 0 {
        plan.retransmitted = true;
        plan.layers.add(Layer::Retransmitted, dup);
    }
    plan.layers.add(Layer::Handshake, (at + len) as u64 - dup);
    Some((at + len, Layer::Other))
}

/// A STREAM frame: its header is control; its data goes to the stream, to be decoded
/// above QUIC, and what was sent before is counted as retransmitted.
fn stream_frame(
    conn: &mut Conn,
    up: bool,
    rest: &[u8],
    (ty, tl): (u64, usize),
    plan: &mut Plan,
) -> Option<(usize, Layer)> {
    let (sid, mut at) = varints(rest, 1, tl)?;
    let mut off = 0;
    if ty & 0x04 != 0 {
        let (v, a) = varints(rest, 1, at)?;
        off = v[0];
        at = a;
    }
    let len = if ty & 0x02 != 0 {
        let (v, a) = varints(rest, 1, at)?;
        at = a;
        usize::try_from(v[0]).ok()?
    } else {
        rest.len() - at
    };
    let data = rest.get(at..at + len)?;
    let stream = conn.streams.entry((up, sid[0])).or_default();
    plan.data = true;
    plan.layers.add(Layer::Control, at as u64);
    let Some((new, dup)) = stream.add(off, data) else {
        plan.layers.add(Layer::Undecoded, len as u64);
        return Some((at + len, Layer::Other));
    };
    if dup > 0 {
        plan.retransmitted = true;
        plan.layers.add(Layer::Retransmitted, dup);
    }
    plan.streams.push((up, sid[0], new));
    Some((at + len, Layer::Other))
}

/// A DATAGRAM frame: HTTP/3's quarter stream id of the session (WebTransport), then
/// lab's stream id and sequence number, then the token.
fn datagram_frame(
    conn: &Conn,
    rest: &[u8],
    (ty, tl): (u64, usize),
    plan: &mut Plan,
) -> Option<(usize, Layer)> {
    let (at, len) = if ty == 0x31 {
        let (v, a) = varints(rest, 1, tl)?;
        (a, usize::try_from(v[0]).ok()?)
    } else {
        (tl, rest.len() - tl)
    };
    let data = rest.get(at..at + len)?;
    plan.data = true;
    plan.layers.add(Layer::Control, at as u64);
    let h3 = if conn.h3_datagrams {
        varint(data).map_or(0, |(_, l)| l)
    } else {
        0
    };
    plan.layers.add(Layer::Http, h3 as u64);
    match lab_codec::dgram::decode(&data[h3..]) {
        Ok(t) if conn.datagram_tokens => {
            let token = t.token.len();
            plan.layers.add(Layer::Message, (len - h3 - token) as u64);
            plan.layers.add(Layer::Payload, token as u64);
        }
        _ => plan.layers.add(Layer::Message, (len - h3) as u64),
    }
    Some((at + len, Layer::Other))
}

/// One UDP payload of a flow.
pub struct Datagram<'a> {
    pub up: bool,
    pub payload: &'a [u8],
}

/// The connection IDs of a long-header packet at the start of `p`, and whether it is an
/// Initial: (Initial, DCID, SCID).
fn long_ids(p: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    if p.first()? & 0x80 == 0 {
        return None;
    }
    let dl = usize::from(*p.get(5)?);
    let dcid = p.get(6..6 + dl)?;
    let sl = usize::from(*p.get(6 + dl)?);
    let scid = p.get(7 + dl..7 + dl + sl)?;
    Some(((p[0] >> 4) & 3 == 0, dcid, scid))
}

/// Decodes one UDP flow of QUIC datagrams (one client port), connection by connection:
/// per connection, the indices of its datagrams, what each holds above the UDP header,
/// and the notes on what could not be decoded.
///
/// One client endpoint (quinn's, say) sets up every connection from the same port, so
/// datagrams are routed to connections: a long header by its connection IDs (a client
/// Initial to an ID no connection has used starts a new connection); a short header by
/// the ID it carries, and one with an ID never seen in a long header (issued in an
/// encrypted NEW_CONNECTION_ID frame) to the latest connection whose keys open it.
pub fn flows(
    dgrams: &[Datagram],
    wire: super::http::Wire,
    log: &KeyLog,
) -> Vec<(Vec<usize>, Vec<Out>, Vec<String>)> {
    struct One {
        conn: Conn,
        ids: Vec<Vec<u8>>,
        idx: Vec<usize>,
        plans: Vec<Plan>,
        /// Short-header packets that came before their keys could be known (the
        /// handshake packets were lost and came again later): decoded at the end.
        later: Vec<usize>,
    }
    fn learn(ids: &mut Vec<Vec<u8>>, id: &[u8]) {
        if !id.is_empty() && !ids.iter().any(|x| x == id) {
            ids.push(id.to_vec());
        }
    }
    let new = || One {
        conn: Conn {
            h3_datagrams: wire.app == super::http::App::WebTransport,
            datagram_tokens: wire.body == super::body::Body::Datagram,
            ..Conn::default()
        },
        ids: Vec::new(),
        idx: Vec::new(),
        plans: Vec::new(),
        later: Vec::new(),
    };
    let mut conns: Vec<One> = Vec::new();
    for (k, d) in dgrams.iter().enumerate() {
        let at = match long_ids(d.payload) {
            Some((initial, dcid, scid)) => {
                let mine = conns
                    .iter()
                    .rposition(|c| c.ids.iter().any(|x| x == dcid || x == scid));
                let at = match mine {
                    Some(i) => i,
                    None if d.up && initial || conns.is_empty() => {
                        conns.push(new());
                        conns.len() - 1
                    }
                    None => conns.len() - 1,
                };
                learn(&mut conns[at].ids, dcid);
                learn(&mut conns[at].ids, scid);
                at
            }
            None => {
                let rest = d.payload.get(1..).unwrap_or_default();
                let known = conns
                    .iter()
                    .rposition(|c| c.ids.iter().any(|x| rest.starts_with(x)));
                match known {
                    Some(i) => i,
                    None if conns.is_empty() => {
                        conns.push(new());
                        0
                    }
                    None => {
                        let i = side(d.up);
                        let opens = conns
                            .iter_mut()
                            .rposition(|c| open_short(&mut c.conn, d.up, d.payload, log).is_some());
                        let at = opens.unwrap_or(conns.len() - 1);
                        let c = &mut conns[at];
                        if let Some(id) = c.conn.cid_len[i].and_then(|n| rest.get(..n)) {
                            let id = id.to_vec();
                            learn(&mut c.ids, &id);
                        }
                        at
                    }
                }
            }
        };
        let c = &mut conns[at];
        let short = d.payload.first().is_some_and(|b| b & 0x80 == 0);
        if short && c.conn.cid_len[side(d.up)].is_some() && {
            c.conn.ensure_keys(log, d.up, Space::Data);
            c.conn.app[side(d.up)].is_none()
        } {
            c.later.push(c.plans.len());
            c.plans.push(Plan::default());
        } else {
            c.plans.push(datagram(&mut c.conn, d, log));
        }
        c.idx.push(k);
    }
    for c in &mut conns {
        for p in std::mem::take(&mut c.later) {
            c.plans[p] = datagram(&mut c.conn, &dgrams[c.idx[p]], log);
        }
    }
    conns
        .into_iter()
        .map(|c| {
            let (outs, notes) = finish(c.conn, c.plans, wire);
            (c.idx, outs, notes)
        })
        .collect()
}

/// The second pass over one connection's datagrams: with its streams whole, the layers
/// of their bytes.
fn finish(conn: Conn, plans: Vec<Plan>, wire: super::http::Wire) -> (Vec<Out>, Vec<String>) {
    let body = wire.body;
    let raw = wire.app == super::http::App::Quic;
    // Second pass: the streams are whole; give stream bytes their layers.
    let maps: HashMap<(bool, u64), super::layers::LayerMap> = conn
        .streams
        .iter()
        .map(|(&(up, sid), s)| {
            // Client-initiated streams have even IDs; the initiator's first bytes say
            // whether a bidirectional stream is WebTransport's.
            let initiator = (sid & 1 == 0) == up;
            let opener = if initiator {
                Some(s)
            } else {
                conn.streams.get(&(!up, sid))
            };
            let runs = if raw {
                super::http::raw_quic_stream(body, up, s.whole())
            } else {
                let wt = opener.is_some_and(|o| super::http::is_webtransport(o.whole()));
                super::http::quic_stream(body, sid, up, initiator, wt, s.whole())
            };
            ((up, sid), runs.map())
        })
        .collect();
    let outs = plans
        .into_iter()
        .map(|p| {
            let mut layers = p.layers;
            for (up, sid, ranges) in &p.streams {
                let map = &maps[&(*up, *sid)];
                for &(a, b) in ranges {
                    map.count(a, b, &mut layers);
                }
            }
            let class = if p.data {
                Class::Data
            } else if p.acks > 0 && p.only_acks {
                Class::Ack
            } else {
                Class::Other
            };
            Out {
                layers,
                class,
                retransmitted: p.retransmitted,
                ack_frames: p.acks,
                ack_ecn_frames: p.acks_ecn,
                short: p.short,
            }
        })
        .collect();
    (outs, conn.notes)
}

fn datagram(conn: &mut Conn, d: &Datagram, log: &KeyLog) -> Plan {
    let mut plan = Plan {
        only_acks: true,
        ..Plan::default()
    };
    let p = d.payload;
    let i = side(d.up);
    let mut at = 0;
    while at < p.len() {
        let b0 = p[at];
        if b0 & 0x80 == 0 {
            // A short header: the rest of the datagram.
            let Some(cid) = conn.cid_len[i] else {
                conn.note("a short-header packet came before any long header".into());
                plan.layers.add(Layer::Undecoded, (p.len() - at) as u64);
                break;
            };
            match open_short(conn, d.up, &p[at..], log) {
                Some((head, pn, pt, updated)) => {
                    if updated && let Some(k) = conn.app[i].as_mut() {
                        let next = super::keys::next_secret(k.suite, &k.secret);
                        if let Some(keys) = QuicKeys::from_parts(k.suite, &next, &k.first) {
                            *k = AppKeys {
                                suite: k.suite,
                                first: k.first.clone(),
                                secret: next,
                                keys,
                                phase: !k.phase,
                            };
                        }
                    }
                    conn.largest[i][2] = Some(conn.largest[i][2].map_or(pn, |l| l.max(pn)));
                    plan.layers.add(Layer::Crypto, (head + TAG) as u64);
                    plan.short.push((cid as u8, (head + TAG) as u16));
                    frames(conn, d.up, Space::Data, &pt, &mut plan);
                }
                None => {
                    conn.note("a 1-RTT packet did not decrypt (no key in the key log?)".into());
                    plan.only_acks = false;
                    plan.layers.add(Layer::Undecoded, (p.len() - at) as u64);
                }
            }
            break;
        }
        // A long header.
        let Some(end) = long_packet(conn, d.up, &p[at..], log, &mut plan) else {
            plan.only_acks = false;
            plan.layers.add(Layer::Undecoded, (p.len() - at) as u64);
            break;
        };
        at += end;
    }
    plan
}

/// Opens the short-header packet `pkt` sent up (or down) with the connection's 1-RTT
/// keys, or with the next generation's after a key update: (header length, packet
/// number, plaintext, whether the keys were updated).
fn open_short(
    conn: &mut Conn,
    up: bool,
    pkt: &[u8],
    log: &KeyLog,
) -> Option<(usize, u64, Vec<u8>, bool)> {
    let i = side(up);
    let cid = conn.cid_len[i]?;
    conn.ensure_keys(log, up, Space::Data);
    let largest = conn.largest[i][2];
    let k = conn.app[i].as_ref()?;
    if let Some((head, pn, pt, phase)) = open(pkt, 1 + cid, false, &k.keys, largest)
        && phase == k.phase
    {
        return Some((head, pn, pt, false));
    }
    let next = super::keys::next_secret(k.suite, &k.secret);
    let keys = QuicKeys::from_parts(k.suite, &next, &k.first)?;
    let (head, pn, pt, phase) = open(pkt, 1 + cid, false, &keys, largest)?;
    (phase != k.phase).then_some((head, pn, pt, true))
}

/// Decodes one long-header packet at the start of `p`; returns its length.
fn long_packet(
    conn: &mut Conn,
    up: bool,
    p: &[u8],
    log: &KeyLog,
    plan: &mut Plan,
) -> Option<usize> {
    let i = side(up);
    let version = u32::from_be_bytes(p.get(1..5)?.try_into().ok()?);
    if version == 0 {
        conn.note("a version negotiation packet".into());
        return None;
    }
    let dl = usize::from(*p.get(5)?);
    let dcid = p.get(6..6 + dl)?;
    let sl = usize::from(*p.get(6 + dl)?);
    p.get(7 + dl..7 + dl + sl)?;
    let mut at = 7 + dl + sl;
    let kind = (p[0] >> 4) & 3;
    if kind == 3 {
        // Retry: no packet number, no payload protection; address validation.
        plan.layers.add(Layer::Handshake, p.len() as u64);
        plan.only_acks = false;
        return Some(p.len());
    }
    // The other side's short headers carry this packet's source CID.
    conn.cid_len[side(!up)] = Some(sl);
    if kind == 0 {
        let (tlen, n) = varint(&p[at..])?;
        at += n + usize::try_from(tlen).ok()?;
    }
    let (len, n) = varint(p.get(at..)?)?;
    at += n;
    let end = at + usize::try_from(len).ok()?;
    let pkt = p.get(..end)?;
    if up && kind == 0 && conn.initial.is_none() {
        let (c, s) = initial_keys(dcid);
        conn.initial = Some([c, s]);
    }
    let space = if kind == 2 {
        Space::Handshake
    } else if kind == 1 {
        Space::Data
    } else {
        Space::Initial
    };
    conn.ensure_keys(log, up, space);
    if kind == 1 && conn.early.is_empty() {
        // 0-RTT keys: the early secret with each suite (the ServerHello comes later).
        let random = client_random(conn.crypto[0][0].whole());
        if let Some(secret) = random.and_then(|r| log.secret("CLIENT_EARLY_TRAFFIC_SECRET", &r)) {
            conn.early = [0x1301, 0x1302, 0x1303]
                .into_iter()
                .filter_map(|id| QuicKeys::new(Suite::by_id(id)?, secret))
                .collect();
        }
    }
    let largest = conn.largest[i][space as usize];
    let candidates: Vec<&QuicKeys> = match kind {
        0 => conn.initial.iter().map(|k| &k[i]).collect(),
        2 => conn.handshake[i].iter().collect(),
        _ => conn.early.iter().collect(),
    };
    let opened = candidates
        .into_iter()
        .find_map(|k| open(pkt, at, true, k, largest));
    let Some((head, pn, pt, _)) = opened else {
        conn.note(format!(
            "a {} packet did not decrypt",
            ["Initial", "0-RTT", "Handshake", "Retry"][usize::from(kind)]
        ));
        plan.layers.add(Layer::Undecoded, end as u64);
        plan.only_acks = false;
        return Some(end);
    };
    conn.largest[i][space as usize] = Some(largest.map_or(pn, |l| l.max(pn)));
    plan.layers.add(Layer::Crypto, (head + TAG) as u64);
    frames(conn, up, space, &pt, plan);
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_numbers_follow_rfc_9000() {
        // RFC 9000 A.3's example.
        assert_eq!(decode_pn(Some(0xa82f30ea), 0x9b32, 16), 0xa82f9b32);
        assert_eq!(decode_pn(None, 0, 8), 0);
        assert_eq!(decode_pn(Some(255), 1, 8), 257);
    }
}
