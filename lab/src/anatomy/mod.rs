//! The anatomy of a capture: every frame of a cell classified (data, pure ACK, other)
//! and every byte given a layer, from the Ethernet header to the tokens' own bytes, so
//! that wire bytes per token can be explained. Pure code over the captured frames and
//! the client's key log.
//!
//! - [`layers`]: the layers, their sums, a stream's bytes as runs of layers.
//! - [`tcp`] and [`tls`]: TCP reassembly, TLS 1.3 records and their decryption.
//! - [`quic`]: QUIC packets, header protection, decryption, frames, streams.
//! - [`http`] and [`body`]: HTTP/1.1, HTTP/2, WebSocket, HTTP/3 and WebTransport, and
//!   how each approach's bodies carry tokens.
//! - [`keys`]: the key log and key derivations (QUIC's integers are [`lab_codec::varint`]).
//!
//! Link, IP and transport headers are read with pnet's typed views; only TLS records
//! and QUIC packets need lab's own parsers. The layers of each frame add up to its
//! length exactly, by construction: a byte lab cannot place is `undecoded`, and a test
//! of every approach checks that none is.

pub mod body;
pub mod http;
pub mod keys;
pub mod layers;
pub mod quic;
pub mod tcp;
pub mod tls;

pub use body::Body;
pub use http::{App, Wire};
pub use keys::KeyLog;
pub use layers::{Layer, Layers};

use pnet_packet::ethernet::{EtherTypes, EthernetPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::tcp::{TcpFlags, TcpPacket};
use pnet_packet::udp::UdpPacket;
use serde::{Deserialize, Serialize};

/// One captured frame: sent by the capturing end (`tx`) or received; its true length
/// and its bytes (the capture keeps whole frames).
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub tx: bool,
    pub len: usize,
    pub data: &'a [u8],
    /// The kernel's stamp of it (CLOCK_REALTIME, nanoseconds since the epoch); 0 when
    /// not known.
    pub at_ns: u64,
}

/// What a packet is for.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// It carries data: TCP payload; QUIC STREAM, DATAGRAM or CRYPTO frames.
    Data,
    /// A pure ACK: a TCP segment without payload, SYN, FIN or RST; a QUIC datagram of
    /// nothing but ACK frames (and padding).
    Ack,
    /// Anything else: SYN, FIN, RST; QUIC PING, flow control, MTU probes, closes;
    /// frames that are not the cell's connections.
    #[default]
    Other,
}

/// A frame's bytes above its transport header, with its class (from the flow decoders).
#[derive(Debug, Clone, Default)]
pub struct Out {
    pub layers: Layers,
    pub class: Class,
    pub retransmitted: bool,
    pub ack_frames: u32,
    pub ack_ecn_frames: u32,
    /// QUIC short-header packets: (DCID length, header and tag bytes).
    pub short: Vec<(u8, u16)>,
}

/// Packets by class.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Packets {
    pub data: u64,
    pub ack: u64,
    pub other: u64,
}

impl Packets {
    fn add(&mut self, c: Class) {
        match c {
            Class::Data => self.data += 1,
            Class::Ack => self.ack += 1,
            Class::Other => self.other += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.data + self.ack + self.other
    }
}

/// One direction of a capture, decoded.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Side {
    /// Frames, and their bytes at L2: the sum of `layers`.
    pub frames: u64,
    pub bytes: u64,
    pub packets: Packets,
    pub layers: Layers,
    /// Packets that carried data this capture had seen before, and their bytes of it.
    pub retransmitted_packets: u64,
    /// QUIC ACK frames, piggybacked or alone; of them, those with ECN counts.
    pub ack_frames: u64,
    #[serde(default)]
    pub ack_ecn_frames: u64,
    /// QUIC short-header packets, their header and tag bytes, and the DCID lengths seen.
    pub short_packets: u64,
    pub short_overhead: u64,
    pub dcid_lengths: Vec<u8>,
}

impl Side {
    fn add(&mut self, len: usize, head: Layers, out: &Out) {
        self.frames += 1;
        self.bytes += len as u64;
        self.layers = self.layers.plus(&head).plus(&out.layers);
        self.packets.add(out.class);
        self.retransmitted_packets += u64::from(out.retransmitted);
        self.ack_frames += u64::from(out.ack_frames);
        self.ack_ecn_frames += u64::from(out.ack_ecn_frames);
        for &(cid, overhead) in &out.short {
            self.short_packets += 1;
            self.short_overhead += u64::from(overhead);
            if !self.dcid_lengths.contains(&cid) {
                self.dcid_lengths.push(cid);
                self.dcid_lengths.sort_unstable();
            }
        }
    }
}

