//! The resolved plan of a lab: cells, namespaces, interfaces, addresses, processes and
//! the link settings of each direction. Pure: computed from a parsed topology, with no
//! root and no system calls, so `lab plan` and snapshot tests show exactly what `lab up`
//! will build. [`layout`] lays it out for a shaping backend, [`render`](mod@render) prints it, and
//! [`node`] names its namespaces for `lab shell` and `lab exec`.
//!
//! Naming and addressing:
//! - namespaces `lab-<name>-llm` and, per cell `c<i>`, `lab-<name>-c<i>-client`,
//!   `-wire` and `-server` (visible in `ip netns list`);
//! - inside namespaces, fixed interface names: `to-wire` (client, server), `to-client`,
//!   `to-server` and `br0` (wire), `to-llm` (server), `br0` and `to-c<i>` (llm);
//! - the shaped segment of cell i is 198.18.i.0/24: client .1, server .2;
//! - the unshaped LLM network is 198.19.0.0/16: the LLM at 198.19.255.254, the server of
//!   cell i at 198.19.0.(i+1).

mod build;
pub mod layout;
pub mod node;
pub mod nodes;
pub mod render;

use crate::approach::{Approach, Model, Transport};
use crate::shaping::params::Params;
use crate::topology::model::*;
use crate::topology::units::{Dur, Percent};
pub use build::plan;
use lab_codec::transport::Settings;
pub use layout::{Shaper, ShapingChoice, wire_stats_path, with_backend};
pub use render::render;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

pub use crate::topology::model::MAX_CELLS;

impl Plan {
    /// Gives cells of a plan saved before cells had names their approach's name.
    pub fn fill_names(&mut self) {
        for c in &mut self.cells {
            if c.name.is_empty() {
                c.name = c.approach.name.to_owned();
            }
        }
    }
}

/// One part of a run split over machines: `index` of `count` (from 1), as `i/n`. Cell k
/// (from 0, plan order) belongs to shard `k % n + 1`: deterministic, and each shard
/// gets every n-th cell, so profiles and approaches spread evenly.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a shard: write i/n with 1 <= i <= n, e.g. 1/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether the cell at plan position `k` belongs to this shard.
    pub fn has(&self, k: usize) -> bool {
        k % self.count + 1 == self.index
    }
}

impl Plan {
    /// The part of the plan that `shard` runs: its cells, their namespaces, links and
    /// processes, and the LLM node (every shard has its own). Cells keep their ids and
    /// addresses, so the shards' results merge into the unsharded run's cells.
    pub fn shard(&self, shard: Shard) -> Result<Plan, String> {
        let cells: Vec<Cell> = self
            .cells
            .iter()
            .enumerate()
            .filter(|(k, _)| shard.has(*k))
            .map(|(_, c)| c.clone())
            .collect();
        if cells.is_empty() {
            return Err(format!(
                "shard {shard} has no cells: the topology has {} cells; use at most {} shards",
                self.cells.len(),
                self.cells.len()
            ));
        }
        let dropped: Vec<&str> = self
            .cells
            .iter()
            .filter(|c| !cells.iter().any(|k| k.id == c.id))
            .flat_map(|c| {
                [
                    c.client_ns.as_str(),
                    c.wire_ns.as_str(),
                    c.server_ns.as_str(),
                ]
            })
            .chain(
                self.nodes
                    .iter()
                    .filter(|n| {
                        n.cell
                            .as_ref()
                            .is_some_and(|id| !cells.iter().any(|k| &k.id == id))
                    })
                    .map(|n| n.namespace.as_str()),
            )
            .collect();
        let kept = |ns: &str| !dropped.contains(&ns);
        let mut p = self.clone();
        p.cells = cells;
        p.namespaces.retain(|n| kept(n));
        p.interfaces.retain(|i| {
            kept(&i.namespace)
                && i.peer
                    .as_deref()
                    .is_none_or(|peer| kept(peer.split('/').next().unwrap_or(peer)))
        });
        p.processes.retain(|pr| kept(&pr.namespace));
        p.nodes.retain(|n| kept(&n.namespace));
        Ok(p)
    }
}

/// Reads and checks a topology file and plans it.
pub fn load(path: &std::path::Path) -> Result<(Topology, Plan), crate::topology::LoadError> {
    let t = crate::topology::load(path, &|f| crate::shaping::trace::Trace::load(f).map(|_| ()))?;
    let p = plan(&t).map_err(crate::topology::LoadError::Plan)?;
    Ok((t, p))
}

pub const LLM_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);
pub const LLM_PORT: u16 = 11434;

/// Where a lab that is up keeps its state record, logs and certificates:
/// `/run/lab/<name>/`.
pub const RUN_ROOT: &str = "/run/lab";

/// The run directory of the lab `name`.
pub fn run_dir(name: &str) -> String {
    format!("{RUN_ROOT}/{name}")
}

