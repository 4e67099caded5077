//! Transport settings that lab's servers and clients apply identically: QUIC's (through
//! quinn's transport and endpoint configuration) and TCP's socket options. Each value
//! defaults to the stack's own default, so the settings in force can always be printed.
//! What Linux sets per route (quick ACK, initial window, congestion control for TCP) lab
//! applies in the namespaces, not here; these types only carry it.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The names of the two sections of transport settings, in topology files and JSON.
pub const QUIC_SECTION: &str = "quic";
pub const TCP_SECTION: &str = "tcp";

/// A QUIC congestion controller quinn offers.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum QuicCongestion {
    NewReno,
    #[default]
    Cubic,
    Bbr,
}

impl QuicCongestion {
    pub fn name(self) -> &'static str {
        match self {
            QuicCongestion::NewReno => "newreno",
            QuicCongestion::Cubic => "cubic",
            QuicCongestion::Bbr => "bbr",
        }
    }
}

/// The ACK-frequency extension (draft-ietf-quic-ack-frequency), as quinn implements it:
/// what an endpoint asks of its peer.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AckFrequency {
    /// Ack-eliciting packets the peer may receive before it must acknowledge.
    pub threshold: u64,
    /// How long the peer may wait before acknowledging; `None` keeps the peer's own
    /// max_ack_delay. quinn requests at most the larger of the RTT and 25 ms.
    pub max_ack_delay_ms: Option<u64>,
    /// Out-of-order packets that make the peer acknowledge at once.
    pub reordering: u64,
}

impl Default for AckFrequency {
    /// quinn's defaults.
    fn default() -> Self {
        AckFrequency {
            threshold: 1,
            max_ack_delay_ms: None,
            reordering: 2,
        }
    }
}

/// QUIC settings, with quinn 0.11's defaults.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quic {
    /// The length of the connection IDs this endpoint issues (0 to 20): what the peer
    /// puts in every short header it sends here.
    pub cid_length: u8,
    /// The ACK-frequency extension, off by default.
    pub ack_frequency: Option<AckFrequency>,
    pub congestion: QuicCongestion,
    /// Whether ECN is used. Off, the endpoint does not read the ECN bits of what it
    /// receives, so it reports no ECN counts, and its peer's ECN validation fails and
    /// stops marking.
    pub ecn: bool,
    pub initial_rtt_ms: u64,
    /// Flow-control windows, bytes: per stream, per connection, and what may be in
    /// flight unacknowledged.
    pub stream_receive_window: u64,
    pub receive_window: u64,
    pub send_window: u64,
    /// Whether a client asks for its urgent prompts' answers first (the `\0urgent`
    /// message before the prompt; see `workload.urgent`). Off, urgent prompts are
    /// marked in the records only: the control of a priority experiment.
    pub priorities: bool,
    /// The UDP socket's receive and send buffers, bytes, as asked of the kernel
    /// (SO_RCVBUF and SO_SNDBUF, which the kernel doubles for its bookkeeping). lab
    /// sets them as root (SO_RCVBUFFORCE), so net.core.rmem_max does not cap them.
    /// A datagram that finds the receive buffer full is lost inside the host
    /// (`RcvbufErrors`), which the report shows. 0 leaves the kernel's default: what
    /// settings saved before lab set them (without the field) read as.
    #[serde(default)]
    pub socket_receive_buffer: u64,
    #[serde(default)]
    pub socket_send_buffer: u64,
    /// Bidirectional streams the peer may have open at once on a connection (quinn's
    /// default, 100). A client's prompt past it waits for a stream to end: a load test
    /// with `per_connection` over it has no more than this many streams open on a
    /// connection. Settings saved without the field read as 100.
    #[serde(default = "default_max_streams")]
    pub max_streams: u64,
}

fn default_max_streams() -> u64 {
    DEFAULT_MAX_STREAMS
}

/// quinn's default for [`Quic::max_streams`].
pub const DEFAULT_MAX_STREAMS: u64 = 100;

/// lab's UDP socket buffers (see [`Quic::socket_receive_buffer`]): 128 MiB each way,
/// where the kernel's default is 208 KiB (`net.core.rmem_default`), which a
/// 1,000-stream `wt` load level overflowed by 18,260 datagrams. A QUIC server takes
/// every connection's datagrams on one socket: at 10,000 sessions (topologies/load.yaml)
/// 4 MiB lost 49,468 of `wtq`'s and 32 MiB 79,138, 128 MiB none. It is a cap, not an
/// allocation: the kernel holds only what waits to be read.
pub const UDP_BUFFER: u64 = 128 << 20;

/// The most a socket buffer may be set to (the kernel's int, halved).
pub const SOCKET_BUFFER_MAX: u64 = (i32::MAX / 2) as u64;

