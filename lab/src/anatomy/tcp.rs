//! One TCP connection: each direction reassembled by sequence number, its TLS records
//! decoded (unless it is plain HTTP) ([`super::tls`]) and their plaintext given to HTTP ([`super::http`]); then
//! every segment's payload gets the layers of the stream bytes it carried, and bytes it
//! carried again are retransmitted. Pure.

use super::http::{self, Wire};
use super::keys::KeyLog;
use super::layers::{Layer, LayerMap, Layers, RangeSet};
use super::{Class, Out, tls};
use std::collections::HashMap;

/// One captured segment of the connection.
pub struct Segment<'a> {
    pub up: bool,
    pub seq: u32,
    pub syn: bool,
    pub fin_or_rst: bool,
    pub payload: &'a [u8],
}

/// What a segment brought: its new byte ranges, the bytes it sent again, and the bytes
/// past what lab keeps.
type Brought = (Vec<(u64, u64)>, u64, u64);

/// The most of one direction lab keeps for decoding.
const MAX_STREAM: u64 = 1 << 30;

#[derive(Default)]
struct Direction {
    /// The sequence number of the first data byte.
    base: Option<u32>,
    seen: RangeSet,
    data: Vec<u8>,
}

/// Decodes one connection. Returns, per segment, its layers above the TCP header and
/// its class; and notes on what could not be decoded.
pub fn flow(segs: &[Segment], wire: Wire, log: &KeyLog) -> (Vec<Out>, Vec<String>) {
    let mut dirs = [Direction::default(), Direction::default()];
    let mut notes = Vec::new();
    // The first data byte follows the SYN's sequence number.
    for s in segs {
        let d = &mut dirs[usize::from(!s.up)];
        if s.syn && d.base.is_none() {
            d.base = Some(s.seq.wrapping_add(1));
        }
    }
    for (i, d) in dirs.iter_mut().enumerate() {
        if d.base.is_none() {
            d.base = segs
                .iter()
                .find(|s| s.up == (i == 0) && !s.payload.is_empty())
                .map(|s| s.seq);
            if d.base.is_some() {
                notes.push("a connection began before the capture".to_owned());
            }
        }
    }
    // First pass: what each segment brought that was new, what it brought again, and
    // what lab does not keep (past MAX_STREAM).
    let mut fresh: Vec<Brought> = Vec::with_capacity(segs.len());
    for s in segs {
        let d = &mut dirs[usize::from(!s.up)];
        let len = s.payload.len() as u64;
        let seq = if s.syn { s.seq.wrapping_add(1) } else { s.seq };
        let rel = u64::from(seq.wrapping_sub(d.base.unwrap_or(seq)));
        if len == 0 {
            fresh.push((Vec::new(), 0, 0));
            continue;
        }
        if rel > 1 << 31 {
            // Data from before the first byte: sent again.
            fresh.push((Vec::new(), len, 0));
            continue;
        }
        if rel + len > MAX_STREAM {
            fresh.push((Vec::new(), 0, len));
            continue;
        }
        let new = d.seen.insert(rel, rel + len);
        if d.data.len() < (rel + len) as usize {
            d.data.resize((rel + len) as usize, 0);
        }
        let mut got = 0;
        for &(a, b) in &new {
            d.data[a as usize..b as usize]
                .copy_from_slice(&s.payload[(a - rel) as usize..(b - rel) as usize]);
            got += b - a;
        }
        fresh.push((new, len - got, 0));
    }
    let up = &dirs[0].data[..dirs[0].seen.prefix() as usize];
    let down = &dirs[1].data[..dirs[1].seen.prefix() as usize];
    let (du, dd) = if wire.app.tls() {
        let hello = tls::hello(up, down);
        let (du, pu) = tls::decode(up, true, hello, log);
        let (dd, pd) = tls::decode(down, false, hello, log);
        notes.extend(pu.into_iter().chain(pd));
        (du, dd)
    } else {
        (tls::plain(up), tls::plain(down))
    };
    let (au, ad) = http::tcp(wire, &du.app, &dd.app);
    let maps: [LayerMap; 2] = [
        du.runs.resolve(HashMap::from([((), au)])).map(),
        dd.runs.resolve(HashMap::from([((), ad)])).map(),
    ];
    // Second pass: each segment's new bytes by layer.
    let outs = segs
        .iter()
        .zip(fresh)
        .map(|(s, (new, dup, past))| {
            let mut layers = Layers::default();
            for (a, b) in new {
                maps[usize::from(!s.up)].count(a, b, &mut layers);
            }
            layers.add(Layer::Retransmitted, dup);
            layers.add(Layer::Undecoded, past);
            Out {
                layers,
                class: if !s.payload.is_empty() {
                    Class::Data
                } else if s.syn || s.fin_or_rst {
                    Class::Other
                } else {
                    Class::Ack
                },
                retransmitted: dup > 0,
                ack_frames: 0,
                ack_ecn_frames: 0,
                short: Vec::new(),
            }
        })
        .collect();
    (outs, notes)
}
