//! Counting captured frames: per direction, at L2 and L3, by transport and by the
//! server's port, with ARP and other non-IP frames apart; and the comparison with the
//! kernel's interface counters. Pure: it reads frame headers it is handed.

use serde::{Deserialize, Serialize};

/// Frames within this much of either edge of the window are "edge frames": the kernel
/// stamps a sent frame a moment before it counts it, and counts a received one a
/// moment before it stamps it, so such a frame may sit on the other side of the
/// counters' reading from its stamp.
pub const EDGE_NS: u64 = 2_000_000;

/// Counts of one direction.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Dir {
    /// Every frame, and its bytes with the Ethernet header (what the kernel counts).
    pub frames: u64,
    pub l2_bytes: u64,
    /// IPv4/IPv6 packets and their bytes from the IP header on.
    pub ip_packets: u64,
    pub l3_bytes: u64,
    pub tcp_packets: u64,
    pub tcp_bytes: u64,
    pub udp_packets: u64,
    pub udp_bytes: u64,
    /// IP packets to or from the cell's server port (TCP or UDP), L3 bytes.
    pub port_packets: u64,
    pub port_bytes: u64,
    /// ARP and every other non-IP frame, L2 bytes.
    pub other_frames: u64,
    pub other_bytes: u64,
    /// CLOCK_MONOTONIC nanoseconds of the first and last frame (0 if none).
    #[serde(default)]
    pub first_ns: u64,
    #[serde(default)]
    pub last_ns: u64,
}

impl Dir {
    /// The average rate, in bits per second, from the first frame to the last.
    pub fn rate_bps(&self) -> Option<f64> {
        let span = self.last_ns.saturating_sub(self.first_ns);
        (self.frames > 1 && span > 0).then(|| self.l2_bytes as f64 * 8.0 / (span as f64 / 1e9))
    }
}

/// One interface's capture: what left it (tx) and what arrived (rx), inside the window
/// of the kernel counters' two readings.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub tx: Dir,
    pub rx: Dir,
    /// Frames captured outside the window (before the first reading, after the last):
    /// not counted above.
    #[serde(default)]
    pub outside: Outside,
    /// Frames stamped within a couple of milliseconds of either reading, inside the
    /// window or out: the ones a difference from the kernel's counters could come from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edge: Vec<EdgeFrame>,
    /// Frames the capture socket dropped (its buffer was full): a capture that missed
    /// frames.
    #[serde(default)]
    pub socket_drops: u64,
}

/// Frames captured outside the kernel counters' window.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Outside {
    pub before: u64,
    pub after: u64,
    /// Of them, ARP and other non-IP frames.
    pub non_ip: u64,
}

/// A frame stamped close to one of the kernel counters' readings.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct EdgeFrame {
    /// Sent by this end.
    pub tx: bool,
    /// Its length with the Ethernet header.
    pub len: u64,
    /// Counted (its stamp is inside the window).
    pub inside: bool,
    /// An IP packet (else ARP or another non-IP frame).
    pub ip: bool,
}