/// Sets a socket's receive and send buffers (bytes; `None` leaves one as it is): with
/// SO_RCVBUFFORCE and SO_SNDBUFFORCE, which root may set past net.core.rmem_max and
/// wmem_max, else (without CAP_NET_ADMIN) with SO_RCVBUF and SO_SNDBUF, which those cap.
pub fn set_buffers(
    socket: &impl std::os::fd::AsRawFd,
    receive: Option<u64>,
    send: Option<u64>,
) -> anyhow::Result<()> {
    for (v, force, plain, what) in [
        (receive, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
        (send, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
    ] {
        let Some(v) = v else { continue };
        let v = libc::c_int::try_from(v.min(SOCKET_BUFFER_MAX)).unwrap_or(libc::c_int::MAX);
        let set = |opt: libc::c_int| {
            // SAFETY: setting an int socket option on a socket we hold.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 && set(plain) != 0 {
            anyhow::bail!(
                "cannot set the socket's {what} buffer to {v} bytes: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// A socket's receive and send buffers as the kernel holds them (SO_RCVBUF and
/// SO_SNDBUF: twice what was asked, for the kernel's bookkeeping).
pub fn buffers(socket: &impl std::os::fd::AsRawFd) -> (u64, u64) {
    let get = |opt: libc::c_int| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reading an int socket option into `v`, of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw mut v).cast(),
                &mut len,
            )
        };
        if r == 0 { v.max(0) as u64 } else { 0 }
    };
    (get(libc::SO_RCVBUF), get(libc::SO_SNDBUF))
}

/// The largest QUIC variable-length integer.
pub const VARINT_MAX: u64 = (1 << 62) - 1;

impl Default for Quic {
    fn default() -> Self {
        Quic {
            cid_length: 8,
            ack_frequency: None,
            congestion: QuicCongestion::Cubic,
            ecn: true,
            initial_rtt_ms: 333,
            stream_receive_window: 1_250_000,
            receive_window: VARINT_MAX,
            send_window: 10_000_000,
            priorities: true,
            socket_receive_buffer: UDP_BUFFER,
            socket_send_buffer: UDP_BUFFER,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

impl Quic {
    /// quinn's transport configuration for these settings, with lab's keep-alive and
    /// idle timeout.
    pub fn transport_config(&self) -> anyhow::Result<wtransport::config::QuicTransportConfig> {
        use wtransport::quinn::{AckFrequencyConfig, VarInt, congestion};
        let mut t = wtransport::config::QuicTransportConfig::default();
        let varint = |v: u64, what: &str| {
            VarInt::from_u64(v).map_err(|_| anyhow::anyhow!("{what} {v} is over 2^62-1"))
        };
        t.keep_alive_interval(Some(Duration::from_secs(3)))
            .max_idle_timeout(Some(
                Duration::from_secs(60)
                    .try_into()
                    .map_err(|e| anyhow::anyhow!("idle timeout: {e}"))?,
            ))
            .initial_rtt(Duration::from_millis(self.initial_rtt_ms))
            .stream_receive_window(varint(self.stream_receive_window, "stream_receive_window")?)
            .receive_window(varint(self.receive_window, "receive_window")?)
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(varint(self.max_streams, "max_streams")?);
        match self.congestion {
            QuicCongestion::NewReno => {
                t.congestion_controller_factory(Arc::new(congestion::NewRenoConfig::default()))
            }
            QuicCongestion::Cubic => {
                t.congestion_controller_factory(Arc::new(congestion::CubicConfig::default()))
            }
            QuicCongestion::Bbr => {
                t.congestion_controller_factory(Arc::new(congestion::BbrConfig::default()))
            }
        };
        if let Some(a) = self.ack_frequency {
            let mut c = AckFrequencyConfig::default();
            c.ack_eliciting_threshold(varint(a.threshold, "ack_frequency.threshold")?)
                .max_ack_delay(a.max_ack_delay_ms.map(Duration::from_millis))
                .reordering_threshold(varint(a.reordering, "ack_frequency.reordering")?);
            t.ack_frequency_config(Some(c));
        }
        Ok(t)
    }

    /// Sets the endpoint's connection-ID length.
    pub fn endpoint_config(&self, e: &mut wtransport::quinn::EndpointConfig) {
        let len = usize::from(self.cid_length);
        e.cid_generator(move || Box::new(quinn_proto::RandomConnectionIdGenerator::new(len)));
    }

    /// Sets the socket's buffers, and with ECN off, stops the socket reporting
    /// received ECN bits (after quinn turned the reports on when it took the socket).
    pub fn after_bind(&self, socket: &impl std::os::fd::AsRawFd) -> anyhow::Result<()> {
        let set = |v: u64| (v > 0).then_some(v);
        set_buffers(
            socket,
            set(self.socket_receive_buffer),
            set(self.socket_send_buffer),
        )?;
        if self.ecn {
            return Ok(());
        }
        let off: libc::c_int = 0;
        for (level, opt) in [
            (libc::IPPROTO_IP, libc::IP_RECVTOS),
            (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS),
        ] {
            // SAFETY: setting an int socket option on a socket we hold; a family the
            // socket is not fails harmlessly.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    level,
                    opt,
                    (&off as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        Ok(())
    }

    /// The settings in a line, e.g. for a run's header.
    pub fn describe(&self) -> String {
        let d = Quic::default();
        let ack = match self.ack_frequency {
            None => "off".to_owned(),
            Some(a) => format!(
                "threshold {}, max_ack_delay {}, reordering {}",
                a.threshold,
                a.max_ack_delay_ms
                    .map_or("the peer's".to_owned(), |m| format!("{m} ms")),
                a.reordering
            ),
        };
        let mark = |same: bool| if same { "" } else { "*" };
        format!(
            "CID {} B{}, ACK frequency {ack}{}, {}{}, ECN {}{}, initial RTT {} ms{}, windows: stream {} B, connection {}, send {} B{}, socket buffers: receive {}, send {}{}{}",
            self.cid_length,
            mark(self.cid_length == d.cid_length),
            mark(self.ack_frequency == d.ack_frequency),
            self.congestion.name(),
            mark(self.congestion == d.congestion),
            if self.ecn { "on" } else { "off" },
            mark(self.ecn == d.ecn),
            self.initial_rtt_ms,
            mark(self.initial_rtt_ms == d.initial_rtt_ms),
            self.stream_receive_window,
            if self.receive_window == VARINT_MAX {
                "unlimited".to_owned()
            } else {
                format!("{} B", self.receive_window)
            },
            self.send_window,
            mark(
                (
                    self.stream_receive_window,
                    self.receive_window,
                    self.send_window
                ) == (d.stream_receive_window, d.receive_window, d.send_window)
            ),
            buffer(self.socket_receive_buffer),
            buffer(self.socket_send_buffer),
            mark(
                (self.socket_receive_buffer, self.socket_send_buffer)
                    == (d.socket_receive_buffer, d.socket_send_buffer)
            ),
            if self.priorities {
                ""
            } else {
                ", priorities off*"
            },
        ) + &if self.max_streams == d.max_streams {
            String::new()
        } else {
            format!(", {} streams a connection*", self.max_streams)
        }
    }
}

/// A socket buffer setting in a line: bytes, or the kernel's default for 0.
fn buffer(v: u64) -> String {
    if v == 0 {
        "the kernel's".to_owned()
    } else {
        format!("{v} B")
    }
}

/// TCP settings. Linux sets quick ACK, the initial window and the congestion controller
/// per route, which lab does in each cell's namespaces; `nodelay` is a socket option of
/// lab's servers and clients.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tcp {
    /// The congestion controller by name (`cubic`, `reno`, `bbr`, ...); `None` keeps the
    /// kernel's default.
    pub congestion: Option<String>,
    /// TCP_NODELAY on lab's sockets (on by default: a token goes out when written).
    pub nodelay: bool,
    /// Acknowledge every segment at once rather than delaying ACKs.
    pub quickack: bool,
    /// The initial congestion window, segments; `None` keeps the kernel's (10).
    pub initcwnd: Option<u32>,
    /// Socket buffers, bytes (SO_RCVBUF and SO_SNDBUF, set as root past
    /// net.core.rmem_max); `None` keeps the kernel's autotuning (net.ipv4.tcp_rmem and
    /// tcp_wmem), which a fixed size turns off for that socket.
    pub socket_receive_buffer: Option<u64>,
    pub socket_send_buffer: Option<u64>,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            congestion: None,
            nodelay: true,
            quickack: false,
            initcwnd: None,
            socket_receive_buffer: None,
            socket_send_buffer: None,
        }
    }
}

impl Tcp {
    pub fn describe(&self) -> String {
        let d = Tcp::default();
        let mark = |same: bool| if same { "" } else { "*" };
        format!(
            "congestion {}{}, nodelay {}{}, quick ACK {}{}, initcwnd {}{}",
            self.congestion.as_deref().unwrap_or("the kernel's default"),
            mark(self.congestion == d.congestion),
            if self.nodelay { "on" } else { "off" },
            mark(self.nodelay == d.nodelay),
            if self.quickack { "on" } else { "off" },
            mark(self.quickack == d.quickack),
            self.initcwnd
                .map_or("the kernel's (10)".to_owned(), |n| n.to_string()),
            mark(self.initcwnd == d.initcwnd),
        ) + &match (self.socket_receive_buffer, self.socket_send_buffer) {
            (None, None) => String::new(),
            (r, w) => {
                let b = |v: Option<u64>| v.map_or("autotuned".to_owned(), |v| format!("{v} B"));
                format!(", socket buffers: receive {}, send {}*", b(r), b(w))
            }
        }
    }

    /// Sets a connected or listening TCP socket's options: TCP_NODELAY, and the buffers
    /// when they are set.
    pub fn apply(&self, socket: &impl std::os::fd::AsRawFd) -> anyhow::Result<()> {
        let v: libc::c_int = self.nodelay.into();
        // SAFETY: setting an int socket option on a socket we hold.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        set_buffers(socket, self.socket_receive_buffer, self.socket_send_buffer)
    }
}

/// Both transports' settings.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub quic: Quic,
    pub tcp: Tcp,
}

impl Settings {
    /// From the JSON form lab passes on command lines; a clear error otherwise.
    pub fn from_json(s: &str) -> anyhow::Result<Settings> {
        serde_json::from_str(s)
            .map_err(|e| anyhow::anyhow!("invalid transport settings {s:?}: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn is_default(&self) -> bool {
        *self == Settings::default()
    }

    /// What settings saved before they were recorded stood for: the defaults, with
    /// the socket buffers the kernel's (lab did not set them then).
    pub fn before_buffers() -> Settings {
        let mut s = Settings::default();
        s.quic.socket_receive_buffer = 0;
        s.quic.socket_send_buffer = 0;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_print_without_marks_and_changes_with_them() {
        let mut s = Settings::default();
        assert!(!s.quic.describe().contains('*'), "{}", s.quic.describe());
        assert!(!s.tcp.describe().contains('*'));
        s.quic.cid_length = 4;
        s.quic.ack_frequency = Some(AckFrequency {
            threshold: 10,
            max_ack_delay_ms: Some(200),
            reordering: 2,
        });
        s.tcp.quickack = true;
        let q = s.quic.describe();
        assert!(q.contains("CID 4 B*"), "{q}");
        assert!(q.contains("threshold 10, max_ack_delay 200 ms"), "{q}");
        assert!(s.tcp.describe().contains("quick ACK on*"));
        let back = Settings::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert!(s.quic.transport_config().is_ok());
        // Fields left out keep their defaults; unknown ones are refused.
        let partial = Settings::from_json("{\"quic\":{\"cid_length\":4}}").unwrap();
        assert_eq!(partial.quic.cid_length, 4);
        assert_eq!(partial.tcp, Tcp::default());
        let e = Settings::from_json("{\"quic\":{\"cid\":4}}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid transport settings") && e.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn socket_buffers_are_set_as_root_past_the_kernel_cap() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (r0, _) = buffers(&s);
        let q = Quic {
            socket_receive_buffer: 3 << 20,
            socket_send_buffer: 1 << 20,
            ..Quic::default()
        };
        q.after_bind(&s).unwrap();
        let (r, w) = buffers(&s);
        // The kernel keeps twice what was asked; as root, rmem_max does not cap it.
        assert_eq!((r, w), (6 << 20, 2 << 20), "before: {r0}");
        assert!(
            q.describe()
                .contains("socket buffers: receive 3145728 B, send 1048576 B*")
        );
        assert!(!Quic::default().describe().contains('*'));
        // Settings saved before lab set the buffers read as the kernel's defaults, and
        // leave the socket as it is.
        let old = Settings::from_json("{\"quic\":{\"cid_length\":8}}").unwrap();
        assert_eq!(old.quic.socket_receive_buffer, 0);
        assert!(
            old.quic
                .describe()
                .contains("socket buffers: receive the kernel's, send the kernel's*")
        );
        let s2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = buffers(&s2);
        old.quic.after_bind(&s2).unwrap();
        assert_eq!(buffers(&s2), before);
        // TCP keeps autotuning unless told.
        let t = Tcp::default();
        assert!(!t.describe().contains("socket buffers"));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = Tcp {
            socket_receive_buffer: Some(1 << 20),
            ..Tcp::default()
        };
        tcp.apply(&l).unwrap();
        assert_eq!(buffers(&l).0, 2 << 20);
        assert!(
            tcp.describe()
                .contains("receive 1048576 B, send autotuned*")
        );
    }

    #[test]
    fn out_of_range_windows_are_refused() {
        let q = Quic {
            receive_window: u64::MAX,
            ..Quic::default()
        };
        let e = q.transport_config().unwrap_err().to_string();
        assert!(e.contains("receive_window"), "{e}");
    }
}