/// One direction of one connection, for comparison with the endpoint's statistics.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct FlowSide {
    pub packets: Packets,
    /// TCP payload or UDP payload bytes.
    pub payload_bytes: u64,
    pub ack_frames: u64,
    pub retransmitted_packets: u64,
}

/// One connection of a cell: its transport, the client's port, and both directions.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub transport: String,
    pub client_port: u16,
    pub up: FlowSide,
    pub down: FlowSide,
    /// Its last packets ([`TAIL`] at most), with their stamps: those that came after
    /// the endpoint read its own counters (a close's last segments) are set apart
    /// when the two are compared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<Stamped>,
}

/// How many of a flow's last packets [`Flow::tail`] keeps.
pub const TAIL: usize = 32;

/// One packet of a flow, stamped.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Stamped {
    /// CLOCK_REALTIME nanoseconds (the kernel's stamp).
    pub at_ns: u64,
    /// Client to server.
    pub up: bool,
    pub class: Class,
    /// QUIC ACK frames in it.
    pub ack_frames: u32,
}

/// A capture decoded: per direction, and per connection.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Anatomy {
    pub up: Side,
    pub down: Side,
    pub flows: Vec<Flow>,
    /// What could not be decoded, and why.
    pub notes: Vec<String>,
}

/// A frame's headers read: the layers below the payload, and its transport.
struct Headers<'a> {
    layers: Layers,
    /// (tcp, client port, payload), or `None` for frames that are not the cell's.
    flow: Option<(bool, u16, &'a [u8])>,
    /// TCP: (sequence number, SYN, FIN or RST).
    tcp: (u32, bool, bool),
}

/// Reads a frame's link, IP and transport headers (a frame lab cannot read is other).
fn headers<'a>(f: &Frame<'a>, port: u16) -> Headers<'a> {
    let mut h = Headers {
        layers: Layers::default(),
        flow: None,
        tcp: (0, false, false),
    };
    let other = |mut h: Headers<'a>| {
        h.layers = Layers::default();
        h.layers.add(Layer::Other, f.len as u64);
        h.flow = None;
        h
    };
    let Some(eth) = EthernetPacket::new(f.data) else {
        return other(h);
    };
    let l3 = &f.data[14..];
    let (ip_head, proto, ip_payload) = match eth.get_ethertype() {
        EtherTypes::Ipv4 => {
            let Some(ip) = Ipv4Packet::new(l3) else {
                return other(h);
            };
            let (hl, total) = (
                usize::from(ip.get_header_length()) * 4,
                usize::from(ip.get_total_length()),
            );
            if hl < 20 || total < hl || total > l3.len() {
                return other(h);
            }
            (hl, ip.get_next_level_protocol(), &l3[hl..total])
        }
        EtherTypes::Ipv6 => {
            let Some(ip) = Ipv6Packet::new(l3) else {
                return other(h);
            };
            let total = 40 + usize::from(ip.get_payload_length());
            if total > l3.len() {
                return other(h);
            }
            (40, ip.get_next_header(), &l3[40..total])
        }
        _ => return other(h),
    };
    let ip_total = ip_head + ip_payload.len();
    // The link header, and any padding after the IP packet.
    h.layers.add(Layer::Link, (f.len - ip_total) as u64);
    h.layers.add(Layer::Ip, ip_head as u64);
    let ports = |src: u16, dst: u16| {
        if dst == port {
            Some(src)
        } else if src == port {
            Some(dst)
        } else {
            None
        }
    };
    match proto {
        IpNextHeaderProtocols::Tcp => {
            let Some(t) = TcpPacket::new(ip_payload) else {
                return other(h);
            };
            let off = usize::from(t.get_data_offset()) * 4;
            let Some(client) = ports(t.get_source(), t.get_destination()) else {
                return other(h);
            };
            if off < 20 || off > ip_payload.len() {
                return other(h);
            }
            h.layers.add(Layer::Transport, off as u64);
            let flags = t.get_flags();
            h.tcp = (
                t.get_sequence(),
                flags & TcpFlags::SYN != 0,
                flags & (TcpFlags::FIN | TcpFlags::RST) != 0,
            );
            h.flow = Some((true, client, &ip_payload[off..]));
        }
        IpNextHeaderProtocols::Udp => {
            let Some(u) = UdpPacket::new(ip_payload) else {
                return other(h);
            };
            let Some(client) = ports(u.get_source(), u.get_destination()) else {
                return other(h);
            };
            let len = usize::from(u.get_length());
            if len < 8 || len > ip_payload.len() {
                return other(h);
            }
            h.layers.add(Layer::Transport, 8);
            // Bytes after the UDP length (there should be none) count with the payload.
            h.flow = Some((false, client, &ip_payload[8..]));
        }
        _ => return other(h),
    }
    h
}

