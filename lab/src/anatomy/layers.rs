//! The layers a wire byte can belong to, their sums, and a stream's bytes as runs of
//! layers. Pure.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::Hash;

/// What a byte on the wire is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// The Ethernet header (and any link padding after the IP packet).
    Link,
    /// The IPv4 or IPv6 header.
    Ip,
    /// The TCP header with its options, or the UDP header.
    Transport,
    /// TLS record overhead (header, inner content type, AEAD tag), or a QUIC packet's
    /// header, packet number and AEAD tag.
    Crypto,
    /// TLS handshake messages (including session tickets), QUIC CRYPTO frames, and the
    /// padding of QUIC Initial and Handshake packets.
    Handshake,
    /// QUIC ACK frames (a TCP ACK is part of the TCP header).
    Acks,
    /// Other transport control: QUIC frame headers of STREAM and DATAGRAM frames, flow
    /// control, PING, PADDING of 1-RTT packets (MTU probes), connection IDs, closes; TLS
    /// alerts.
    Control,
    /// HTTP: HTTP/1.1 heads and chunk lines, HTTP/2 frame headers and non-DATA frames,
    /// HTTP/3 and WebTransport stream headers and frames, WebSocket frame headers.
    Http,
    /// Message framing around the tokens (SSE fields, JSON envelopes, length prefixes),
    /// request bodies, and error messages.
    Message,
    /// The tokens' own bytes, as the client decodes them.
    Payload,
    /// Bytes above the transport header that this capture had already seen: data sent
    /// again (TCP segments, QUIC STREAM and CRYPTO frames).
    Retransmitted,
    /// Bytes lab could not decode (no key, an unknown frame, a stream cut short).
    Undecoded,
    /// Frames that are not the cell's connections: ARP, ICMP, other ports.
    Other,
}

impl Layer {
    pub const ALL: [Layer; 13] = [
        Layer::Link,
        Layer::Ip,
        Layer::Transport,
        Layer::Crypto,
        Layer::Handshake,
        Layer::Acks,
        Layer::Control,
        Layer::Http,
        Layer::Message,
        Layer::Payload,
        Layer::Retransmitted,
        Layer::Undecoded,
        Layer::Other,
    ];

    /// The column heading.
    pub fn heading(self) -> &'static str {
        match self {
            Layer::Link => "link",
            Layer::Ip => "IP",
            Layer::Transport => "TCP/UDP",
            Layer::Crypto => "TLS/QUIC",
            Layer::Handshake => "handshake",
            Layer::Acks => "ACK frames",
            Layer::Control => "control",
            Layer::Http => "HTTP",
            Layer::Message => "message",
            Layer::Payload => "payload",
            Layer::Retransmitted => "retrans",
            Layer::Undecoded => "undecoded",
            Layer::Other => "other",
        }
    }
}

/// Bytes per layer.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Layers {
    pub link: u64,
    pub ip: u64,
    pub transport: u64,
    pub crypto: u64,
    pub handshake: u64,
    pub acks: u64,
    pub control: u64,
    pub http: u64,
    pub message: u64,
    pub payload: u64,
    pub retransmitted: u64,
    pub undecoded: u64,
    pub other: u64,
}

impl Layers {
    fn slot(&mut self, l: Layer) -> &mut u64 {
        match l {
            Layer::Link => &mut self.link,
            Layer::Ip => &mut self.ip,
            Layer::Transport => &mut self.transport,
            Layer::Crypto => &mut self.crypto,
            Layer::Handshake => &mut self.handshake,
            Layer::Acks => &mut self.acks,
            Layer::Control => &mut self.control,
            Layer::Http => &mut self.http,
            Layer::Message => &mut self.message,
            Layer::Payload => &mut self.payload,
            Layer::Retransmitted => &mut self.retransmitted,
            Layer::Undecoded => &mut self.undecoded,
            Layer::Other => &mut self.other,
        }
    }

    pub fn get(&self, l: Layer) -> u64 {
        let mut c = *self;
        *c.slot(l)
    }

    pub fn add(&mut self, l: Layer, n: u64) {
        *self.slot(l) += n;
    }

