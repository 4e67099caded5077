//! Launching a cell's workload: `lab client` started in the cell's client namespace with
//! its records read as they come ([`client`]), and one cell run end to end, warm-up,
//! quiet moments, capture of both ends and the workload ([`cell`]), and a cell's load
//! test ([`load`]).
//!
//! The servers and `lab wire` are started when the lab is built
//! ([`crate::netlab::lifecycle`]); this is what `lab run` adds on top.

pub mod cell;
pub mod client;
pub mod load;

/// What a cell's run tells `lab run` as it goes.
pub struct Progress<'a> {
    /// A prompt's line, as each completes.
    pub print: &'a (dyn Fn(&str) + Sync),
    /// A stage's line (warming up, a load level's phase, decoding the captures).
    pub stage: &'a (dyn Fn(&str) + Sync),
    /// Called as the measured workload starts, after the warm-up (the faults' clock).
    pub measuring: &'a (dyn Fn() + Sync),
}