/// The kernel's counters of an interface (a difference between two readings).
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Kernel {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl Kernel {
    pub fn minus(self, before: Kernel) -> Kernel {
        Kernel {
            tx_packets: self.tx_packets - before.tx_packets,
            tx_bytes: self.tx_bytes - before.tx_bytes,
            rx_packets: self.rx_packets - before.rx_packets,
            rx_bytes: self.rx_bytes - before.rx_bytes,
        }
    }

    /// Differences between the capture and the kernel's counters, as text, and notes on
    /// what was set apart: a difference that edge frames account for exactly (frames
    /// stamped within a couple of milliseconds of a reading, which the kernel counted
    /// on the other side of it) is not a difference but a note naming them by kind;
    /// frames the capture socket dropped are named as the cause of a difference.
    pub fn compare(self, c: &Counts) -> (Vec<String>, Vec<String>) {
        let raw = self.differences(c);
        if raw.is_empty() {
            return (raw, Vec::new());
        }
        if let Some(flipped) = edge_account(self, c) {
            let what: Vec<String> = flipped
                .iter()
                .map(|f| {
                    format!(
                        "{} {} frame of {} bytes {} the window",
                        if f.tx { "a sent" } else { "a received" },
                        if f.ip { "IP" } else { "ARP/non-IP" },
                        f.len,
                        if f.inside {
                            "just inside"
                        } else {
                            "just outside"
                        }
                    )
                })
                .collect();
            return (
                Vec::new(),
                vec![format!(
                    "{} stamped within {} ms of a reading of the kernel's counters, which counted it on the other side of that reading; set apart, capture and counters agree",
                    what.join(", "),
                    EDGE_NS / 1_000_000
                )],
            );
        }
        let mut d = raw;
        if c.socket_drops > 0 {
            d.push(format!(
                "the capture socket dropped {} frames (its receive buffer was full)",
                c.socket_drops
            ));
        }
        (d, Vec::new())
    }

    /// Differences between the capture and the kernel's counters, as text; empty when
    /// they agree exactly.
    pub fn differences(self, c: &Counts) -> Vec<String> {
        let mut d = Vec::new();
        for (what, k, got) in [
            ("tx frames", self.tx_packets, c.tx.frames),
            ("tx bytes", self.tx_bytes, c.tx.l2_bytes),
            ("rx frames", self.rx_packets, c.rx.frames),
            ("rx bytes", self.rx_bytes, c.rx.l2_bytes),
        ] {
            if k != got {
                d.push(format!("{what}: captured {got}, kernel {k}"));
            }
        }
        d
    }
}

/// The smallest set of edge frames whose moving across the window's edge makes the
/// capture equal the kernel's counters (frames and bytes, both directions), if there
/// is one (at most 12 edge frames are tried: a quiet link has none or a few).
fn edge_account(k: Kernel, c: &Counts) -> Option<Vec<EdgeFrame>> {
    let e = &c.edge;
    if e.is_empty() || e.len() > 12 {
        return None;
    }
    let want = [
        k.tx_packets as i64 - c.tx.frames as i64,
        k.tx_bytes as i64 - c.tx.l2_bytes as i64,
        k.rx_packets as i64 - c.rx.frames as i64,
        k.rx_bytes as i64 - c.rx.l2_bytes as i64,
    ];
    let mut best: Option<u32> = None;
    for mask in 1u32..(1 << e.len()) {
        let mut got = [0i64; 4];
        for (i, f) in e.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            // Moving a counted frame out takes it away; an uncounted one in adds it.
            let s = if f.inside { -1 } else { 1 };
            let o = if f.tx { 0 } else { 2 };
            got[o] += s;
            got[o + 1] += s * f.len as i64;
        }
        if got == want && best.is_none_or(|b| mask.count_ones() < b.count_ones()) {
            best = Some(mask);
        }
    }
    best.map(|m| {
        e.iter()
            .enumerate()
            .filter(|(i, _)| m & (1 << i) != 0)
            .map(|(_, f)| *f)
            .collect()
    })
}

