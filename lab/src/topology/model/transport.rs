//! `transport:` as written: QUIC and TCP settings, every field optional, and how they
//! lay over lab's defaults.

use super::*;

/// QUIC and TCP settings as written: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransportSpec {
    /// QUIC, as quinn offers it (lab's WebTransport server and client).
    #[serde(default)]
    pub quic: Option<QuicSpec>,
    /// TCP: congestion control, quick ACK and the initial window on each cell's routes
    /// (both ends, any server); TCP_NODELAY on lab's own sockets.
    #[serde(default)]
    pub tcp: Option<TcpSpec>,
}

/// QUIC settings; each defaults to quinn 0.11's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuicSpec {
    /// Length of the connection IDs each endpoint issues, 0 to 20 bytes (default 8):
    /// every short-header packet carries one.
    #[serde(default)]
    pub cid_length: Option<u8>,
    /// The ACK-frequency extension: `true` for quinn's defaults, or its fields
    /// (default: off).
    #[serde(default)]
    pub ack_frequency: Option<AckFrequencySpec>,
    /// How long each endpoint asks its peer to hold an ACK (through the ACK-frequency
    /// extension, which this turns on: quinn's own max_ack_delay is fixed at 25 ms).
    /// quinn asks for at most the larger of the RTT and 25 ms.
    #[serde(default)]
    pub max_ack_delay: Option<Dur>,
    /// Congestion controller (default cubic).
    #[serde(default)]
    pub congestion: Option<QuicCongestionSpec>,
    /// ECN (default on).
    #[serde(default)]
    pub ecn: Option<bool>,
    /// The RTT assumed before the first sample (default 333ms).
    #[serde(default)]
    pub initial_rtt: Option<Dur>,
    /// Per-stream receive window, bytes (default 1250000).
    #[serde(default)]
    pub stream_receive_window: Option<u64>,
    /// Connection receive window, bytes (default unlimited, 2^62-1).
    #[serde(default)]
    pub receive_window: Option<u64>,
    /// Bytes that may be in flight unacknowledged (default 10000000).
    #[serde(default)]
    pub send_window: Option<u64>,
    /// Whether the client asks for urgent prompts' answers first (default true);
    /// `false` marks them in the records only, as the control of a priority experiment.
    #[serde(default)]
    pub priorities: Option<bool>,
    /// The UDP socket's receive buffer, bytes, on lab's servers and clients alike
    /// (default 4194304: see the README's "Host-stack drops"). Set as root, past
    /// net.core.rmem_max.
    #[serde(default)]
    pub socket_receive_buffer: Option<u64>,
    /// The UDP socket's send buffer, bytes (default 4194304).
    #[serde(default)]
    pub socket_send_buffer: Option<u64>,
    /// Bidirectional streams a peer may have open at once on one connection (default
    /// 100, quinn's). Past it a prompt waits for a stream: raise it with
    /// `workload.load.per_connection` over 100, as QUIC's plans of 1,000+ streams a
    /// connection need.
    #[serde(default)]
    pub max_streams: Option<u64>,
}

/// The ACK-frequency extension: on with quinn's defaults, or with some fields set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AckFrequencySpec {
    On(bool),
    Set(AckFrequencyFields),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AckFrequencyFields {
    /// Ack-eliciting packets the peer may take in before it must acknowledge (default 1).
    #[serde(default)]
    pub threshold: Option<u64>,
    /// How long the peer may hold an ACK (default: the peer's own max_ack_delay).
    #[serde(default)]
    pub max_ack_delay: Option<Dur>,
    /// Out-of-order packets that make the peer acknowledge at once (default 2).
    #[serde(default)]
    pub reordering: Option<u64>,
}

/// A QUIC congestion controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuicCongestionSpec {
    Newreno,
    Cubic,
    Bbr,
}

