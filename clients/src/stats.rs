//! Transport statistics from the client's own end of each connection: `TCP_INFO` for
//! TCP, quinn's connection statistics for QUIC. A watch goes with every connection and
//! reads them once the connection has closed, so that they cover what a capture of the
//! same connection sees; the [`Tracker`] collects them for `lab client` to print.

use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One connection's statistics.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnStats {
    /// The connection's number in this client's records.
    pub conn: u32,
    /// The client's port: what names the connection in a capture.
    pub local_port: u16,
    /// When these counters were read (CLOCK_REALTIME, nanoseconds since the epoch, the
    /// capture's clock): packets stamped later are not in them. 0 when not known.
    #[serde(default)]
    pub read_at_unix_ns: u64,
    #[serde(flatten)]
    pub transport: TransportStats,
}

/// Now, as [`ConnStats::read_at_unix_ns`] gives it.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum TransportStats {
    Tcp(TcpStats),
    Quic(Box<QuicStats>),
}

/// What `TCP_INFO` says of a connection (Linux's counters since it opened).
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct TcpStats {
    /// Segments sent and received, all of them (SYN, pure ACKs, FIN, retransmissions).
    pub segs_out: u32,
    pub segs_in: u32,
    /// Of those, the ones that carried data.
    pub data_segs_out: u32,
    pub data_segs_in: u32,
    pub total_retrans: u32,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub bytes_received: u64,
    pub rtt_us: u32,
    pub rttvar_us: u32,
    pub min_rtt_us: u32,
    pub snd_cwnd: u32,
    /// Bytes per second, the kernel's most recent estimate.
    pub delivery_rate: u64,
    /// The kernel's TCP state when read (7 is closed).
    pub state: u8,
}

impl TcpStats {
    /// Segments sent without data: SYN, pure ACKs, FIN, RST.
    pub fn nodata_out(&self) -> u32 {
        self.segs_out.saturating_sub(self.data_segs_out)
    }

    /// Segments received without data.
    pub fn nodata_in(&self) -> u32 {
        self.segs_in.saturating_sub(self.data_segs_in)
    }
}

/// UDP datagrams and their payload bytes.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Udp {
    pub datagrams: u64,
    pub bytes: u64,
}

/// QUIC frames by type.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Frames {
    pub acks: u64,
    pub stream: u64,
    pub datagram: u64,
    pub crypto: u64,
    pub ping: u64,
    pub ack_frequency: u64,
    pub immediate_ack: u64,
    pub max_data: u64,
    pub max_stream_data: u64,
    pub max_streams: u64,
    pub new_connection_id: u64,
    pub connection_close: u64,
}

/// What quinn says of a connection.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicStats {
    pub udp_tx: Udp,
    pub udp_rx: Udp,
    pub frames_tx: Frames,
    pub frames_rx: Frames,
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_events: u64,
    pub rtt_us: u64,
    pub cwnd: u64,
    pub mtu: u16,
    pub mtu_probes: u64,
    /// The congestion controller the connection runs (newreno, cubic, bbr).
    #[serde(default)]
    pub congestion: String,
    /// `wt-dgram`: token datagrams that arrived after their answer had closed (one
    /// round trip after its stream ended), and their tokens' bytes. Their answers
    /// counted them lost; a capture at the client sees them.
    #[serde(default)]
    pub late_datagrams: u64,
    #[serde(default)]
    pub late_datagram_bytes: u64,
}

/// Token datagrams of a session that came after their answer had closed.
#[derive(Debug, Default)]
pub struct Late {
    datagrams: AtomicU64,
    bytes: AtomicU64,
}