/// Adds one frame of true length `len` (of which `head` holds the start) to `d`.
pub fn count(d: &mut Dir, head: &[u8], len: usize, port: u16) {
    d.frames += 1;
    d.l2_bytes += len as u64;
    let ethertype = head.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (l3, proto, l4) = match ethertype {
        Some(0x0800) if head.len() >= 34 => {
            let ihl = usize::from(head[14] & 0x0f) * 4;
            (14, head[23], 14 + ihl)
        }
        Some(0x86dd) if head.len() >= 54 => (14, head[20], 54),
        _ => {
            d.other_frames += 1;
            d.other_bytes += len as u64;
            return;
        }
    };
    let l3_len = (len - l3) as u64;
    d.ip_packets += 1;
    d.l3_bytes += l3_len;
    match proto {
        6 => {
            d.tcp_packets += 1;
            d.tcp_bytes += l3_len;
        }
        17 => {
            d.udp_packets += 1;
            d.udp_bytes += l3_len;
        }
        _ => return,
    }
    if let Some(p) = head.get(l4..l4 + 4) {
        let (src, dst) = (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        );
        if src == port || dst == port {
            d.port_packets += 1;
            d.port_bytes += l3_len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(proto: u8, sport: u16, dport: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[23] = proto;
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn frames_are_counted_by_layer_transport_and_port() {
        let mut d = Dir::default();
        let tcp = ipv4(6, 40000, 8080, 100);
        count(&mut d, &tcp, 100, 8080);
        let udp = ipv4(17, 4433, 50000, 1514);
        count(&mut d, &udp[..256], 1514, 4433);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        count(&mut d, &arp, 42, 8080);
        count(&mut d, &tcp, 100, 9999);
        assert_eq!(d.frames, 4);
        assert_eq!(d.l2_bytes, 100 + 1514 + 42 + 100);
        assert_eq!((d.ip_packets, d.l3_bytes), (3, 86 + 1500 + 86));
        assert_eq!((d.tcp_packets, d.tcp_bytes), (2, 172));
        assert_eq!((d.udp_packets, d.udp_bytes), (1, 1500));
        assert_eq!((d.port_packets, d.port_bytes), (2, 86 + 1500));
        assert_eq!((d.other_frames, d.other_bytes), (1, 42));
    }

    #[test]
    fn kernel_differences_name_each_counter() {
        let k = Kernel {
            tx_packets: 2,
            tx_bytes: 200,
            rx_packets: 1,
            rx_bytes: 60,
        };
        let mut c = Counts::default();
        c.tx.frames = 2;
        c.tx.l2_bytes = 200;
        c.rx.frames = 1;
        c.rx.l2_bytes = 60;
        assert!(k.differences(&c).is_empty());
        c.rx.l2_bytes = 61;
        assert_eq!(k.differences(&c), ["rx bytes: captured 61, kernel 60"]);
    }

    fn agreeing() -> (Kernel, Counts) {
        let k = Kernel {
            tx_packets: 10,
            tx_bytes: 1000,
            rx_packets: 8,
            rx_bytes: 800,
        };
        let mut c = Counts::default();
        (c.tx.frames, c.tx.l2_bytes, c.rx.frames, c.rx.l2_bytes) = (10, 1000, 8, 800);
        (k, c)
    }

    #[test]
    fn an_arp_frame_the_kernel_counted_across_the_edge_is_a_note_not_a_difference() {
        let (k, mut c) = agreeing();
        // The capture counted one ARP reply more (42 bytes, received, stamped just
        // inside the window): the kernel had counted it before its reading.
        c.rx.frames += 1;
        c.rx.l2_bytes += 42;
        let arp = EdgeFrame {
            tx: false,
            len: 42,
            inside: true,
            ip: false,
        };
        let other = EdgeFrame {
            tx: true,
            len: 1514,
            inside: true,
            ip: true,
        };
        c.edge = vec![other, arp];
        let (d, notes) = k.compare(&c);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("a received ARP/non-IP frame of 42 bytes just inside the window"),
            "{notes:?}"
        );
        // The same difference with no edge frame to account for it stays one.
        c.edge.clear();
        let (d, notes) = k.compare(&c);
        assert_eq!(
            d,
            [
                "rx frames: captured 9, kernel 8",
                "rx bytes: captured 842, kernel 800"
            ]
        );
        assert!(notes.is_empty());
        // An edge frame of another size does not account for it either.
        c.edge = vec![EdgeFrame { len: 60, ..arp }];
        assert_eq!(k.compare(&c).0.len(), 2);
    }

    #[test]
    fn a_frame_just_outside_that_the_kernel_counted_inside_is_accounted_for() {
        let (mut k, c) = agreeing();
        k.tx_packets += 1;
        k.tx_bytes += 98;
        let mut c = c;
        c.edge = vec![EdgeFrame {
            tx: true,
            len: 98,
            inside: false,
            ip: true,
        }];
        let (d, notes) = k.compare(&c);
        assert!(d.is_empty(), "{d:?}");
        assert!(
            notes[0].contains("a sent IP frame of 98 bytes just outside"),
            "{notes:?}"
        );
    }

    #[test]
    fn frames_the_capture_socket_dropped_are_named_as_the_cause() {
        let (k, mut c) = agreeing();
        c.tx.frames -= 3;
        c.tx.l2_bytes -= 300;
        c.socket_drops = 3;
        let (d, _) = k.compare(&c);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[2].contains("the capture socket dropped 3 frames"));
    }
}
