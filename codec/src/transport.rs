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
            .send_window(self.send_window);
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

    /// With ECN off, stops the socket reporting received ECN bits (after quinn turned
    /// the reports on when it took the socket).
    pub fn after_bind(&self, socket: &impl std::os::fd::AsRawFd) {
        if self.ecn {
            return;
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
            "CID {} B{}, ACK frequency {ack}{}, {}{}, ECN {}{}, initial RTT {} ms{}, windows: stream {} B, connection {}, send {} B{}{}",
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
            if self.priorities {
                ""
            } else {
                ", priorities off*"
            },
        )
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
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            congestion: None,
            nodelay: true,
            quickack: false,
            initcwnd: None,
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
        )
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
    fn out_of_range_windows_are_refused() {
        let q = Quic {
            receive_window: u64::MAX,
            ..Quic::default()
        };
        let e = q.transport_config().unwrap_err().to_string();
        assert!(e.contains("receive_window"), "{e}");
    }
}