impl Late {
    /// One more, with a token of `bytes` bytes.
    pub fn add(&self, bytes: u64) {
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The name of the congestion controller a QUIC connection runs.
pub fn controller(c: &wtransport::quinn::Connection) -> &'static str {
    use wtransport::quinn::congestion::{Bbr, Cubic, NewReno};
    let any = c.congestion_state().into_any();
    if any.is::<Cubic>() {
        "cubic"
    } else if any.is::<NewReno>() {
        "newreno"
    } else if any.is::<Bbr>() {
        "bbr"
    } else {
        "other"
    }
}

impl QuicStats {
    pub fn of(s: &wtransport::quinn::ConnectionStats) -> QuicStats {
        let udp = |u: &wtransport::quinn::UdpStats| Udp {
            datagrams: u.datagrams,
            bytes: u.bytes,
        };
        let frames = |f: &wtransport::quinn::FrameStats| Frames {
            acks: f.acks,
            stream: f.stream,
            datagram: f.datagram,
            crypto: f.crypto,
            ping: f.ping,
            ack_frequency: f.ack_frequency,
            immediate_ack: f.immediate_ack,
            max_data: f.max_data,
            max_stream_data: f.max_stream_data,
            max_streams: f.max_streams_bidi + f.max_streams_uni,
            new_connection_id: f.new_connection_id,
            connection_close: f.connection_close,
        };
        QuicStats {
            udp_tx: udp(&s.udp_tx),
            udp_rx: udp(&s.udp_rx),
            frames_tx: frames(&s.frame_tx),
            frames_rx: frames(&s.frame_rx),
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            lost_bytes: s.path.lost_bytes,
            congestion_events: s.path.congestion_events,
            rtt_us: s.path.rtt.as_micros() as u64,
            cwnd: s.path.cwnd,
            mtu: s.path.current_mtu,
            mtu_probes: s.path.sent_plpmtud_probes,
            congestion: String::new(),
            late_datagrams: 0,
            late_datagram_bytes: 0,
        }
    }
}

/// Collects the statistics of a client's connections as they close.
#[derive(Debug, Default)]
pub struct Tracker {
    done: Mutex<Vec<ConnStats>>,
    pending: AtomicUsize,
    changed: tokio::sync::Notify,
    /// Keep nothing (a load test's thousands of connections).
    discard: bool,
}

impl Tracker {
    /// A tracker that keeps no connection's statistics.
    pub fn discarding() -> Tracker {
        Tracker {
            discard: true,
            ..Tracker::default()
        }
    }

