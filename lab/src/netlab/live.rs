//! Live facts about a lab that is up, read from the system: whether its builder and
//! processes are alive (and their state and RSS, from /proc), which of its namespaces
//! exist, and each emulator's latest counters. [`crate::report::status`] renders them.

use super::state::State;
use super::sys;
use crate::plan::run_dir;
use crate::shaping::stats::WireStats;

/// What is alive in a lab now.
#[derive(Debug, Clone)]
pub struct Live {
    /// Is the `lab` process that built it still running?
    pub owner_alive: bool,
    /// Per recorded process, in record order: its state letter and RSS, if it runs.
    pub processes: Vec<Option<(char, u64)>>,
    /// Per recorded namespace, in record order: does it exist?
    pub namespaces: Vec<bool>,
    /// Each cell's emulator counters, from its stats file (userspace backend).
    pub wire: Vec<(String, WireStats)>,
}

/// Reads the live facts of `s`.
pub fn gather(s: &State) -> Live {
    Live {
        owner_alive: s.owner_alive(),
        processes: s
            .processes
            .iter()
            .map(|p| process_live(p.pid, p.start))
            .collect(),
        namespaces: s.namespaces.iter().map(|n| sys::netns_exists(n)).collect(),
        wire: wire_rows(s),
    }
}

/// Live facts about a recorded process.
pub fn process_live(pid: u32, start: u64) -> Option<(char, u64)> {
    (sys::start_time(pid) == Some(start))
        .then(|| sys::proc_state_rss(pid))
        .flatten()
}

/// Per-direction counters of each cell's `lab wire`, from its stats file.
pub fn wire_rows(s: &State) -> Vec<(String, WireStats)> {
    s.plan
        .cells
        .iter()
        .filter_map(|c| {
            let path = format!("{}/wire/{}.json", run_dir(&s.name), c.id);
            let bytes = std::fs::read(path).ok()?;
            Some((c.id.clone(), serde_json::from_slice(&bytes).ok()?))
        })
        .collect()
}
