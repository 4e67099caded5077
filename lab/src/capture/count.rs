//! Counting captured frames: per direction, at L2 and L3, by transport and by the
//! server's port, with ARP and other non-IP frames apart; and the comparison with the
//! kernel's interface counters. Pure: it reads frame headers it is handed.

use serde::{Deserialize, Serialize};

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

/// One interface's capture: what left it (tx) and what arrived (rx).
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Counts {
    pub tx: Dir,
    pub rx: Dir,
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
}