/// TCP settings; each defaults to the kernel's, and nodelay to lab's (on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpSpec {
    /// Congestion controller by name, one the kernel has (see
    /// /proc/sys/net/ipv4/tcp_available_congestion_control); default: the kernel's.
    #[serde(default)]
    pub congestion: Option<String>,
    /// TCP_NODELAY on lab's servers and clients (default on).
    #[serde(default)]
    pub nodelay: Option<bool>,
    /// Acknowledge every segment at once instead of delaying ACKs (the route's quickack;
    /// default off).
    #[serde(default)]
    pub quickack: Option<bool>,
    /// Initial congestion window in segments (the route's initcwnd; default the kernel's, 10).
    #[serde(default)]
    pub initcwnd: Option<u32>,
    /// The socket's receive buffer, bytes, on lab's servers (their listeners) and
    /// clients; default the kernel's autotuning (net.ipv4.tcp_rmem), which a size
    /// turns off.
    #[serde(default)]
    pub socket_receive_buffer: Option<u64>,
    /// The socket's send buffer, bytes; default the kernel's autotuning.
    #[serde(default)]
    pub socket_send_buffer: Option<u64>,
}

impl TransportSpec {
    /// `base` with this spec's fields in place of its own.
    pub fn over(&self, base: &Settings) -> Settings {
        let mut s = base.clone();
        if let Some(q) = &self.quic {
            let t = &mut s.quic;
            if let Some(v) = q.cid_length {
                t.cid_length = v;
            }
            match &q.ack_frequency {
                Some(AckFrequencySpec::On(false)) => t.ack_frequency = None,
                Some(AckFrequencySpec::On(true)) => {
                    t.ack_frequency.get_or_insert_with(Default::default);
                }
                Some(AckFrequencySpec::Set(f)) => {
                    let a = t.ack_frequency.get_or_insert_with(Default::default);
                    if let Some(v) = f.threshold {
                        a.threshold = v;
                    }
                    if let Some(v) = f.max_ack_delay {
                        a.max_ack_delay_ms = Some(v.0.as_millis() as u64);
                    }
                    if let Some(v) = f.reordering {
                        a.reordering = v;
                    }
                }
                None => {}
            }
            if let Some(d) = q.max_ack_delay {
                t.ack_frequency
                    .get_or_insert_with(Default::default)
                    .max_ack_delay_ms = Some(d.0.as_millis() as u64);
            }
            if let Some(c) = q.congestion {
                t.congestion = match c {
                    QuicCongestionSpec::Newreno => QuicCongestion::NewReno,
                    QuicCongestionSpec::Cubic => QuicCongestion::Cubic,
                    QuicCongestionSpec::Bbr => QuicCongestion::Bbr,
                };
            }
            if let Some(v) = q.ecn {
                t.ecn = v;
            }
            if let Some(v) = q.initial_rtt {
                t.initial_rtt_ms = v.0.as_millis() as u64;
            }
            if let Some(v) = q.stream_receive_window {
                t.stream_receive_window = v;
            }
            if let Some(v) = q.receive_window {
                t.receive_window = v;
            }
            if let Some(v) = q.send_window {
                t.send_window = v;
            }
            if let Some(v) = q.priorities {
                t.priorities = v;
            }
            if let Some(v) = q.socket_receive_buffer {
                t.socket_receive_buffer = v;
            }
            if let Some(v) = q.socket_send_buffer {
                t.socket_send_buffer = v;
            }
            if let Some(v) = q.max_streams {
                t.max_streams = v;
            }
        }
        if let Some(tcp) = &self.tcp {
            let t = &mut s.tcp;
            if let Some(v) = &tcp.congestion {
                t.congestion = Some(v.clone());
            }
            if let Some(v) = tcp.nodelay {
                t.nodelay = v;
            }
            if let Some(v) = tcp.quickack {
                t.quickack = v;
            }
            if let Some(v) = tcp.initcwnd {
                t.initcwnd = Some(v);
            }
            if let Some(v) = tcp.socket_receive_buffer {
                t.socket_receive_buffer = Some(v);
            }
            if let Some(v) = tcp.socket_send_buffer {
                t.socket_send_buffer = Some(v);
            }
        }
        s
    }
}
