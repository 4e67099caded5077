//! The plan laid out for a shaping backend: the kernel layout bridges each wire
//! namespace's veths (the qdiscs go on the bridge ports); the userspace layout leaves
//! them apart and runs `lab wire` between them. Pure; which backend a lab gets is decided
//! by [`crate::netlab::qdisc::decide`] before it is built.

use super::{Plan, Process, Ready, run_dir};
use crate::shaping::params::Params;
use serde::{Deserialize, Serialize};

/// The shaping backend that builds the lab.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shaper {
    /// netem (and tbf) qdiscs on the wire namespace's bridge ports.
    Kernel,
    /// `lab wire`, the userspace link emulator, between the wire namespace's veths.
    Userspace,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapingChoice {
    pub backend: Shaper,
    /// Why this backend: asked for, or what the netem probe found.
    pub why: String,
}

/// The plan laid out for a backend. The kernel layout bridges each wire namespace's
/// veths (the qdiscs go on the bridge ports); the userspace layout leaves them apart and
/// runs `lab wire` between them.
pub fn with_backend(mut p: Plan, backend: Shaper, why: impl Into<String>) -> Plan {
    if backend == Shaper::Userspace {
        let wires: Vec<String> = p.cells.iter().map(|c| c.wire_ns.clone()).collect();
        p.interfaces
            .retain(|i| !(i.kind == "bridge" && wires.contains(&i.namespace)));
        for i in &mut p.interfaces {
            if wires.contains(&i.namespace) {
                i.master = None;
            }
        }
        for c in &p.cells {
            let json = |l: &Params| serde_json::to_string(l).unwrap_or_else(|_| "{}".into());
            let mut argv = vec![
                "lab".into(),
                "wire".into(),
                "--client-if".into(),
                "to-client".into(),
                "--server-if".into(),
                "to-server".into(),
                "--seed".into(),
                p.seed.to_string(),
                "--up".into(),
                json(&c.up),
                "--down".into(),
                json(&c.down),
                "--stats".into(),
                wire_stats_path(&p.name, &c.id).display().to_string(),
            ];
            if p.busy_poll {
                argv.push("--busy-poll".into());
            }
            if p.ring_frames != crate::topology::model::ring::DEFAULT_FRAMES {
                argv.push("--ring-frames".into());
                argv.push(p.ring_frames.to_string());
            }
            p.processes.push(Process {
                namespace: c.wire_ns.clone(),
                role: "wire".into(),
                argv,
                ready: Ready::Line,
                certs: None,
            });
        }
    }
    p.shaping = Some(ShapingChoice {
        backend,
        why: why.into(),
    });
    p
}

/// Where a cell's `lab wire` writes its counters (its control socket is next to it).
pub fn wire_stats_path(lab: &str, cell: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}/wire/{cell}.json", run_dir(lab)))
}