/// `namespace` of a process that runs in the host's namespace (the relay).
pub const HOST: &str = "host";

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub prefix: String,
    /// The backend the topology asks for.
    pub backend: Backend,
    /// The backend in use, once decided (`lab up` probes for netem when asked for auto).
    #[serde(default)]
    pub shaping: Option<ShapingChoice>,
    pub seed: u64,
    /// `lab wire` polls all the time instead of sleeping when idle.
    #[serde(default)]
    pub busy_poll: bool,
    /// Slots in each of `lab wire`'s receive rings.
    #[serde(default = "default_ring_frames")]
    pub ring_frames: u32,
    pub ipv6: bool,
    pub llm: LlmNode,
    pub workload: Workload,
    pub cells: Vec<Cell>,
    pub namespaces: Vec<String>,
    pub interfaces: Vec<Iface>,
    pub processes: Vec<Process>,
    /// Kernel settings of lab's namespaces (a load test's backlogs and port range).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<Sysctl>,
    /// The user's nodes (`nodes:`), each in its own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<nodes::NodePlan>,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmNode {
    pub namespace: String,
    pub address: Ipv4Addr,
    pub port: u16,
    /// `mock` or `relay` (to a URL on the host).
    pub kind: String,
    pub model: String,
    /// What the mock runs with, or the relayed URL.
    pub detail: String,
    /// The mock's seed and answer cap, which fix every answer (absent for a relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock_max_tokens: Option<usize>,
    /// Tokens per chunk the mock streams (absent: 1, or a relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock_chunk_tokens: Option<u32>,
    /// A real upstream's sampling settings, which every request carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<lab_codec::openai::Sampling>,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub id: String,
    pub index: usize,
    /// The approach's name in the topology (lab's own approach's name, or the name of a
    /// server of the user's): what reports, expectations and node names say. (Absent
    /// in plans saved before it existed: [`Plan::fill_names`] fills it in.)
    #[serde(default)]
    pub name: String,
    /// The protocol its server speaks; lab's client for it measures the cell.
    pub approach: Approach,
    pub profile: String,
    pub client_ns: String,
    pub wire_ns: String,
    pub server_ns: String,
    pub client_addr: Ipv4Addr,
    pub server_addr: Ipv4Addr,
    pub server_llm_addr: Ipv4Addr,
    pub port: u16,
    pub url: String,
    /// Client to server, resolved.
    pub up: Params,
    /// Server to client, resolved.
    pub down: Params,
    /// QUIC and TCP settings, resolved (the stacks' defaults, the topology's, then the
    /// approach's own). Absent in plans saved before it existed: the defaults, with
    /// the kernel's socket buffers.
    #[serde(default = "Settings::before_buffers")]
    pub transport: Settings,
    /// The client's addresses a load test connects from, in turn (the first is
    /// `client_addr`); empty outside load tests with more streams than one address
    /// holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Ipv4Addr>,
    /// The approach entry's own connection mode, over `workload.connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    /// The client that measures the cell: lab's native one, or headless Chromium.
    #[serde(default, skip_serializing_if = "is_native")]
    pub client: ClientKind,
}

fn is_native(c: &ClientKind) -> bool {
    *c == ClientKind::Native
}

impl Cell {
    /// The cell's connection mode: its approach entry's own, or the workload's.
    pub fn connection(&self, w: &Workload) -> Connection {
        self.connection.unwrap_or(w.connection)
    }
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iface {
    pub namespace: String,
    pub name: String,
    /// `veth` (with its peer), or `bridge`.
    pub kind: String,
    pub peer: Option<String>,
    /// Address with prefix length, if any.
    pub address: Option<String>,
    /// More addresses (a load test's extra client addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_addresses: Vec<String>,
    /// The bridge it is a port of, if any.
    pub master: Option<String>,
}

/// A kernel setting of one lab namespace (`/proc/sys/<key>` inside it).
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sysctl {
    pub namespace: String,
    /// The path under /proc/sys, e.g. `net/core/somaxconn`.
    pub key: String,
    pub value: String,
    /// Why lab sets it.
    pub why: String,
}

/// How lab knows a process it started is ready.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ready {
    /// It prints a JSON ready line on stdout (every `lab` process).
    #[default]
    Line,
    /// It listens on this port (TCP) or has it bound (UDP): a server of the user's.
    Port { transport: Transport, port: u16 },
    /// It listens on (or has bound) each of these ports: a node. With none, it is ready
    /// once it has run for a moment without exiting.
    Ports {
        #[schemars(with = "Vec<String>")]
        ports: Vec<crate::topology::model::NodePort>,
    },
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub namespace: String,
    pub role: String,
    pub argv: Vec<String>,
    /// How lab knows it is ready.
    #[serde(default, skip_serializing_if = "is_line")]
    pub ready: Ready,
    /// A directory into which lab writes a fresh certificate and key (cert.pem,
    /// key.pem) for this address before starting it: for servers of the user's, which
    /// do not make their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs: Option<CertsFor>,
    /// Environment variables to add (a node's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Files lab writes before starting it (a node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<nodes::FilesFor>,
}

fn is_line(r: &Ready) -> bool {
    *r == Ready::Line
}

/// Where lab writes a server's certificate, and the address it is for.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertsFor {
    pub dir: String,
    pub san: String,
}

fn default_ring_frames() -> u32 {
    crate::topology::model::ring::DEFAULT_FRAMES
}

/// Slots in each of `lab wire`'s receive rings: what the topology says; else, for a
/// load test, room for four frames from every stream of its largest level at once (the
/// next power of two, 4096 to 65536); else 4096. At 10,000 streams on two cores a ring
/// of 16384 still overflowed while the emulator waited for a CPU; 65536 did not.
fn ring_frames(t: &Topology) -> u32 {
    use crate::topology::model::ring::DEFAULT_FRAMES;
    if let Some(n) = t.shaping.ring_frames {
        return n;
    }
    let most = t
        .workload
        .load
        .as_ref()
        .and_then(|l| l.levels.iter().max().copied())
        .unwrap_or(0);
    most.saturating_mul(4)
        .next_power_of_two()
        .clamp(DEFAULT_FRAMES, 65_536)
}
