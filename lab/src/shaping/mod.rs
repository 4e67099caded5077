//! Link shaping, the pure part: a direction's settings resolved into numbers
//! ([`params`]), the link model that decides each packet's fate ([`engine`]), the
//! emulator's counters as it reports them ([`stats`]), trace-driven links ([`trace`]),
//! and the kernel backend's netem and tbf encoders ([`netem`]).
//!
//! Nothing here touches the system: `lab wire` ([`crate::wire`]) drives the engine with
//! real frames, and [`crate::netlab::qdisc`] sends the encoders' bytes to the kernel.

pub mod engine;
pub mod netem;
pub mod params;
pub mod stats;
pub mod trace;