    /// Every byte, whatever its layer.
    pub fn total(&self) -> u64 {
        Layer::ALL.iter().map(|&l| self.get(l)).sum()
    }

    pub fn plus(&self, o: &Layers) -> Layers {
        let mut s = *self;
        for l in Layer::ALL {
            s.add(l, o.get(l));
        }
        s
    }
}

/// One piece of a stream: bytes of a layer, or bytes handed to an inner stream (a TLS
/// record's plaintext to HTTP, an HTTP body to its token format) that the inner
/// stream's own runs replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<K> {
    Layer(Layer),
    Inner(K),
}

/// A stream's bytes in order, as runs of pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runs<K> {
    runs: Vec<(Piece<K>, u64)>,
    len: u64,
}

impl<K> Default for Runs<K> {
    fn default() -> Self {
        Runs {
            runs: Vec::new(),
            len: 0,
        }
    }
}

impl<K: Clone + PartialEq> Runs<K> {
    pub fn push(&mut self, p: Piece<K>, n: u64) {
        if n == 0 {
            return;
        }
        self.len += n;
        if let Some((last, m)) = self.runs.last_mut()
            && *last == p
        {
            *m += n;
            return;
        }
        self.runs.push((p, n));
    }

    pub fn layer(&mut self, l: Layer, n: usize) {
        self.push(Piece::Layer(l), n as u64);
    }

    pub fn inner(&mut self, k: K, n: usize) {
        self.push(Piece::Inner(k), n as u64);
    }

    /// Bytes covered so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes per layer (inner pieces not counted).
    pub fn sums(&self) -> Layers {
        let mut s = Layers::default();
        for (p, n) in &self.runs {
            if let Piece::Layer(l) = p {
                s.add(*l, *n);
            }
        }
        s
    }
}

impl<K: Clone + PartialEq + Eq + Hash> Runs<K> {
    /// Replaces every inner piece with the next bytes of that inner stream's runs. An
    /// inner stream that has fewer bytes than were handed to it leaves the rest
    /// undecoded.
    pub fn resolve(&self, inner: HashMap<K, Runs<()>>) -> Runs<()> {
        let mut cursors: HashMap<K, (Runs<()>, usize, u64)> = inner
            .into_iter()
            .map(|(k, r)| (k, (r, 0usize, 0u64)))
            .collect();
        let mut out = Runs::default();
        for (p, n) in &self.runs {
            match p {
                Piece::Layer(l) => out.push(Piece::Layer(*l), *n),
                Piece::Inner(k) => {
                    let mut want = *n;
                    if let Some((r, i, used)) = cursors.get_mut(k) {
                        while want > 0 && *i < r.runs.len() {
                            let (piece, len) = &r.runs[*i];
                            let take = (len - *used).min(want);
                            if let Piece::Layer(l) = piece {
                                out.push(Piece::Layer(*l), take);
                            }
                            want -= take;
                            *used += take;
                            if *used == *len {
                                *i += 1;
                                *used = 0;
                            }
                        }
                    }
                    out.push(Piece::Layer(Layer::Undecoded), want);
                }
            }
        }
        out
    }
}

impl Runs<()> {
    /// The runs as (layer, bytes); an unresolved inner piece counts as undecoded.
    pub fn pieces(&self) -> impl Iterator<Item = (Layer, u64)> + '_ {
        self.runs.iter().map(|(p, n)| match p {
            Piece::Layer(l) => (*l, *n),
            Piece::Inner(()) => (Layer::Undecoded, *n),
        })
    }

    /// A map for looking up the layers of any byte range.
    pub fn map(&self) -> LayerMap {
        let mut ends = Vec::with_capacity(self.runs.len());
        let mut at = 0;
        for (p, n) in &self.runs {
            at += n;
            let l = match p {
                Piece::Layer(l) => *l,
                Piece::Inner(()) => Layer::Undecoded,
            };
            ends.push((at, l));
        }
        LayerMap { ends }
    }
}

/// A stream's layers by offset.
#[derive(Debug, Clone, Default)]
pub struct LayerMap {
    /// (end offset, layer) of consecutive runs.
    ends: Vec<(u64, Layer)>,
}