/// Decodes the frames captured at one end of a cell's link. `at_client` says which end
/// (what it sent went up); `port` is the server's port; `wire` says what the approach
/// speaks; `keys` is the client's key log.
pub fn analyze(frames: &[Frame], at_client: bool, port: u16, wire: Wire, keys: &KeyLog) -> Anatomy {
    let heads: Vec<Headers> = frames.iter().map(|f| headers(f, port)).collect();
    // Frames by connection, in the order connections appear: TCP connections by the
    // client's port, QUIC connections by port and then by connection ID (one client
    // port may carry a connection after another).
    let up = |f: &Frame| f.tx == at_client;
    let mut by_port: Vec<((bool, u16), Vec<usize>)> = Vec::new();
    for (i, h) in heads.iter().enumerate() {
        if let Some((tcp, client, _)) = h.flow {
            match by_port.iter_mut().find(|(k, _)| *k == (tcp, client)) {
                Some((_, v)) => v.push(i),
                None => by_port.push(((tcp, client), vec![i])),
            }
        }
    }
    // Each connection decoded: its transport (TCP or not), client port, frames, what
    // each frame holds, and notes.
    type Decoded = (bool, u16, Vec<usize>, Vec<Out>, Vec<String>);
    let mut decoded: Vec<Decoded> = Vec::new();
    for ((tcp, client), idx) in by_port {
        if tcp {
            let segs: Vec<tcp::Segment> = idx
                .iter()
                .map(|&i| {
                    let h = &heads[i];
                    tcp::Segment {
                        up: up(&frames[i]),
                        seq: h.tcp.0,
                        syn: h.tcp.1,
                        fin_or_rst: h.tcp.2,
                        payload: h.flow.map_or(&[][..], |f| f.2),
                    }
                })
                .collect();
            let (res, notes) = tcp::flow(&segs, wire, keys);
            decoded.push((tcp, client, idx, res, notes));
            continue;
        }
        let dgrams: Vec<quic::Datagram> = idx
            .iter()
            .map(|&i| quic::Datagram {
                up: up(&frames[i]),
                payload: heads[i].flow.map_or(&[][..], |f| f.2),
            })
            .collect();
        for (part, res, notes) in quic::flows(&dgrams, wire, keys) {
            decoded.push((
                tcp,
                client,
                part.into_iter().map(|k| idx[k]).collect(),
                res,
                notes,
            ));
        }
    }
    let mut outs: Vec<Option<Out>> = vec![None; frames.len()];
    let mut a = Anatomy::default();
    for (tcp, client, idx, res, notes) in decoded {
        let (tcp, client, idx) = (&tcp, &client, &idx);
        let mut flow = Flow {
            transport: if *tcp { "tcp" } else { "udp" }.to_owned(),
            client_port: *client,
            up: FlowSide::default(),
            down: FlowSide::default(),
            tail: Vec::new(),
        };
        let first_kept = idx.len().saturating_sub(TAIL);
        for (k, (&i, o)) in idx.iter().zip(res).enumerate() {
            if k >= first_kept {
                flow.tail.push(Stamped {
                    at_ns: frames[i].at_ns,
                    up: up(&frames[i]),
                    class: o.class,
                    ack_frames: o.ack_frames,
                });
            }
            let s = if up(&frames[i]) {
                &mut flow.up
            } else {
                &mut flow.down
            };
            s.packets.add(o.class);
            s.payload_bytes += heads[i].flow.map_or(0, |f| f.2.len() as u64);
            s.ack_frames += u64::from(o.ack_frames);
            s.retransmitted_packets += u64::from(o.retransmitted);
            outs[i] = Some(o);
        }
        for n in notes {
            let n = format!("{} connection from port {client}: {n}", flow.transport);
            if !a.notes.contains(&n) {
                a.notes.push(n);
            }
        }
        a.flows.push(flow);
    }
    for (i, f) in frames.iter().enumerate() {
        let side = if up(f) { &mut a.up } else { &mut a.down };
        let out = outs[i].take().unwrap_or_default();
        side.add(f.len, heads[i].layers, &out);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_codec::rng::SplitMix64;

    /// An Ethernet + IPv4 frame of `proto` between the client's `port` and the server's
    /// 4433, with `payload`.
    fn frame(proto: u8, up: bool, port: u16, payload: &[u8]) -> Vec<u8> {
        let l4 = if proto == 6 { 20 } else { 8 };
        let total = 20 + l4 + payload.len();
        let mut f = vec![0u8; 14 + total];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        f[23] = proto;
        let (s, d) = if up { (port, 4433) } else { (4433, port) };
        f[34..36].copy_from_slice(&s.to_be_bytes());
        f[36..38].copy_from_slice(&d.to_be_bytes());
        if proto == 6 {
            f[46] = 5 << 4;
            f[47] = 0x10;
        } else {
            f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        f[14 + 20 + l4..].copy_from_slice(payload);
        f
    }

    /// Whatever the frames, every byte gets exactly one layer and every frame one class,
    /// and nothing panics: random payloads over well-formed headers, then every header
    /// byte mangled.
    #[test]
    fn any_frames_add_up_without_panicking() {
        let mut rng = SplitMix64::new(7);
        let wires = [
            Wire {
                app: App::Http1,
                body: Body::Sse,
            },
            Wire {
                app: App::Http2,
                body: Body::Sse,
            },
            Wire {
                app: App::WebSocket,
                body: Body::Text,
            },
            Wire {
                app: App::WebTransport,
                body: Body::LenPrefix,
            },
            Wire {
                app: App::Http1,
                body: Body::OpenAi,
            },
        ];
        for round in 0..400 {
            let n = 1 + rng.below(40);
            let mut frames: Vec<(bool, Vec<u8>)> = Vec::new();
            for _ in 0..n {
                let up = rng.chance(0.5);
                let proto = if rng.chance(0.5) { 6 } else { 17 };
                let mut payload = vec![0u8; rng.below(300)];
                for b in &mut payload {
                    *b = rng.next_u64() as u8;
                }
                // Some payloads look like the start of a TLS record or a QUIC packet.
                if !payload.is_empty() && rng.chance(0.3) {
                    payload[0] = [0x16, 0x17, 0xc0, 0x40][rng.below(4)];
                }
                let mut f = frame(proto, up, 40000 + rng.below(3) as u16, &payload);
                if round % 2 == 1 {
                    // Mangle a header byte, or cut the frame short.
                    if rng.chance(0.5) {
                        let i = rng.below(f.len().min(60));
                        f[i] = rng.next_u64() as u8;
                    } else {
                        f.truncate(rng.below(f.len() + 1));
                    }
                }
                frames.push((up, f));
            }
            let views: Vec<Frame> = frames
                .iter()
                .map(|(up, f)| Frame {
                    tx: *up,
                    len: f.len(),
                    data: f,
                    at_ns: 0,
                })
                .collect();
            let wire = wires[round % wires.len()];
            let a = analyze(&views, true, 4433, wire, &KeyLog::default());
            let total: usize = views.iter().map(|f| f.len).sum();
            assert_eq!((a.up.bytes + a.down.bytes) as usize, total);
            for s in [&a.up, &a.down] {
                assert_eq!(s.layers.total(), s.bytes, "round {round}");
                assert_eq!(s.packets.total(), s.frames, "round {round}");
            }
        }
    }

    #[test]
    fn a_tcp_connection_without_keys_is_headers_and_undecoded_bytes() {
        let f = frame(6, true, 40000, b"\x17\x03\x03\x00\x05hello");
        let ack = frame(6, false, 40000, b"");
        let views = [
            Frame {
                tx: true,
                len: f.len(),
                data: &f,
                at_ns: 0,
            },
            Frame {
                tx: false,
                len: ack.len(),
                data: &ack,
                at_ns: 0,
            },
        ];
        let w = Wire {
            app: App::Http1,
            body: Body::Sse,
        };
        let a = analyze(&views, true, 4433, w, &KeyLog::default());
        assert_eq!(a.up.layers.link, 14);
        assert_eq!(a.up.layers.ip, 20);
        assert_eq!(a.up.layers.transport, 20);
        assert_eq!(a.up.layers.undecoded, 10);
        assert_eq!(a.up.packets.data, 1);
        assert_eq!(a.down.packets.ack, 1);
        assert_eq!(a.flows.len(), 1);
        assert_eq!(a.flows[0].client_port, 40000);
        assert!(!a.notes.is_empty(), "it says why");
    }
}
