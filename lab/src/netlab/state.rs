//! The state record of a lab: `/run/lab/<name>/state.json`.
//!
//! It is written before anything is created and rewritten (atomically) after every
//! object, so a lab killed at any point — even by SIGKILL — leaves a record that says
//! exactly what is lab's. `lab down`, `lab clean` and `lab status` read it; cleanup
//! never touches anything that is not in a record or marked as lab's.

use crate::plan::{Plan, RUN_ROOT, run_dir};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `lab up` is building it.
    Building,
    /// Built and serving; it stays until `lab down`.
    Up,
}

#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    pub role: String,
    /// The cell it belongs to, if any.
    pub cell: Option<String>,
    /// Its network namespace, or `host`.
    pub namespace: String,
    pub pid: u32,
    /// Start time in clock ticks since boot: with the pid, it names this process for good.
    pub start: u64,
    pub argv: Vec<String>,
    pub log: PathBuf,
    /// Where clients reach it, from its ready line.
    pub url: Option<String>,
    pub cert_sha256: Option<String>,
}

#[derive(schemars::JsonSchema, Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    pub topology: PathBuf,
    /// Seconds since the epoch when `lab up` started.
    pub created: u64,
    pub phase: Phase,
    /// The `lab` process that built it, with its start time.
    pub owner_pid: u32,
    pub owner_start: u64,
    /// `lab up` finished and handed the lab over: it stays up after its builder exits.
    /// Until then (and for the whole life of a `lab run`'s lab) the lab belongs to its
    /// builder, and is a leftover once that process is gone.
    #[serde(default)]
    pub handed_over: bool,
    /// Namespaces lab created or is about to create exclusively (create-new), in order.
    pub namespaces: Vec<String>,
    pub processes: Vec<ProcRecord>,
    pub plan: Plan,
}

impl State {
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(run_dir(&self.name))
    }

    pub fn path(name: &str) -> PathBuf {
        Path::new(&run_dir(name)).join("state.json")
    }

    /// Writes the record atomically (write a temporary file, then rename).
    pub fn save(&self) -> Result<()> {
        let path = State::path(&self.name);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(name: &str) -> Result<State> {
        let path = State::path(name);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut s: State = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not a state record this lab understands; remove the lab with `lab clean`",
                path.display()
            )
        })?;
        s.plan.fill_names();
        Ok(s)
    }

    /// Is the `lab` process that built this lab still running?
    pub fn owner_alive(&self) -> bool {
        crate::netlab::sys::start_time(self.owner_pid) == Some(self.owner_start)
    }

    /// Was this lab left behind: not handed over, and its builder is gone?
    pub fn orphaned(&self) -> bool {
        !self.handed_over && !self.owner_alive()
    }
}

/// Names of the labs with a run directory under /run/lab, sorted.
pub fn lab_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(RUN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Picks the lab a command is about: the one named, or the only one up.
pub fn pick(name: Option<&str>) -> Result<String> {
    let names = lab_names();
    match name {
        Some(n) if names.iter().any(|x| x == n) => Ok(n.to_owned()),
        Some(n) if names.is_empty() => bail!("no lab named {n} is up: no lab is up at all"),
        Some(n) => bail!("no lab named {n} is up; labs up: {}", names.join(", ")),
        None => match names.as_slice() {
            [] => bail!("no lab is up; start one with `lab up topologies/<file>.yaml`"),
            [one] => Ok(one.clone()),
            many => bail!(
                "{} labs are up ({}); say which with --lab NAME",
                many.len(),
                many.join(", ")
            ),
        },
    }
}