    fn begin(&self) {
        self.pending.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self, s: Option<ConnStats>) {
        if let (Some(s), false, Ok(mut d)) = (s, self.discard, self.done.lock()) {
            d.push(s);
        }
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits (at most `max`) for every watched connection to report, and returns what
    /// they reported, by connection number.
    pub async fn settle(&self, max: Duration) -> Vec<ConnStats> {
        let _ = tokio::time::timeout(max, async {
            loop {
                let notified = self.changed.notified();
                if self.pending.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        let mut v = self.done.lock().map(|d| d.clone()).unwrap_or_default();
        v.sort_by_key(|s| s.conn);
        v
    }
}

/// Reads `TCP_INFO` of a socket.
fn tcp_info(fd: &impl AsRawFd) -> Option<libc::tcp_info> {
    // SAFETY: a zeroed tcp_info for getsockopt to fill; its length is passed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on a socket we hold, into a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

fn tcp_stats(i: &libc::tcp_info) -> TcpStats {
    TcpStats {
        segs_out: i.tcpi_segs_out,
        segs_in: i.tcpi_segs_in,
        data_segs_out: i.tcpi_data_segs_out,
        data_segs_in: i.tcpi_data_segs_in,
        total_retrans: i.tcpi_total_retrans,
        bytes_sent: i.tcpi_bytes_sent,
        bytes_retrans: i.tcpi_bytes_retrans,
        bytes_received: i.tcpi_bytes_received,
        rtt_us: i.tcpi_rtt,
        rttvar_us: i.tcpi_rttvar,
        min_rtt_us: i.tcpi_min_rtt,
        snd_cwnd: i.tcpi_snd_cwnd,
        delivery_rate: i.tcpi_delivery_rate,
        state: i.tcpi_state,
    }
}

const TCP_CLOSE: u8 = 7;

/// A watch on a TCP connection: a duplicate of its socket, so that `TCP_INFO` can be
/// read after the connection has closed. When the last handle on it drops, it finishes
/// the connection (shutdown for writing, which sends the FIN if it has not gone yet),
/// waits for the close to complete, and reports.
#[derive(Debug)]
pub struct TcpWatch {
    fd: Option<OwnedFd>,
    conn: u32,
    local_port: u16,
    tracker: Arc<Tracker>,
}

impl TcpWatch {
    /// A watch on `tcp`, or none when `tracker` keeps nothing (a load test): the watch's
    /// duplicate descriptor would double the descriptors a connection takes, and halve
    /// the streams one process can hold under its open-file limit.
    pub fn new(tcp: &tokio::net::TcpStream, tracker: &Arc<Tracker>) -> Option<TcpWatch> {
        if tracker.discard {
            return None;
        }
        let fd = tcp.as_fd().try_clone_to_owned().ok()?;
        let local_port = tcp.local_addr().ok()?.port();
        tracker.begin();
        Some(TcpWatch {
            fd: Some(fd),
            conn: 0,
            local_port,
            tracker: tracker.clone(),
        })
    }

    /// Names the connection as the records do.
    pub fn set_conn(&mut self, n: u32) {
        self.conn = n;
    }
}

impl Drop for TcpWatch {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        let (conn, local_port, tracker) = (self.conn, self.local_port, self.tracker.clone());
        let finish = async move {
            // SAFETY: shutting down writing on a socket we hold a descriptor of.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
            let mut info = tcp_info(&fd);
            for _ in 0..300 {
                if info.is_none_or(|i| i.tcpi_state == TCP_CLOSE) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                info = tcp_info(&fd);
            }
            let read_at_unix_ns = unix_ns();
            tracker.end(info.map(|i| ConnStats {
                conn,
                local_port,
                read_at_unix_ns,
                transport: TransportStats::Tcp(tcp_stats(&i)),
            }));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(finish);
            }
            Err(_) => self.tracker.end(None),
        }
    }
}

/// A watch on a QUIC connection: when the last handle drops, it closes the connection,
/// lets the close go out, and reports quinn's statistics.
pub struct QuicWatch {
    conn: Option<wtransport::quinn::Connection>,
    id: u32,
    local_port: u16,
    tracker: Arc<Tracker>,
    late: Arc<Late>,
}

impl QuicWatch {
    /// Where the session's late datagrams are counted, for its statistics.
    pub fn late(&self) -> Arc<Late> {
        self.late.clone()
    }

    pub fn new(
        c: &wtransport::quinn::Connection,
        id: u32,
        local_port: u16,
        tracker: &Arc<Tracker>,
    ) -> QuicWatch {
        tracker.begin();
        QuicWatch {
            conn: Some(c.clone()),
            id,
            local_port,
            tracker: tracker.clone(),
            late: Arc::default(),
        }
    }
}

impl Drop for QuicWatch {
    fn drop(&mut self) {
        let Some(c) = self.conn.take() else { return };
        let (id, local_port, tracker) = (self.id, self.local_port, self.tracker.clone());
        let late = self.late.clone();
        let finish = async move {
            c.close(wtransport::quinn::VarInt::from_u32(0), b"done");
            // The close goes out at once; give it a round trip (bounded) to be counted.
            let rtt = c.rtt();
            tokio::time::sleep(rtt.clamp(Duration::from_millis(50), Duration::from_secs(1))).await;
            tracker.end(Some(ConnStats {
                conn: id,
                local_port,
                read_at_unix_ns: unix_ns(),
                transport: TransportStats::Quic(Box::new(QuicStats {
                    congestion: controller(&c).to_owned(),
                    late_datagrams: late.datagrams.load(Ordering::Relaxed),
                    late_datagram_bytes: late.bytes.load(Ordering::Relaxed),
                    ..QuicStats::of(&c.stats())
                })),
            }));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(finish);
            }
            Err(_) => self.tracker.end(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load test's tracker keeps nothing, so its connections get no watch and no
    /// second descriptor: one descriptor a connection.
    #[tokio::test]
    async fn a_discarding_tracker_takes_no_descriptor_of_its_own() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let discarding = Arc::new(Tracker::discarding());
        assert!(TcpWatch::new(&tcp, &discarding).is_none());
        assert_eq!(discarding.pending.load(Ordering::SeqCst), 0);
        // A keeping tracker's watch holds a second descriptor of the same socket.
        let keeping = Arc::new(Tracker::default());
        let w = TcpWatch::new(&tcp, &keeping).unwrap();
        let dup = w.fd.as_ref().unwrap().as_raw_fd();
        assert_ne!(dup, tcp.as_raw_fd());
        let ino = |fd: i32| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        assert_eq!(ino(dup), ino(tcp.as_raw_fd()));
        drop(w);
    }

    #[tokio::test]
    async fn a_closed_tcp_connection_reports_its_segments() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"hello").await.unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
        });
        let tracker = Arc::new(Tracker::default());
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut w = TcpWatch::new(&tcp, &tracker).unwrap();
        w.set_conn(3);
        let mut buf = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut buf)
            .await
            .unwrap();
        drop(tcp);
        drop(w);
        let got = tracker.settle(Duration::from_secs(5)).await;
        server.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].conn, 3);
        let TransportStats::Tcp(t) = got[0].transport else {
            panic!("not TCP")
        };
        assert_eq!(t.state, TCP_CLOSE);
        assert_eq!(t.data_segs_in, 1);
        // The kernel counts the FIN as one byte received.
        assert_eq!(t.bytes_received, 5 + 1);
        // SYN, the ACKs of the handshake and of the data, FIN, the ACK of the server's FIN.
        assert!(t.nodata_out() >= 3, "{t:?}");
    }
}