impl LayerMap {
    /// The bytes the map covers, from offset 0.
    pub fn len(&self) -> u64 {
        self.ends.last().map_or(0, |e| e.0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the layers of bytes `[a, b)` to `to`; bytes past the map are undecoded.
    pub fn count(&self, a: u64, b: u64, to: &mut Layers) {
        let mut at = a;
        let mut i = self.ends.partition_point(|e| e.0 <= a);
        while at < b && i < self.ends.len() {
            let (end, l) = self.ends[i];
            let upto = end.min(b);
            to.add(l, upto - at);
            at = upto;
            i += 1;
        }
        if at < b {
            to.add(Layer::Undecoded, b - at);
        }
    }
}

/// Disjoint byte ranges seen so far of one stream.
#[derive(Debug, Clone, Default)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Adds `[a, b)`; returns the parts of it that were new.
    pub fn insert(&mut self, a: u64, b: u64) -> Vec<(u64, u64)> {
        if a >= b {
            return Vec::new();
        }
        let mut new = Vec::new();
        let mut at = a;
        for &(s, e) in &self.0 {
            if e <= at {
                continue;
            }
            if s >= b {
                break;
            }
            if s > at {
                new.push((at, s));
            }
            at = at.max(e);
            if at >= b {
                break;
            }
        }
        if at < b {
            new.push((at, b));
        }
        // Merge [a, b) in.
        let mut merged = Vec::with_capacity(self.0.len() + 1);
        let (mut ns, mut ne) = (a, b);
        let mut placed = false;
        for &(s, e) in &self.0 {
            if e < ns {
                merged.push((s, e));
            } else if s > ne {
                if !placed {
                    merged.push((ns, ne));
                    placed = true;
                }
                merged.push((s, e));
            } else {
                ns = ns.min(s);
                ne = ne.max(e);
            }
        }
        if !placed {
            merged.push((ns, ne));
        }
        self.0 = merged;
        new
    }

    /// The length of the contiguous prefix from offset 0.
    pub fn prefix(&self) -> u64 {
        match self.0.first() {
            Some(&(0, e)) => e,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_report_what_is_new_and_merge() {
        let mut r = RangeSet::default();
        assert_eq!(r.insert(10, 20), [(10, 20)]);
        assert_eq!(r.prefix(), 0);
        assert_eq!(r.insert(0, 12), [(0, 10)]);
        assert_eq!(r.prefix(), 20);
        assert_eq!(r.insert(15, 18), []);
        assert_eq!(r.insert(30, 40), [(30, 40)]);
        assert_eq!(r.insert(18, 35), [(20, 30)]);
        assert_eq!(r.prefix(), 40);
        assert_eq!(r.insert(5, 5), []);
    }

    #[test]
    fn inner_runs_replace_their_placeholders_in_order() {
        let mut outer: Runs<u8> = Runs::default();
        outer.layer(Layer::Crypto, 5);
        outer.inner(1, 4);
        outer.layer(Layer::Crypto, 17);
        outer.inner(1, 6);
        outer.inner(2, 3);
        let mut a = Runs::default();
        a.layer(Layer::Http, 3);
        a.layer(Layer::Payload, 5);
        // Stream 2 is one byte short: that byte is undecoded.
        let mut b = Runs::default();
        b.layer(Layer::Message, 2);
        let r = outer.resolve(HashMap::from([(1, a), (2, b)]));
        assert_eq!(r.len(), 35);
        let s = r.sums();
        assert_eq!(s.crypto, 22);
        assert_eq!(s.http, 3);
        assert_eq!(s.payload, 5);
        // Stream 1 had 8 bytes for 10 handed to it.
        assert_eq!(s.message, 2);
        assert_eq!(s.undecoded, 3);
        assert_eq!(s.total(), 35);
        let m = r.map();
        let mut got = Layers::default();
        m.count(3, 8, &mut got);
        assert_eq!((got.crypto, got.http), (2, 3));
        m.count(30, 40, &mut got);
        // [30, 32) of stream 1 and [34, 35) of stream 2 had no bytes; [35, 40) is past the end.
        assert_eq!((got.undecoded, got.message), (2 + 1 + 5, 2));
    }
}
