//! What the userspace link emulator reports about each direction: counters, how late
//! held packets left, and the settings it ran with. `lab wire` writes these as JSON;
//! `lab status` and `lab run` read them. Pure data.

use super::params::Params;
use serde::{Deserialize, Serialize};

/// Counters of one direction at one moment.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq,
)]
pub struct CounterSnapshot {
    pub in_frames: u64,
    pub in_bytes: u64,
    pub out_frames: u64,
    pub out_bytes: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub dropped_send: u64,
    /// Frames that found the emulator's receive ring full (it fell behind).
    #[serde(default)]
    pub dropped_input: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    pub non_ip: u64,
    /// How late held packets left: p50, p99 and max, in microseconds (p50 and p99 to
    /// the microsecond above; 2001 means 2 ms or more, the max is exact).
    #[serde(default)]
    pub late_us: Option<(u64, u64, u64)>,
    /// How long frames waited in the receive ring before the emulator got to them (how
    /// late it woke): p50, p99 and max, in microseconds, read as `late_us`. The link
    /// model times each frame from its kernel arrival stamp, so a wait delays nothing
    /// it decides.
    #[serde(default)]
    pub waited_us: Option<(u64, u64, u64)>,
    /// Frames the kernel gave no usable arrival stamp: the link model timed them by
    /// when the emulator got to them, so a late wake-up may have delayed them.
    #[serde(default)]
    pub unstamped: u64,
    /// Bytes of a trace's delivery chances that passed with nothing waiting for the
    /// link: trace capacity the sender left unused (counted up to the last frame).
    #[serde(default)]
    pub trace_unused_bytes: u64,
}

/// Everything `lab wire` reports, written to its stats file.
#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireStats {
    /// CLOCK_MONOTONIC, in nanoseconds, when these counters were read.
    pub at_ns: u64,
    pub seed: u64,
    /// Client to server.
    pub up: CounterSnapshot,
    /// Server to client.
    pub down: CounterSnapshot,
    pub up_params: Params,
    pub down_params: Params,
}

/// Seed of a direction: the two directions draw from different streams.
pub fn direction_seed(seed: u64, up: bool) -> u64 {
    if up {
        seed
    } else {
        seed ^ 0x9E37_79B9_7F4A_7C15
    }
}
